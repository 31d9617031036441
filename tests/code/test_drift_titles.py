"""An Evidently report opened on its own says what it is about: date, model version, reference span."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hfcast.monitoring.decision import MonitorConfig
from hfcast.monitoring.drift import evidently_drift, report_title


def test_drift_report_carries_date_version_and_reference_span(tmp_path):
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    cur = pd.DataFrame({"a": rng.normal(2, 1, 300), "b": rng.normal(size=300)})
    about = {"date": "2024-02-05", "model": "hfcast", "model_version": "3",
             "reference_span": "2024-01-02..2024-01-19", "kind": "feature drift"}
    html_url, json_url = (tmp_path / "d.html").as_uri(), (tmp_path / "d.json").as_uri()
    out = evidently_drift(cur, ref, ["a", "b"], MonitorConfig(), html_url, json_url, about=about)
    title = report_title(about)
    assert title == "feature drift 2024-02-05, hfcast v3 vs reference 2024-01-02..2024-01-19"
    text = (tmp_path / "d.html").read_text()
    assert f"<title>{title}</title>" in text and "reference_span: 2024-01-02..2024-01-19" in text
    doc = json.loads((tmp_path / "d.json").read_text())
    assert "2024-02-05" in json.dumps(doc) and "a" in out["drifted"]

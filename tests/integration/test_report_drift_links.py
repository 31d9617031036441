"""The report's links to Evidently's drift pages: linked where they lie in a local lake (nothing
copied), copied from an S3 lake (a real SeaweedFS server) for the latest date only, with one shared
copy of Evidently's scripts."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from hfcast.config import get_settings
from hfcast.monitoring.decision import MonitorConfig
from hfcast.monitoring.drift import evidently_drift
from hfcast.report import evidently_links
from hfcast.storage import Lake, join

pytestmark = pytest.mark.integration

DATES = ("2024-02-05", "2024-02-06")
HISTORY = [{"date": d, "version": "1"} for d in DATES]


def _pages(settings) -> None:
    """Both dates' feature drift pages where the monitor writes them (Lake.monitoring)."""
    lake = Lake.from_settings(settings)
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    for i, d in enumerate(DATES):
        cur = pd.DataFrame({"a": rng.normal(i, 1, 200), "b": rng.normal(size=200)})
        folder = lake.monitoring(settings.model_name, "1", d)
        evidently_drift(cur, ref, ["a", "b"], MonitorConfig(), join(folder, "features_drift.html"),
                        join(folder, "features_drift.json"), lake.storage_options,
                        about={"date": d, "model": "hfcast", "model_version": "1", "kind": "feature drift"})


def test_local_lake_pages_are_linked_not_copied(tmp_path):
    settings = get_settings(env={"HFCAST_HOME": str(tmp_path / "home"), "HFCAST_LAKE": (tmp_path / "lake").as_uri()},
                            cwd=tmp_path)
    _pages(settings)
    out = tmp_path / "home" / "report"
    out.mkdir(parents=True)
    links = evidently_links(settings, HISTORY, out)
    assert set(links) == set(DATES)
    for d, (version, kinds) in links.items():
        href = kinds["features"]
        assert not os.path.isabs(href) and href.startswith("../")  # relative: the folder and the lake move together
        assert (out / href).resolve() == (tmp_path / "lake" / "monitoring" / "hfcast" / "1" / f"date={d}"
                                          / "features_drift.html")
    assert not (out / "drift").exists()


def test_s3_lake_latest_date_copied_with_shared_scripts(tmp_path, s3, s3_bucket, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    settings = get_settings(env={**s3.env(), "HFCAST_HOME": str(tmp_path / "home"), "HFCAST_LAKE": f"{s3_bucket}/lake"},
                            cwd=tmp_path)
    _pages(settings)
    out = tmp_path / "report"
    out.mkdir()
    links = evidently_links(settings, HISTORY, out)
    assert list(links) == [DATES[-1]] and links[DATES[-1]][1]["features"] == f"drift/{DATES[-1]}-features.html"
    copied = out / "drift" / f"{DATES[-1]}-features.html"
    shared = sorted(p.name for p in (out / "drift").glob("evidently-*"))
    assert len(shared) == 2 and all(f"'{name}'" in copied.read_text() for name in shared)
    size = sum(p.stat().st_size for p in (out / "drift").iterdir())
    assert copied.stat().st_size < 0.2 * size  # the page itself is small; the library is stored once

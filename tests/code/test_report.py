"""The quant's report: relative links to files inside the folder, valid PNGs, the numbers that the
comparison computed, plain sentences for confidences that carry no information; rendered in
headless Chromium (slow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcast.contracts import PRED_COLUMNS
from hfcast.evaluate import score_folds, write_comparison
from hfcast.report import COLUMNS, ReportInputs, confidence_notes, fmt, load_comparison, render

PNG = b"\x89PNG\r\n\x1a\n"


def predictions(model: str, seed: int, constant_conf: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 2000
    ret = rng.normal(0, 0.01, n)
    rv = np.exp(rng.normal(-6, 0.4, n))
    df = pd.DataFrame({"symbol": "S", "ts": pd.date_range("2024-01-02 15:00", periods=n, freq="min", tz="UTC"),
                       "fold": np.repeat([0, 1], n // 2), "model": model, "ret_60m": ret, "rv_10m": rv})
    df["ret_60m_pred"] = 0.3 * ret + rng.normal(0, 0.01, n)
    df["ret_60m_conf"] = 0.5 if constant_conf else rng.uniform(0.5, 0.7, n)
    df["ret_60m_lo"], df["ret_60m_hi"] = df["ret_60m_pred"] - 0.013, df["ret_60m_pred"] + 0.013
    df["rv_10m_pred"] = rv * np.exp(rng.normal(0, 0.3, n))
    df["rv_10m_conf"] = rng.uniform(0.3, 0.9, n)
    df["rv_10m_lo"], df["rv_10m_hi"] = df["rv_10m_pred"] * 0.6, df["rv_10m_pred"] * 1.5
    assert set(PRED_COLUMNS) <= set(df)
    return df


@pytest.fixture
def comparison(tmp_path) -> Path:
    """A comparison folder exactly as ``hfcast compare`` writes it (write_comparison)."""
    preds = pd.concat([predictions("lstm", 1, True), predictions("har_rv", 2, False)], ignore_index=True)
    per, agg = [], {}
    for m, g in preds.groupby("model", sort=False):
        pf, a = score_folds(g)
        per.append(pf.assign(model=m))
        agg[m] = a
    write_comparison(pd.DataFrame(agg).T, pd.concat(per), preds, tmp_path / "compare")
    return tmp_path / "compare"


HISTORY = [{"date": f"2024-01-{d:02d}", "version": "1" if d < 25 else "2",
            "action": "retrain" if d == 23 else "none", "checks": {"drift_share": 0.05 * (d - 15)},
            "reasons": ["drift 2 dates"] if d == 23 else []} for d in range(16, 30)]
VERSIONS = [{"version": 1, "arch": "lstm", "aliases": ["previous-champion"], "train_first": "2024-01-02",
             "train_last": "2024-01-12", "metrics": {"vol_qlike": 0.31234567}, "gate": "forced"},
            {"version": 2, "arch": "tcn", "aliases": ["champion"], "train_first": "2024-01-02",
             "train_last": "2024-01-22", "metrics": {"vol_qlike": 0.2987654}, "gate": "promote"}]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.cells = [], []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("a", "img") and (a.get("href") or a.get("src")):
            self.refs.append(a.get("href") or a.get("src"))
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data.strip())
            self._in_td = False


@pytest.fixture
def report(comparison, tmp_path) -> Path:
    agg, preds = load_comparison(comparison)
    out = tmp_path / "report"
    out.mkdir()
    shutil.copy(comparison / "aggregate.csv", out / "aggregate.csv")
    inputs = ReportInputs(aggregate=agg, predictions=preds, versions=VERSIONS, history=HISTORY, source=str(comparison))
    return render(inputs, out, links={"comparison table (CSV)": "aggregate.csv"})


def test_links_are_relative_files_inside_the_folder_and_images_are_png(report):
    parser = _Refs()
    parser.feed(report.read_text())
    assert len(parser.refs) >= 6  # 3 evaluation plots + drift + timeline + the CSV link
    root = report.parent.resolve()
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref
        target = (root / ref).resolve()
        assert target.is_file() and root in target.parents, ref
        if ref.endswith(".png"):
            assert target.read_bytes()[:8] == PNG, ref
    assert {"drift.png", "champion_timeline.png", "calibration.png", "forecast_vs_realized.png",
            "error_by_decile.png"} <= set(parser.refs)


def test_tables_hold_the_comparisons_numbers_rounded(report, comparison):
    agg = pd.read_csv(comparison / "aggregate.csv", index_col=0)
    parser = _Refs()
    parser.feed(report.read_text())
    for model in agg.index:
        for col in (c for c in COLUMNS if c in agg):
            assert fmt(agg.loc[model, col]) in parser.cells, (model, col)
    assert "0.3123" in parser.cells and "0.3123456" not in report.read_text()  # rounded, not 16 digits


def test_a_constant_confidence_is_said_in_a_sentence(report, comparison):
    _, preds = load_comparison(comparison)
    notes = confidence_notes(preds, baselines=("har_rv",))
    assert notes == ["lstm: return confidence is 0.50 everywhere: the model showed no validated return skill, "
                     "so it claims none."]
    assert notes[0] in report.read_text()


def test_few_distinct_confidences_are_named():
    df = predictions("tcn", 3, False)
    df["rv_10m_conf"] = np.where(np.arange(len(df)) % 3 == 0, 0.595, 0.597)
    assert any("volatility confidence takes only 2 values" in n for n in confidence_notes(df))


def test_report_without_comparison_or_history_says_so(tmp_path):
    index = render(ReportInputs(), tmp_path / "r")
    text = index.read_text()
    assert "No comparison found" in text and "The monitor has not run" in text and "No registered versions" in text


@pytest.mark.slow
def test_renders_in_headless_chromium_and_is_not_blank(report, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed (Debian package `chromium`; CI installs it)")
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(prefix="chromium-")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           f"--screenshot={shot}", "--window-size=1280,2000", report.resolve().as_uri()]
    try:
        subprocess.run(cmd, check=True, timeout=120, capture_output=True, env={**os.environ, "HOME": profile})
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 10  # text, tables and plots, not a blank page
    assert (img < 128).mean() > 0.01
    if os.environ.get("HFCAST_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["HFCAST_KEEP_SCREENSHOT"])
    assert re.search(r"<h1>hfcast report</h1>", report.read_text())

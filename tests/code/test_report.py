"""The quant's report: live performance per date, the gate's numbers, the backtest with intervals,
attributions; relative links, valid PNGs with units, plain sentences for confidences that carry no
information; Evidently's pages linked or sharing one copy of their scripts; rendered in headless
Chromium (slow)."""

from __future__ import annotations

import json
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
from hfcast.report import COLUMNS, ReportInputs, confidence_notes, fmt, load_comparison, render, share_assets

PNG = b"\x89PNG\r\n\x1a\n"
MAX_REPORT_BYTES = 15 * 2**20


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


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    """A comparison folder exactly as ``hfcast compare`` writes it (write_comparison)."""
    tmp_path = tmp_path_factory.mktemp("compare")
    preds = pd.concat([predictions("lstm", 1, True), predictions("har_rv", 2, False)], ignore_index=True)
    per, agg = [], {}
    for m, g in preds.groupby("model", sort=False):
        pf, a = score_folds(g)
        per.append(pf.assign(model=m))
        agg[m] = a
    write_comparison(pd.DataFrame(agg).T, pd.concat(per), preds, tmp_path / "compare")
    return tmp_path / "compare"


DATES = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-16", periods=12)]


def _record(i: int, date: str) -> dict:
    """A monitor record as hfcast.monitoring writes it: v1 serves, retrains on the 5th date, v2 serves after."""
    live = {"vol_qlike": 0.22 + 0.01 * i, "vol_qlike_har_tod": 0.24, "vol_qlike_ratio_har_tod": (0.22 + 0.01 * i) / 0.24,
            "ret_ic": 0.1 - 0.02 * i, "n_eff": 60.0, "ret_coverage": 0.78, "rv_coverage": 0.81,
            "rv_decile_ratio": 1.0 if i < 6 else 0.8, "ret_decile_ratio": 1.0, "rv_conf_levels": 1.0 if i < 6 else 40.0,
            "ret_conf_levels": 1.0 if i < 6 else 25.0}
    retrain = i == 4
    return {"date": date, "version": "1" if i < 6 else "2", "action": "retrain" if retrain else "none",
            "checks": {"drift_share": 0.05 * i, "live": live, "reference": {"vol_qlike": 0.23, "ret_ic": 0.2}},
            "reasons": ["feature drift on 2 consecutive date(s) >= K=2 (share 0.20 >= 0.3 today; e.g. spread_bps, "
                        "park_30m, bpv_15m, har_rv_d, har_rv_w) and a long tail of words that must not be cut"]
            if retrain else [], "trigger": {"status": "done", "promoted": True, "new_version": 2} if retrain else None}


HISTORY = [_record(i, d) for i, d in enumerate(DATES)]
COMPARISONS = [{"metric": "vol_qlike", "reference": "champion", "challenger": 0.2181, "reference_value": 0.2331,
                "improvement": 0.015, "margin": 0.002, "passed": True},
               {"metric": "vol_qlike", "reference": "baseline har_tod", "challenger": 0.2181, "reference_value": 0.2565,
                "improvement": 0.0384, "margin": 0.002, "passed": True},
               {"metric": "ret_ic", "reference": "champion", "challenger": 0.21, "reference_value": 0.11,
                "improvement": 0.1, "margin": 0.002, "passed": True}]
VERSIONS = [{"version": 1, "arch": "lstm", "aliases": ["previous-champion"], "status": "previous champion",
             "train_first": "2024-01-02", "train_last": "2024-01-09", "metrics": {"vol_qlike": 0.31234567},
             "tags": {"gate.decision": "forced", "gate.reasons": json.dumps(["forced: first model"]),
                      "hfcast.val_first": "2024-01-10", "hfcast.val_last": "2024-01-11",
                      "hfcast.test_first": "2024-01-12", "hfcast.test_last": "2024-01-15"}},
            {"version": 2, "arch": "tcn", "aliases": ["champion"], "status": "champion", "train_first": "2024-01-02",
             "train_last": "2024-01-17", "metrics": {"vol_qlike": 0.2987654},
             "tags": {"gate.decision": "promote", "gate.reasons": json.dumps(["vol_qlike beats every reference by > 0.002"]),
                      "gate.comparisons": json.dumps(COMPARISONS), "gate.at": "2024-01-22T21:00:00+00:00",
                      "hfcast.val_first": "2024-01-18", "hfcast.val_last": "2024-01-19",
                      "hfcast.test_first": "2024-01-19", "hfcast.test_last": "2024-01-22"}},
            {"version": 3, "arch": "lstm", "aliases": ["challenger"], "status": "rejected by the gate",
             "train_first": "2024-01-02", "train_last": "2024-01-24", "metrics": {},
             "tags": {"gate.decision": "reject", "gate.reasons": json.dumps(["vol_qlike: challenger 0.3 vs champion 0.2"])}}]


@pytest.fixture(scope="module")
def backtest_result():
    """A real backtest of a noisy-oracle forecaster on 6 simulated days (the same code as the report's)."""
    from hfcast.backtest import BacktestConfig, backtest_days, make_day
    from hfcast.data.simulator import SimConfig, iter_days

    rng = np.random.default_rng(1)
    days = []
    for date, bars, truth in iter_days(SimConfig(n_symbols=12, n_days=6, seed=2)):
        preds = truth[["symbol", "ts"]].assign(
            ret_60m_pred=truth["true_ret_60m"] + rng.normal(0, 2 * np.nanstd(truth["true_ret_60m"]), len(truth)),
            ret_60m_conf=0.5, rv_10m_pred=np.sqrt(truth["true_var_10m"]) * np.exp(rng.normal(0, 0.3, len(truth))))
        days.append(make_day(date, bars, preds, truth))
    return backtest_days(days, BacktestConfig(), "hfcast served (v1, v2)")


def importance() -> pd.DataFrame:
    groups = ["volatility", "har", "spread", "volume", "time"]
    imp = pd.DataFrame({"group": groups, "n_features": 3, "ret_importance": [0.02, 0.01, 0.0, -0.01, 0.005],
                        "vol_importance": [1.9, 0.25, 0.03, 0.02, 0.0], "ret_std": 0.002, "vol_std": 0.01})
    imp["ret_rel"], imp["vol_rel"] = imp["ret_importance"], imp["vol_importance"]
    imp.attrs.update(base_loss={"ret": 1.0, "vol": 1.0}, windows=1500, dates=DATES[-3:], version="2")
    return imp


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.imgs, self.cells, self.ids = [], [], [], []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("a", "img") and (a.get("href") or a.get("src")):
            self.refs.append(a.get("href") or a.get("src"))
        if tag == "img":
            self.imgs.append(a["src"])
        if a.get("id"):
            self.ids.append(a["id"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data.strip())
            self._in_td = False


def parse(index: Path) -> _Refs:
    parser = _Refs()
    parser.feed(index.read_text())
    return parser


@pytest.fixture(scope="module")
def report(comparison, tmp_path_factory, backtest_result) -> Path:
    """The page rendered once for the module (the tests only read it)."""
    tmp_path = tmp_path_factory.mktemp("report")
    agg, preds = load_comparison(comparison)
    out = tmp_path / "report"
    out.mkdir()
    shutil.copy(comparison / "aggregate.csv", out / "aggregate.csv")
    inputs = ReportInputs(aggregate=agg, predictions=preds, versions=VERSIONS, history=HISTORY, source=str(comparison),
                          backtest=backtest_result, importance=importance(), drift_threshold=0.3,
                          meta={"generated": "2024-02-01 20:00 UTC", "code": "hfcast 0.1.0, commit 0123456789ab",
                                "model": "hfcast: champion v2 (tcn)"})
    return render(inputs, out, links={"comparison table (CSV)": "aggregate.csv"})


def test_links_are_relative_files_inside_the_folder_and_images_are_png(report):
    parser = parse(report)
    root = report.parent.resolve()
    for ref in parser.refs:
        if ref.startswith("#"):
            continue
        assert "://" not in ref and not ref.startswith("/"), ref
        target = (root / ref).resolve()
        assert target.is_file() and root in target.parents, ref
        if ref.endswith(".png"):
            assert target.read_bytes()[:8] == PNG, ref
    assert {"live_performance.png", "champion_timeline.png", "calibration.png", "forecast_vs_realized.png",
            "error_by_decile.png", "importance.png", "backtest/equity.png", "backtest/tracking.png"} <= set(parser.imgs)


def test_every_plot_states_its_units_and_how_to_read_it(report):
    text = report.read_text()
    figures = re.findall(r"<figure>(.*?)</figure>", text, re.S)
    assert len(figures) == len(parse(report).imgs) >= 8
    for f in figures:
        assert "<b>How to read it:</b>" in f and "<b>Units:</b>" in f, f[:120]
    assert "realized volatility of the next 10 minutes" in text  # TARGET_UNITS, stated once on the page


def test_header_names_generation_time_commit_and_versions(report):
    text = report.read_text()
    assert "<b>generated</b>: 2024-02-01 20:00 UTC" in text and "commit 0123456789ab" in text
    assert "champion v2 (tcn)" in text
    assert {"live", "gate", "backtest", "attributions", "scores", "timeline", "files"} <= set(parse(report).ids)


def test_live_table_holds_every_monitored_date_and_the_why_in_full(report):
    text = report.read_text()
    for d in DATES:
        assert f"<th>{d}</th>" in text
    assert "a long tail of words that must not be cut -&gt; promoted v2" in text
    cells = parse(report).cells
    assert fmt(HISTORY[3]["checks"]["live"]["vol_qlike_ratio_har_tod"]) in cells
    assert "On 6 of 12 dates a confidence was one constant value" in text


def test_gate_section_shows_the_numbers_the_gate_compared(report):
    text = report.read_text()
    section = text[text.index("id='gate'"):text.index("id='backtest'")]
    assert "v2 tcn: champion (gate promote" in section and "test span 2024-01-19..2024-01-22" in section
    assert "0.2181" in section and "0.2331" in section and "0.2565" in section
    assert "v3 lstm: rejected by the gate" in section and "vol_qlike: challenger 0.3 vs champion 0.2" in section


def test_backtest_section_carries_intervals_and_the_small_sample_warning(report, backtest_result):
    text = report.read_text()
    section = text[text.index("id='backtest'"):text.index("id='attributions'")]
    assert "small sample: only 6 independent day(s)" in section
    assert "net SR 95% CI" in section and "model minus yardstick" in section
    lo, hi = backtest_result.long_short["model"]["net_sharpe_ci"]
    assert f"{lo:.2f} .. {hi:.2f}" in section
    assert (report.parent / "backtest" / "backtest.json").is_file()


def test_tables_hold_the_comparisons_numbers_rounded(report, comparison):
    agg = pd.read_csv(comparison / "aggregate.csv", index_col=0)
    cells = parse(report).cells
    for model in agg.index:
        for col in (c for c in COLUMNS if c in agg):
            assert fmt(agg.loc[model, col]) in cells, (model, col)
    assert "0.3123" in cells and "0.3123456" not in report.read_text()  # rounded, not 16 digits


def test_a_constant_confidence_is_said_in_a_sentence_where_it_is_plotted(report, comparison):
    _, preds = load_comparison(comparison)
    notes = confidence_notes(preds, baselines=("har_rv",))
    assert notes == ["lstm: return confidence is 0.50 everywhere: the model showed no validated return skill, "
                     "so it claims none."]
    text = report.read_text()
    assert text.index(notes[0]) > text.index("calibration.png") > text.index("id='scores'")


def test_few_distinct_confidences_are_named():
    df = predictions("tcn", 3, False)
    df["rv_10m_conf"] = np.where(np.arange(len(df)) % 3 == 0, 0.595, 0.597)
    assert any("volatility confidence takes only 2 values" in n for n in confidence_notes(df))


def test_report_without_comparison_or_history_says_so(tmp_path):
    index = render(ReportInputs(missing={"backtest": "ValueError: no monitored dates"}), tmp_path / "r")
    text = index.read_text()
    assert "No comparison found" in text and "The monitor has not run" in text and "No registered versions" in text
    assert "No backtest of the served forecasts (ValueError: no monitored dates)" in text


def test_timeline_legend_names_distinct_colours_for_each_span():
    from hfcast.plots import COLORS

    spans = [COLORS[k] for k in ("train", "val", "test", "served")]
    assert len(set(spans)) == 4


@pytest.fixture(scope="module")
def evidently_pages(tmp_path_factory) -> list[Path]:
    """Two real Evidently drift pages, as the monitor writes them (titled per date)."""
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.drift import evidently_drift

    folder = tmp_path_factory.mktemp("evidently")
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    pages = []
    for i, date in enumerate(("2024-02-05", "2024-02-06")):
        cur = pd.DataFrame({"a": rng.normal(i, 1, 200), "b": rng.normal(size=200)})
        about = {"date": date, "model": "hfcast", "model_version": "1", "reference_span": "x..y", "kind": "feature drift"}
        html_path = folder / f"{date}.html"
        evidently_drift(cur, ref, ["a", "b"], MonitorConfig(), html_path.as_uri(), (folder / f"{date}.json").as_uri(),
                        about=about)
        pages.append(html_path)
    return pages


def test_evidently_pages_share_one_copy_of_their_scripts(evidently_pages, tmp_path):
    out = tmp_path / "drift"
    out.mkdir()
    for p in evidently_pages:
        (out / p.name).write_text(share_assets(p.read_text(), out))
    shared = sorted(out.glob("evidently-*"))
    assert {s.suffix for s in shared} == {".js", ".css"} and len(shared) == 2  # one library for both pages
    original = sum(p.stat().st_size for p in evidently_pages)
    now = sum(f.stat().st_size for f in out.iterdir())
    assert now < 0.6 * original, (now, original)
    for p in evidently_pages:
        page = (out / p.name).read_text()
        assert f"<title>feature drift {p.stem}, hfcast v1 vs reference x..y</title>" in page
        assert "var metric_" in page and all(f"src='{s.name}'" in page or f"href='{s.name}'" in page for s in shared)
        assert len(page) < 0.2 * p.stat().st_size


def _chromium(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed (Debian package `chromium`; `make test` installs it as root: .ci/test-deps)")
    profile = tempfile.mkdtemp(prefix="chromium-")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, check=True, timeout=timeout, capture_output=True, text=True,
                              env={**os.environ, "HOME": profile})
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(url: str, path: Path, width: int, height: int) -> np.ndarray:
    from PIL import Image

    _chromium([f"--screenshot={path}", f"--window-size={width},{height}", url])
    return np.asarray(Image.open(path).convert("L"), dtype=float)


@pytest.mark.slow
def test_demo_like_report_renders_in_headless_chromium_with_its_sections_and_plots(report, tmp_path):
    from PIL import Image

    dom = _chromium(["--dump-dom", report.resolve().as_uri()]).stdout  # the page as the browser built it
    for heading in ("Live performance of the served forecaster", "What the gate compared",
                    "Backtest of the served forecasts", "What drives the forecasts"):
        assert heading in dom, heading
    for src in parse(report).imgs:  # every plot exists and is a real picture, not a blank canvas
        img = Image.open(report.parent / src)
        px = np.asarray(img.convert("L"), dtype=float)
        assert img.size[0] >= 600 and img.size[1] >= 250 and px.std() > 15 and (px < 128).mean() > 0.005, src
    size = sum(f.stat().st_size for f in report.parent.rglob("*") if f.is_file())
    assert size < MAX_REPORT_BYTES, size
    shot = _screenshot(report.resolve().as_uri(), tmp_path / "shot.png", 1280, 2000)
    assert shot.shape[:2] == (2000, 1280)
    assert shot.std() > 10 and (shot < 128).mean() > 0.01  # text, tables and plots, not a blank page
    if os.environ.get("HFCAST_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "shot.png", os.environ["HFCAST_KEEP_SCREENSHOT"])


@pytest.mark.slow
def test_an_evidently_page_with_shared_scripts_still_draws(evidently_pages, tmp_path):
    out = tmp_path / "drift"
    out.mkdir()
    page = out / evidently_pages[0].name
    page.write_text(share_assets(evidently_pages[0].read_text(), out))
    # the dashboard is drawn by the shared script: with it the page has far more ink than without it
    drawn = _screenshot(page.as_uri(), tmp_path / "a.png", 1200, 1400)
    for s in out.glob("evidently-*.js"):
        s.unlink()
    bare = _screenshot(page.as_uri(), tmp_path / "b.png", 1200, 1400)
    assert (drawn < 200).mean() > 2 * (bare < 200).mean() + 0.005, ((drawn < 200).mean(), (bare < 200).mean())


def test_a_constant_volatility_confidence_does_not_deny_the_forecasts_skill():
    preds = pd.DataFrame({"model": ["har_x"] * 4, "ret_60m_conf": [0.5] * 4, "rv_10m_conf": [0.61] * 4})
    notes = confidence_notes(preds)
    assert notes[0] == "har_x: return confidence is 0.50 everywhere: the model showed no validated return skill, " \
                       "so it claims none."
    assert notes[1].startswith("har_x: volatility confidence is 0.61 everywhere: on validation it did not tell")
    assert "skill" not in notes[1]

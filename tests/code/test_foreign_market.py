"""bench/foreign_market.py: the robustness bench's market that arrives as a vendor's files. Through
``hfcast ingest`` as a user runs it, an early close, halts and thin names must arrive whole (nothing
quarantined, no invented minutes) and featurize with the quote-only features present and the
trade features absent."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from bench import foreign_market
from hfcast import pyfunc
from hfcast.cli import app
from hfcast.features.engine import load_features, read_feature_set, run_featurize
from hfcast.storage import Lake


def test_a_vendor_market_with_an_early_close_ingests_and_featurizes_whole(tmp_path, caplog):
    files = foreign_market.write(tmp_path / "vendor", symbols=6, days=5, seed=2)  # Dec 24 closes at 13:00
    rows = sum(len(pd.read_csv(f)) for f in files)
    lake_url = (tmp_path / "lake").as_uri()
    res = CliRunner().invoke(app, ["ingest", "--format", "bbo", *map(str, files), "--lake", lake_url, "--no-progress"])
    assert res.exit_code == 0, res.output
    lake = Lake(lake_url)
    assert lake.dates("validated") == ["2024-12-24", "2024-12-26", "2024-12-27", "2024-12-30", "2024-12-31"]
    got = pd.concat([lake.read("validated", d) for d in lake.dates("validated")])
    bad = sum(len(lake.read("quarantine", d)) for d in lake.dates("quarantine"))
    assert len(got) == rows and bad == 0  # every vendor row is clean: none lost
    per_symbol_day = got.groupby([got["ts"].dt.strftime("%Y-%m-%d"), "symbol"]).size()
    assert per_symbol_day.max() == 390 and (per_symbol_day < 390).any()  # thin names and halts: gaps kept
    assert per_symbol_day.loc["2024-12-24"].max() == 210  # the early close: 09:30-13:00

    run_featurize(lake, progress=False)
    F = load_features(lake, lake.dates("features"))
    assert F["spread_bps"].notna().mean() > 0.9 and F["rv_30m"].notna().mean() > 0.8
    assert F["log_volume"].isna().all()  # quotes carry no trades: the feature is missing, not zero
    assert np.isfinite(F["rv_10m"]).mean() > 0.8

    # no window has every feature: the MLflow input example is left out, and the warning says why
    names = list(read_feature_set(lake)["features"])
    assert pyfunc.example_windows(lake, names, "2024-12-31") is None
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "never present there" in said and "log_volume" in said and "spread_bps" not in said


def test_the_span_holds_an_early_close(tmp_path):
    s = foreign_market.sessions(6)  # Dec 23, 24 (13:00), 26, 27, 30, 31
    minutes = ((s["close"] - s["open"]) / pd.Timedelta(minutes=1)).astype(int).tolist()
    assert minutes == [390, 210, 390, 390, 390, 390]
    files = foreign_market.write(tmp_path, symbols=2, days=6, seed=0)
    half = pd.read_csv(files[1])
    assert half["ts"].max() <= "2024-12-24 12:59:00" and half["ts"].min() >= "2024-12-24 09:30:00"
    assert (half["ask"] > half["bid"]).all() and np.allclose(half["bid"] * 100, np.round(half["bid"] * 100))

"""The featurize stage on a real lake: partitions, feature-set file, grid filling, HAR carry, reruns."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _feature_reference import make_bars
from hfcast.data.schema import TS_DTYPE, trading_days
from hfcast.features.engine import DAILY_TABLE, load_features, read_feature_set, run_featurize
from hfcast.features.catalog import feature_names
from hfcast.storage import Lake, remove

DATES = trading_days("2024-03-04", 7)


def _lake(root, quotes=True, table="validated", n=4) -> Lake:
    lake = Lake(f"file://{root}")
    for i, d in enumerate(DATES):
        bars = make_bars(n, d, seed=100 + i, quotes=quotes)
        lake.write(table, d, bars)
        truth = bars[["symbol", "ts"]].assign(true_ret_60m=0.001 * i, true_var_10m=1e-6, regime=0)
        lake.write("truth", d, truth)
    return lake


def test_run_writes_contract_partitions(tmp_path):
    lake = _lake(tmp_path)
    summary = run_featurize(lake, progress=False)
    assert summary["dates"] == len(DATES) and summary["rows"] == 4 * 390 * len(DATES)
    assert summary["sources"] == {"validated": len(DATES), "raw": 0}
    fs = read_feature_set(lake)
    assert fs["features"] == feature_names(True) and fs["quotes_available"] and fs["n_features"] == 61
    df = lake.read("features", DATES[2])
    names = feature_names(True)
    assert list(df.columns) == ["symbol", "ts", *names, "ret_60m", "rv_10m", "true_ret_60m", "true_var_10m"]
    assert str(df["ts"].dtype) == TS_DTYPE and str(df["symbol"].dtype) == "string"
    assert all(df[n].dtype == np.float32 for n in names) and df["ret_60m"].dtype == np.float64
    assert df.equals(df.sort_values(["symbol", "ts"]).reset_index(drop=True))
    # every symbol-day is on the full 390-minute grid; filled minutes are flagged
    assert (df.groupby("symbol").size() == 390).all()
    raw = lake.read("validated", DATES[2])
    assert int(df["bar_missing"].sum()) == len(df) - len(raw)
    assert df.loc[df["bar_missing"] == 1, "log_volume"].eq(0).all()
    # HAR terms: NaN on the first date (no history), filled later
    first = lake.read("features", DATES[0])
    assert first["har_rv_d"].isna().all() and df["har_rv_d"].notna().all()


def test_partial_rerun_equals_full_run(tmp_path):
    lake = _lake(tmp_path)
    run_featurize(lake, progress=False)
    full = lake.read("features", DATES[-1])
    run_featurize(lake, dates=[DATES[-1]], progress=False)  # HAR state warmed from the prior dates
    pd.testing.assert_frame_equal(lake.read("features", DATES[-1]), full)
    assert lake.dates(DAILY_TABLE) == list(DATES)  # each date's daily values, beside its features
    # the warm-up reads those daily values, not the bars again: bars changed under an earlier date
    # (not re-featurized) leave the later date's carried terms as that date's features saw them
    bars = lake.read("validated", DATES[0])
    lake.write("validated", DATES[0], bars.assign(bid=bars["bid"] * (1 + 0.01 * np.sin(np.arange(len(bars))))))
    run_featurize(lake, dates=[DATES[-1]], progress=False)
    pd.testing.assert_frame_equal(lake.read("features", DATES[-1]), full)
    # without them (a lake featurized before they existed) the bars are read: same numbers where
    # the bars are the ones featurized, the changed bars' where they changed
    lake.write("validated", DATES[0], bars)
    remove(lake.table(DAILY_TABLE), recursive=True)
    run_featurize(lake, dates=[DATES[-1]], progress=False)
    pd.testing.assert_frame_equal(lake.read("features", DATES[-1]), full)
    loaded = load_features(lake, DATES[-2:], columns=["rv_30m", "ret_60m"])
    assert list(loaded.columns) == ["symbol", "ts", "rv_30m", "ret_60m"] and len(loaded) == 2 * 4 * 390
    assert loaded["symbol"].is_monotonic_increasing


@pytest.mark.slow
def test_parallel_run_equals_sequential(tmp_path):
    lake = _lake(tmp_path / "a")
    run_featurize(lake, progress=False)
    seq = {d: lake.read("features", d) for d in DATES}
    summary = run_featurize(lake, progress=False, workers=2)
    assert summary["workers"] == 2 and summary["rows"] == 4 * 390 * len(DATES)
    for d in DATES:
        pd.testing.assert_frame_equal(lake.read("features", d), seq[d])


def test_ohlcv_source_records_reduced_feature_set(tmp_path, caplog):
    lake = _lake(tmp_path, quotes=False, table="raw", n=3)
    with caplog.at_level(logging.WARNING):
        run_featurize(lake, dates=DATES[:2], progress=False)
    assert "no validated partition" in caplog.text and "quote-based features are unavailable" in caplog.text
    fs = read_feature_set(lake)
    assert not fs["quotes_available"] and fs["features"] == feature_names(False) and "spread_bps" in fs["unavailable"]
    df = lake.read("features", DATES[1])
    assert "spread_bps" not in df.columns and df["rv_30m"].notna().any()


def test_missing_dates_are_a_clear_error(tmp_path):
    lake = _lake(tmp_path)
    with pytest.raises(FileNotFoundError, match="1999-01-04"):
        run_featurize(lake, dates=["1999-01-04"], progress=False)
    with pytest.raises(FileNotFoundError, match="no bars to featurize"):
        run_featurize(Lake(f"file://{tmp_path}/empty"), progress=False)


def test_cli_featurize(tmp_path, monkeypatch):
    from hfcast.cli import app

    lake = _lake(tmp_path / "lake", n=2)
    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / ".hfcast"))
    res = CliRunner().invoke(app, ["featurize", "--lake", lake.url, "--dates", DATES[0], "--dates", DATES[1],
                                   "--no-progress", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "featurized" in res.output and "2 date(s)" in res.output
    assert lake.dates("features") == DATES[:2]


@pytest.mark.integration
def test_run_featurize_on_s3(s3_settings):
    lake = Lake.from_settings(s3_settings)
    bars = make_bars(2, DATES[0], seed=1)
    lake.write("validated", DATES[0], bars)
    run_featurize(lake, progress=False)
    assert read_feature_set(lake)["n_features"] == 61
    assert len(load_features(lake, [DATES[0]])) == 2 * 390

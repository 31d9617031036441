"""Validation and quarantine: one test per reason, priority, counts that add up, lake runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hfcast.data.schema import BAR_COLUMNS, conform
from hfcast.data.simulator import SimConfig, iter_days
from hfcast.data.validate import QUARANTINE_COLUMNS, REASONS, run_validate, validate_bars
from hfcast.storage import Lake, read_text

DATE = "2024-01-02"


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """Two symbols, one simulated session (a clean baseline: the simulator never breaks a rule)."""
    date, df, _ = next(iter_days(SimConfig(n_symbols=2, n_days=1, start_date=DATE, seed=3)))
    assert date == DATE
    return df


def _set(df: pd.DataFrame, i: int, **values) -> pd.DataFrame:
    for k, v in values.items():
        df.loc[i, k] = v
    return df


def _swap_ts(df: pd.DataFrame, i: int, j: int) -> pd.DataFrame:
    ti, tj = df.loc[i, "ts"], df.loc[j, "ts"]
    return _set(_set(df, i, ts=tj), j, ts=ti)


# (reason, mutation of row 5 of the first symbol, index of the row that must be quarantined)
CASES = {
    "missing_symbol": (lambda d: _set(d, 5, symbol=""), 5),
    "bad_symbol": (lambda d: _set(d, 5, symbol="S0\x0000"), 5),
    "nan_or_inf": (lambda d: _set(d, 5, bid=np.nan), 5),
    "nonpositive_price": (lambda d: _set(d, 5, bid=-1.0), 5),
    "nonpositive_size": (lambda d: _set(d, 5, ask_size=0.0), 5),
    "crossed_quote": (lambda d: _set(d, 5, bid=d.loc[5, "ask"] + 0.01), 5),
    "locked_quote": (lambda d: _set(d, 5, bid=d.loc[5, "ask"]), 5),
    "closed_date": (lambda d: _set(d, 5, ts=d.loc[5, "ts"] + pd.Timedelta(days=4)), 5),  # a Saturday
    "wrong_date": (lambda d: _set(d, 5, ts=d.loc[5, "ts"] + pd.Timedelta(days=1)), 5),
    "outside_session": (lambda d: _set(d, 5, ts=d.loc[0, "ts"] - pd.Timedelta(minutes=5)), 5),
    "unaligned_ts": (lambda d: _set(d, 5, ts=d.loc[5, "ts"] + pd.Timedelta(seconds=30)), 5),
    "duplicate_ts": (lambda d: _set(d, 6, ts=d.loc[5, "ts"]), 6),
    "out_of_order_ts": (lambda d: _swap_ts(d, 5, 6), 6),
    "absurd_jump": (lambda d: _set(d, 5, **{c: d.loc[5, c] * 1.3 for c in ("bid", "ask", "last", "vwap", "mid_high", "mid_low")}), 5),
}


def test_every_reason_has_a_case():
    assert set(CASES) == set(REASONS)


@pytest.mark.parametrize("reason", REASONS)
def test_bad_row_is_quarantined_with_its_reason(bars, reason):
    mutate, row = CASES[reason]
    df = mutate(bars.copy())
    clean, quarantine = validate_bars(df, DATE)
    assert list(quarantine.columns) == QUARANTINE_COLUMNS
    assert quarantine["reason"].tolist() == [reason], quarantine[["ts", "reason", "detail"]]
    assert quarantine.loc[0, "ts"] == conform(df).loc[row, "ts"]
    assert quarantine.loc[0, "detail"]  # a human-readable explanation, never empty
    assert len(clean) + len(quarantine) == len(df)


@pytest.mark.parametrize("symbol,reason", [(None, "missing_symbol"), ("  ", "missing_symbol"),
                                           ("A\nB", "bad_symbol"), ("A\x7fB", "bad_symbol"), ("\tA", "bad_symbol")])
def test_symbols_missing_or_with_control_characters(bars, symbol, reason):
    clean, quarantine = validate_bars(_set(bars.copy(), 3, symbol=symbol), DATE)
    assert quarantine["reason"].tolist() == [reason] and len(clean) == len(bars) - 1
    if reason == "bad_symbol":
        assert quarantine.loc[0, "symbol"] == symbol and repr(symbol) in quarantine.loc[0, "detail"]


def test_inf_is_nan_or_inf(bars):
    clean, quarantine = validate_bars(_set(bars.copy(), 3, volume=np.inf), DATE)
    assert quarantine["reason"].tolist() == ["nan_or_inf"]


def test_clean_input_passes_untouched_and_sorted(bars):
    shuffled_symbols = pd.concat([bars[bars.symbol == "S0001"], bars[bars.symbol == "S0000"]])
    clean, quarantine = validate_bars(shuffled_symbols, DATE)
    assert quarantine.empty and list(quarantine.columns) == QUARANTINE_COLUMNS
    pd.testing.assert_frame_equal(clean, conform(bars).sort_values(["symbol", "ts"]).reset_index(drop=True))


def test_first_failing_reason_wins(bars):
    df = _set(bars.copy(), 5, bid=bars.loc[5, "ask"] + 0.05, ask_size=0.0)  # crossed AND zero size
    _, quarantine = validate_bars(df, DATE)
    assert quarantine["reason"].tolist() == ["nonpositive_size"]


def test_corrupt_row_does_not_take_its_good_duplicate_with_it(bars):
    bad_copy = bars.iloc[[5]].assign(bid=np.nan)
    df = pd.concat([bad_copy, bars], ignore_index=True)  # the NaN copy comes FIRST in file order
    clean, quarantine = validate_bars(df, DATE)
    assert quarantine["reason"].tolist() == ["nan_or_inf"]
    assert len(clean) == len(bars)


def test_genuine_jump_is_kept(bars):
    df = bars.copy()
    first = df.symbol == "S0000"
    cols = ["bid", "ask", "last", "vwap", "mid_high", "mid_low"]
    df.loc[first & (df.index >= 100), cols] *= 1.3  # a level shift that stays: news, not an error
    clean, quarantine = validate_bars(df, DATE)
    assert quarantine.empty


def test_jump_limit_is_a_parameter(bars):
    df = _set(bars.copy(), 5, **{c: bars.loc[5, c] * 1.3 for c in ("bid", "ask")})
    assert validate_bars(df, DATE, jump_limit=0.5)[1].empty
    assert validate_bars(df, DATE, jump_limit=0.1)[1]["reason"].tolist() == ["absurd_jump"]


def test_quote_less_bars_need_last_not_quotes(bars):
    ohlcv = bars.assign(bid=np.nan, ask=np.nan, bid_size=np.nan, ask_size=np.nan)
    clean, quarantine = validate_bars(ohlcv, DATE)  # detected: no quotes at all
    assert quarantine.empty and len(clean) == len(bars)
    clean, quarantine = validate_bars(_set(ohlcv, 7, last=np.nan), DATE, quotes_available=False)
    assert quarantine["reason"].tolist() == ["nan_or_inf"]
    # the same missing quotes ARE an error when the source is said to carry quotes
    clean, quarantine = validate_bars(bars.assign(bid=np.nan), DATE, quotes_available=True)
    assert len(clean) == 0 and (quarantine["reason"] == "nan_or_inf").all()


def test_many_bad_rows_counts_add_up(bars):
    rng = np.random.default_rng(0)
    df = bars.copy()
    idx = rng.choice(len(df), 60, replace=False)
    df.loc[idx[:20], "bid"] = np.nan
    df.loc[idx[20:40], "ask_size"] = -5.0
    df = pd.concat([df, df.iloc[idx[40:]]], ignore_index=True)  # 20 repeated rows
    clean, quarantine = validate_bars(df, DATE)
    counts = quarantine["reason"].value_counts().to_dict()
    assert counts == {"nan_or_inf": 20, "nonpositive_size": 20, "duplicate_ts": 20}
    assert len(clean) + len(quarantine) == len(df)
    assert not clean.duplicated(["symbol", "ts"]).any()


def test_empty_input():
    clean, quarantine = validate_bars(pd.DataFrame(columns=BAR_COLUMNS), DATE)
    assert clean.empty and quarantine.empty and list(quarantine.columns) == QUARANTINE_COLUMNS


def _lake_with_raw(url: str, bars: pd.DataFrame, storage_options=None) -> Lake:
    lake = Lake(url, storage_options)
    lake.write("raw", DATE, CASES["crossed_quote"][0](bars.copy()))
    lake.write("raw", "2024-01-03", bars.assign(ts=bars["ts"] + pd.Timedelta(days=1)))
    return lake


def _check_run(lake: Lake, bars: pd.DataFrame) -> None:
    totals = run_validate(lake, progress=False)
    assert totals["dates"] == [DATE, "2024-01-03"]
    assert totals["input_rows"] == 2 * len(bars) == totals["clean_rows"] + totals["quarantined_rows"]
    assert totals["reasons"]["crossed_quote"] == 1 and sum(totals["reasons"].values()) == 1
    report = json.loads(read_text(lake.report("validate", f"date={DATE}.json"), lake.storage_options))
    assert report["reasons"]["crossed_quote"] == 1 and report["clean_rows"] == len(bars) - 1
    assert len(lake.read("quarantine", DATE)) == 1
    assert lake.read("quarantine", "2024-01-03").empty  # written even when empty
    assert list(lake.read("validated", "2024-01-03").columns) == BAR_COLUMNS
    again = run_validate(lake, dates=[DATE], progress=False)  # idempotent rerun
    assert again["quarantined_rows"] == 1 and len(lake.read("validated", DATE)) == len(bars) - 1


def test_run_validate_local_lake(tmp_path, bars):
    _check_run(_lake_with_raw(f"file://{tmp_path}/lake", bars), bars)


def test_run_validate_missing_date_names_it(tmp_path, bars):
    lake = _lake_with_raw(str(tmp_path / "lake"), bars)
    with pytest.raises(FileNotFoundError, match="2030-01-01"):
        run_validate(lake, dates=["2030-01-01"], progress=False)


@pytest.mark.integration
def test_run_validate_on_s3(s3, s3_bucket, bars):
    _check_run(_lake_with_raw(f"{s3_bucket}/lake", bars, s3.storage_options), bars)

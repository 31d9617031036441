"""Ingest round-trips for every format on files the tests write, quarantine, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hfcast.cli import app
from hfcast.data.ingest import IngestError, aggregate_ticks, ingest, parse_column_map
from hfcast.data.lobster import DUMMY_ASK, DUMMY_BID
from hfcast.data.schema import BAR_COLUMNS, EXCHANGE_TZ, conform
from hfcast.data.simulator import SimConfig, iter_days
from hfcast.storage import Lake, read_text

DATES = ["2024-03-08", "2024-03-11"]  # either side of the US DST switch: the UTC session moves


@pytest.fixture(scope="module")
def sim() -> dict[str, pd.DataFrame]:
    """Simulated bars (the BBO path) for two symbols on both sides of a DST change."""
    out = {}
    for date, bars, _ in iter_days(SimConfig(n_symbols=2, n_days=2, start_date=DATES[0], seed=11)):
        out[date] = bars.iloc[np.r_[0:40, 390:430]].reset_index(drop=True)  # 40 minutes a symbol
    assert list(out) == DATES
    return out


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path}/lake")


def _local_naive(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None)


def _validated(lake: Lake) -> pd.DataFrame:
    return pd.concat([lake.read("validated", d) for d in lake.dates("validated")], ignore_index=True)


def test_bbo_csv_round_trip_with_column_map_and_local_time(tmp_path, sim, lake):
    bars = pd.concat(sim.values(), ignore_index=True)
    src = bars.rename(columns={"ts": "Timestamp", "bid": "BidPx", "ask": "AskPx", "symbol": "Ticker"})
    src["Timestamp"] = _local_naive(bars["ts"]).dt.strftime("%Y-%m-%d %H:%M:%S")  # exchange time, no offset
    src.to_csv(tmp_path / "bbo.csv", index=False)
    totals = ingest([str(tmp_path / "bbo.csv")], "bbo", lake, column_map=parse_column_map(
        "ts=Timestamp, bid=BidPx,ask=AskPx,symbol=Ticker"), progress=False)
    assert totals["dates"] == DATES and totals["quarantined_rows"] == 0
    assert lake.read("validated", DATES[0])["ts"].min() == pd.Timestamp("2024-03-08 14:30", tz="UTC")  # EST
    assert lake.read("validated", DATES[1])["ts"].min() == pd.Timestamp("2024-03-11 13:30", tz="UTC")  # EDT
    expected = conform(bars).sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(_validated(lake).sort_values(["symbol", "ts"]).reset_index(drop=True), expected)


def test_bbo_parquet_aware_timestamps_are_converted_not_relocalized(tmp_path, sim, lake):
    bars = sim[DATES[1]].copy()
    bars["ts"] = bars["ts"].dt.tz_convert("Europe/Berlin")  # aware, in another zone
    bars.to_parquet(tmp_path / "bbo.parquet")
    ingest([str(tmp_path / "bbo.parquet")], "bbo", lake, tz="Asia/Tokyo", progress=False)  # tz must not apply
    pd.testing.assert_frame_equal(lake.read("validated", DATES[1]), conform(sim[DATES[1]]))


def test_ohlcv_without_quotes(tmp_path, sim, lake):
    bars = sim[DATES[0]]
    src = pd.DataFrame({"symbol": bars["symbol"], "ts": bars["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "Open": bars["last"], "High": bars["mid_high"], "Low": bars["mid_low"],
                        "Close": bars["last"], "Volume": bars["volume"]})
    src.to_csv(tmp_path / "ohlcv.csv", index=False)
    totals = ingest([str(tmp_path / "ohlcv.csv")], "ohlcv", lake, progress=False)
    assert totals["clean_rows"] == len(bars) and totals["quarantined_rows"] == 0
    out = lake.read("validated", DATES[0])
    assert out[["bid", "ask", "bid_size", "ask_size"]].isna().all(axis=None)  # quotes stay missing
    np.testing.assert_allclose(out["last"], bars["last"])
    np.testing.assert_allclose(out["mid_high"], bars["mid_high"])
    np.testing.assert_allclose(out["volume"], bars["volume"])
    report = json.loads(read_text(lake.report("validate", f"date={DATES[0]}.json")))
    assert report["quotes_available"] is False


def _ticks_from_bars(bars: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trade and quote ticks whose minute bars are known: per minute a quote at :05 (mid +2 ticks),
    the bar's own quote at :20, and 1-3 trades between :30 and :58."""
    rng = np.random.default_rng(seed)
    trades, quotes = [], []
    for row in bars.itertuples():
        quotes.append((row.symbol, row.ts + pd.Timedelta(seconds=5), row.bid + 0.02, row.ask + 0.02, 100.0, 100.0))
        quotes.append((row.symbol, row.ts + pd.Timedelta(seconds=20), row.bid, row.ask, row.bid_size, row.ask_size))
        for k in range(rng.integers(1, 4)):
            trades.append((row.symbol, row.ts + pd.Timedelta(seconds=30 + 9 * k), rng.choice([row.bid, row.ask]),
                           float(rng.integers(1, 9) * 100)))
    tr = pd.DataFrame(trades, columns=["symbol", "ts", "price", "size"])
    qu = pd.DataFrame(quotes, columns=["symbol", "ts", "bid", "ask", "bid_size", "ask_size"])
    return tr, qu


def _expected_from_ticks(bars: pd.DataFrame, tr: pd.DataFrame) -> pd.DataFrame:
    """The bars the tick rules must give, computed directly (not with the code under test)."""
    minute = tr["ts"].dt.floor("min")
    g = tr.assign(pv=tr.price * tr["size"], minute=minute).groupby(["symbol", "minute"])
    exp = bars.set_index(["symbol", "ts"])[["bid", "ask", "bid_size", "ask_size"]].copy()
    exp["last"] = g["price"].last().to_numpy()
    exp["volume"] = g["size"].sum().to_numpy()
    exp["trades"] = g.size().to_numpy().astype(float)
    exp["vwap"] = (g["pv"].sum() / g["size"].sum()).to_numpy()
    mid = (exp["bid"] + exp["ask"]) / 2
    prev = mid.groupby(level="symbol").shift(1)
    exp["mid_high"] = np.fmax(mid + 0.02, prev)
    exp["mid_low"] = np.fmin(mid, prev)
    return conform(exp.reset_index())


def test_trades_and_quotes_aggregate_to_minute_bars(tmp_path, sim, lake):
    bars = sim[DATES[0]]
    tr, qu = _ticks_from_bars(bars)
    for df, name in ((tr, "trades.csv"), (qu, "quotes.csv")):
        df.assign(ts=_local_naive(df["ts"]).dt.strftime("%Y-%m-%d %H:%M:%S.%f")).to_csv(tmp_path / name, index=False)
    totals = ingest([str(tmp_path / "trades.csv")], "trades", lake, quotes_paths=[str(tmp_path / "quotes.csv")],
                    progress=False)
    assert totals["trade_ticks"] == len(tr) and totals["quote_ticks"] == len(qu) and totals["ticks_quarantined"] == 0
    got = lake.read("validated", DATES[0])
    pd.testing.assert_frame_equal(got, _expected_from_ticks(bars, tr), check_exact=False, rtol=1e-12)


def test_trades_only_is_quote_less_and_bad_ticks_are_quarantined(tmp_path, sim, lake):
    tr, _ = _ticks_from_bars(sim[DATES[0]].iloc[:10])
    bad = tr.iloc[[0, 1, 2]].assign(price=[np.nan, -1.0, 10.0], size=[100.0, 100.0, 0.0])
    late = tr.iloc[[3]].assign(ts=tr["ts"].iloc[0] - pd.Timedelta(seconds=1))  # older than what came before
    src = pd.concat([tr, bad, late], ignore_index=True)
    src.drop(columns="symbol").to_parquet(tmp_path / "t.parquet")  # UTC-aware, no symbol column
    totals = ingest([str(tmp_path / "t.parquet")], "trades", lake, symbol="S0000", progress=False)
    qt = lake.read("quarantine_ticks", DATES[0])
    assert qt["reason"].value_counts().to_dict() == {"nan_or_inf": 1, "nonpositive_price": 1,
                                                     "nonpositive_size": 1, "out_of_order_ts": 1}
    assert totals["ticks_quarantined"] == 4 and totals["clean_rows"] == 10
    out = lake.read("validated", DATES[0])
    assert out[["bid", "ask"]].isna().all(axis=None) and out["last"].notna().all()
    assert out["trades"].sum() + len(qt) == len(src)  # every tick either counted in a bar or quarantined


def write_lobster(bars: pd.DataFrame, folder: Path, seed: int = 0) -> list[Path]:
    """LOBSTER message + orderbook files (2 levels) that replay a BBO path minute by minute.

    Per minute: a new order at :05 that moves the book to the bar's quote +2 ticks, one that sets
    the bar's quote at :20, then 1-3 executions (types 4 and 5) between :30 and :58.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for (sym, date), g in bars.groupby([bars["symbol"], bars["ts"].dt.tz_convert(EXCHANGE_TZ).dt.date]):
        msgs, books = [], []
        for row in g.itertuples():
            sec = (row.ts.tz_convert(EXCHANGE_TZ) - pd.Timestamp(date, tz=EXCHANGE_TZ)).total_seconds()

            def book(bid, ask, bsz, asz):
                px = lambda p: int(round(p * 10_000))  # noqa: E731
                return [px(ask), asz, px(bid), bsz, px(ask) + 100, 500, px(bid) - 100, 500]

            msgs.append([sec + 5.123456789, 1, len(msgs), 100, int(round((row.bid + 0.02) * 1e4)), 1])
            books.append(book(row.bid + 0.02, row.ask + 0.02, 100, 100))
            msgs.append([sec + 20.5, 1, len(msgs), int(row.bid_size), int(round(row.bid * 1e4)), 1])
            books.append(book(row.bid, row.ask, int(row.bid_size), int(row.ask_size)))
            for k in range(rng.integers(1, 4)):
                side = rng.choice([-1, 1])
                price = row.ask if side == -1 else row.bid
                msgs.append([sec + 30 + 9 * k, 4 + k % 2, len(msgs), int(rng.integers(1, 9) * 100), int(round(price * 1e4)), side])
                books.append(book(row.bid, row.ask, int(row.bid_size), int(row.ask_size)))
        stem = f"{sym}_{date}_34200_57600"
        paths.append(folder / f"{stem}_message_2.csv")
        paths.append(folder / f"{stem}_orderbook_2.csv")
        pd.DataFrame(msgs).to_csv(paths[-2], header=False, index=False)
        pd.DataFrame(books).to_csv(paths[-1], header=False, index=False)
    return paths


def test_lobster_round_trip_from_simulated_bbo(tmp_path, sim, lake):
    bars = pd.concat(sim.values(), ignore_index=True)
    paths = write_lobster(bars, tmp_path)
    totals = ingest([str(p) for p in paths], "lobster", lake, progress=False)
    assert totals["dates"] == DATES and totals["quarantined_rows"] == 0 and totals["ticks_quarantined"] == 0
    got = _validated(lake).sort_values(["symbol", "ts"]).reset_index(drop=True)
    exp = conform(bars).sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["symbol", "ts", "bid", "ask", "bid_size", "ask_size"]],
                                  exp[["symbol", "ts", "bid", "ask", "bid_size", "ask_size"]], check_exact=False)
    mid = (exp["bid"] + exp["ask"]) / 2
    np.testing.assert_allclose(got["mid_high"], np.fmax(mid + 0.02, mid.groupby(exp["symbol"]).shift(1)), rtol=1e-9)
    msgs = pd.concat([pd.read_csv(p, header=None) for p in paths if "_message_" in p.name])
    execs = msgs[msgs[1].isin([4, 5])]
    assert got["volume"].sum() == execs[3].sum() and got["trades"].sum() == len(execs)


def test_lobster_empty_side_becomes_nan_and_is_quarantined(tmp_path, sim, lake):
    bars = sim[DATES[0]].iloc[:5]
    msg_path, book_path = write_lobster(bars, tmp_path)
    book = pd.read_csv(book_path, header=None)
    book.iloc[-1, 2] = DUMMY_BID  # the last minute ends with an empty bid side
    book.iloc[0, 0] = DUMMY_ASK
    book.to_csv(book_path, header=False, index=False)
    totals = ingest([str(msg_path), str(book_path)], "lobster", lake, progress=False)
    q = lake.read("quarantine", DATES[0])
    assert q["reason"].tolist() == ["nan_or_inf"] and np.isnan(q.loc[0, "bid"])
    assert totals["clean_rows"] + totals["quarantined_rows"] == len(bars)


def test_each_bad_row_kind_reaches_quarantine_through_ingest(tmp_path, sim, lake):
    bars = sim[DATES[0]].copy()
    bad = bars.iloc[[1, 2, 3, 4, 5, 6]].copy()
    bad.iloc[0, bad.columns.get_loc("bid")] = np.nan
    bad.iloc[1, bad.columns.get_loc("ask")] = bad.iloc[1]["bid"] - 0.01
    bad.iloc[2, bad.columns.get_loc("ask")] = bad.iloc[2]["bid"]
    bad.iloc[3, bad.columns.get_loc("bid_size")] = 0
    bad.iloc[4, bad.columns.get_loc("ts")] = bars["ts"].iloc[0] - pd.Timedelta(hours=1)
    src = pd.concat([bars, bad], ignore_index=True)  # the last bad row is a plain repeat
    src.to_csv(tmp_path / "bbo.csv", index=False)
    totals = ingest([str(tmp_path / "bbo.csv")], "bbo", lake, progress=False)
    want = {"nan_or_inf": 1, "crossed_quote": 1, "locked_quote": 1, "nonpositive_size": 1,
            "outside_session": 1, "duplicate_ts": 1}
    assert {k: v for k, v in totals["reasons"].items() if v} == want
    assert totals["clean_rows"] == len(bars) and totals["bars"] == len(src)
    q = lake.read("quarantine", DATES[0])
    assert q["reason"].value_counts().to_dict() == want and q["detail"].notna().all()
    report = json.loads(read_text(lake.report("ingest", f"date={DATES[0]}.json")))
    assert report["input_rows"] == report["clean_rows"] + report["quarantined_rows"] == len(src)


def test_nul_and_empty_symbols_are_quarantined_not_truncated(tmp_path, sim, lake):
    bars = sim[DATES[0]].copy()
    bars["symbol"] = bars["symbol"].astype(object)
    bars.loc[3, "symbol"] = "S0\x00B"
    bars.loc[4, "symbol"] = ""
    bars.to_csv(tmp_path / "bbo.csv", index=False)
    totals = ingest([str(tmp_path / "bbo.csv")], "bbo", lake, progress=False)
    assert {k: v for k, v in totals["reasons"].items() if v} == {"bad_symbol": 1, "missing_symbol": 1}
    q = lake.read("quarantine", DATES[0]).set_index("reason")
    assert q.loc["bad_symbol", "symbol"] == "S0\x00B"  # kept whole, not cut at the NUL
    assert set(_validated(lake)["symbol"]) == {"S0000", "S0001"}


def test_symbols_the_server_would_refuse_are_quarantined_at_ingest(tmp_path, sim, lake):
    """One symbol rule (hfcast.data.schema.symbol_problem) at ingest, in the online store and in the
    server: what ingest accepts, the server serves; what the server refuses never got in."""
    from hfcast.data.schema import symbol_problem
    from hfcast.feature_store import latest_windows

    bidi, long_ = "S0\u202eB", "S" * 5000
    bars = sim[DATES[0]].copy()
    bars["symbol"] = bars["symbol"].astype(object)
    bars.loc[5, "symbol"], bars.loc[6, "symbol"] = bidi, long_
    bars.to_csv(tmp_path / "bbo.csv", index=False)
    totals = ingest([str(tmp_path / "bbo.csv")], "bbo", lake, progress=False)
    assert totals["reasons"]["bad_symbol"] == 2
    q = lake.read("quarantine", DATES[0])
    assert set(q.loc[q["reason"] == "bad_symbol", "symbol"]) == {bidi, long_}  # kept whole, with the reason
    assert set(_validated(lake)["symbol"]) == {"S0000", "S0001"}
    assert symbol_problem(bidi) and symbol_problem(long_) and symbol_problem("S0000") is None
    names = ["f0"]
    ts = pd.date_range("2024-03-08 14:30", periods=30, freq="min", tz="UTC")
    frame = pd.concat([pd.DataFrame({"symbol": s, "ts": ts, "f0": 1.0}) for s in ("AAA", bidi)], ignore_index=True)
    assert list(latest_windows(frame, names)["symbol"]) == ["AAA"]  # the online store never holds it


def test_a_file_without_newlines_is_refused_before_parsing(tmp_path, lake):
    from hfcast.data.ingest import MAX_LINE_BYTES

    path = tmp_path / "one-line.csv"
    path.write_bytes(b"symbol,ts,bid,ask,bid_size,ask_size" + b",x" * (MAX_LINE_BYTES // 2 + 10))
    with pytest.raises(IngestError, match=r"line 1 is [\d,]+ bytes long.*no newline at all") as err:
        ingest([str(path)], "bbo", lake, progress=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(app, ["ingest", str(path), "--format", "bbo", "--lake", lake.url, "--no-progress"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and lines[-2].startswith("error: ") and "no newline" in lines[-2], res.output


@pytest.mark.parametrize("header", ["symbol,ts,bid,ask,bid_size,ask_size,bid", "symbol,ts,bid,ask,bid_size,ask_size,BID"])
def test_duplicate_column_names_are_refused(tmp_path, lake, header):
    path = tmp_path / "dup.csv"
    path.write_text(header + "\nA,2024-03-08 09:30,1,2,3,4,5\n")
    with pytest.raises(IngestError, match=r"column .* appears more than once") as err:
        ingest([str(path)], "bbo", lake, progress=False)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content, fmt, match", [
    (b"\x00\x01garbage\xff\xfe\n\x00", "bbo", "cannot parse"),
    (b"symbol,ts,bid,ask\nA,2024-01-02 09:30,1,2\n", "bbo", r"missing column\(s\) \['bid_size', 'ask_size'\]"),
    (b"symbol,ts,close\nA,2024-01-02 09:30,1\nA,not-a-time,2\n", "ohlcv", "unparseable timestamp.*row 1.*not-a-time"),
    (b"symbol,ts,close\nA,2024-01-02 09:30,1\nA,2024-01-02T09:31:00Z,2\n", "ohlcv", "mixes timestamps"),
    (b'a,b\n"unterminated,1\n', "trades", "cannot parse"),
])
def test_unparseable_file_names_file_and_problem(tmp_path, lake, content, fmt, match):
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    with pytest.raises(IngestError, match=match) as err:
        ingest([str(path)], fmt, lake, progress=False)
    assert str(path) in str(err.value)
    assert not lake.dates("raw")  # nothing half-written


def test_lobster_mismatched_files_fail_naming_them(tmp_path, sim, lake):
    msg_path, book_path = write_lobster(sim[DATES[0]].iloc[:3], tmp_path)
    pd.read_csv(book_path, header=None).iloc[:-1].to_csv(book_path, header=False, index=False)
    with pytest.raises(IngestError, match="rows but") as err:
        ingest([str(msg_path), str(book_path)], "lobster", lake, progress=False)
    assert msg_path.name in str(err.value) and book_path.name in str(err.value)
    with pytest.raises(IngestError, match="no orderbook file"):
        ingest([str(msg_path)], "lobster", lake, progress=False)


def test_aggregate_keeps_empty_side_nan_and_carries_quotes():
    ts = pd.to_datetime(["2024-01-02 14:30:01", "2024-01-02 14:32:10"], utc=True).as_unit("us")
    q = pd.DataFrame({"symbol": "A", "ts": ts, "bid": [10.0, np.nan], "ask": [10.02, 10.04],
                      "bid_size": [1.0, np.nan], "ask_size": [1.0, 2.0]})
    t = pd.DataFrame({"symbol": "A", "ts": ts[:1], "price": [10.01], "size": [5.0]})
    out = aggregate_ticks(t, q)
    assert out["ts"].tolist() == list(pd.date_range("2024-01-02 14:30", periods=3, freq="min", tz="UTC"))
    assert out["bid"].tolist()[:2] == [10.0, 10.0] and np.isnan(out["bid"].iloc[2])  # carried, then empty
    assert out["volume"].tolist() == [5.0, 0.0, 0.0] and list(out.columns) == BAR_COLUMNS


def test_cli_help_ingest_and_errors(tmp_path, sim):
    runner = CliRunner()
    for cmd in (["ingest", "--help"], ["validate", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and "--lake" in res.output
    bars = sim[DATES[0]]
    bars.to_csv(tmp_path / "bbo.csv", index=False)
    lake_url = f"file://{tmp_path}/lake"
    res = runner.invoke(app, ["ingest", str(tmp_path / "bbo.csv"), "--format", "bbo", "--lake", lake_url, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "clean" in res.output and str(len(bars)) in res.output
    res = runner.invoke(app, ["validate", "--lake", lake_url, "--dates", DATES[0], "--no-progress"])
    assert res.exit_code == 0 and "crossed_quote" in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path / "nope.csv"), "--format", "bbo", "--lake", lake_url])
    assert res.exit_code == 2 and "nope.csv" in res.output and "no such file" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path / "bbo.csv"), "--format", "xyz", "--lake", lake_url])
    assert res.exit_code == 2 and "unknown format" in res.output
    res = runner.invoke(app, ["validate", "--lake", lake_url, "--dates", "2031-01-01"])
    assert res.exit_code == 2 and "2031-01-01" in res.output

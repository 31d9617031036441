"""Real vendor layouts on four markets, end to end: ingest -> validate -> featurize -> windows.

Each case writes a file the way a vendor ships it, ingests it on its market calendar and checks:
input rows = clean + quarantined, the trade dates, the session minutes of every date, labels
missing exactly where their horizon would cross that day's close (or a lunch break), and no
window across a session boundary.

(a) European index futures, 09:00-22:00 Berlin (custom session), Date and Time columns, bar-END
    stamps, a header one name short, over the March weeks when US and EU daylight saving differ;
(b) CME Globex E-mini trade ticks (epoch nanoseconds) from Sunday 17:00 Chicago through Martin
    Luther King day (an early close at 12:00 Chicago);
(c) NYSE minute BBO over Thanksgiving (closed) and the day after (early close 13:00);
(d) Tokyo (XTKS) BBO with its lunch break and a holiday, offsets in the stamps.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hfcast.cli import app
from hfcast.data.ingest import IngestError, ingest
from hfcast.data.schema import LABEL_HORIZONS
from hfcast.features.engine import load_features, read_feature_set, run_featurize
from hfcast.features.windows import LOOKBACK, build_windows
from hfcast.market import Market
from hfcast.storage import Lake

EU_SPEC = {"calendar": "custom", "tz": "Europe/Berlin", "open": "09:00", "close": "22:00",
           "holidays": ["2024-03-29", "2024-04-01"]}
EU_DATES = ["2024-03-08", "2024-03-11", "2024-03-28", "2024-04-02"]  # 03-11, 03-28: US on DST, EU not yet
_MIN = pd.Timedelta(minutes=1)


def _walk(n: int, seed: int, p0: float = 100.0, tick: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round((p0 + np.cumsum(rng.normal(0, 0.3, n))) / tick) * tick


# --- the shared checks -----------------------------------------------------------------------

def _check_counts(summary: dict, expected_clean: dict[str, int], expected_quarantine: dict[str, dict[str, int]]) -> None:
    """input = clean + quarantined per date; the dates, clean counts and reasons are the expected ones."""
    per = {r["date"]: r for r in summary["per_date"]}
    assert sorted(per) == sorted(set(expected_clean) | set(expected_quarantine))
    for d, r in per.items():
        assert r["input_rows"] == r["clean_rows"] + r["quarantined_rows"], d
        assert r["clean_rows"] == expected_clean.get(d, 0), (d, r["reasons"])
        got = {k: v for k, v in r["reasons"].items() if v}
        assert got == expected_quarantine.get(d, {}), d


def _segment_starts(grid: pd.DatetimeIndex) -> np.ndarray:
    return 1 + np.flatnonzero(np.diff(grid.asi8) != 60_000_000)


def _check_features(lake: Lake, mk: Market, minutes: dict[str, int], n_symbols: int) -> pd.DataFrame:
    """Every symbol-date on that date's session grid; labels NaN exactly where they cross a close/break."""
    run_featurize(lake, dates=list(minutes), progress=False, market=mk)
    frames = []
    for d, n in minutes.items():
        f = lake.read("features", d)
        grid = mk.minutes_utc(d)
        assert len(grid) == n and len(f) == n * n_symbols, d
        starts = _segment_starts(grid)
        t = np.arange(n)
        for _, g in f.groupby("symbol"):
            assert (pd.DatetimeIndex(g["ts"]) == grid).all()
            for label, h in LABEL_HORIZONS.items():
                crosses = t + h >= n
                for b in starts:
                    crosses |= (t < b) & (t + h >= b)
                assert np.array_equal(g[label].isna().to_numpy(), crosses), (d, label)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def _check_windows(frame: pd.DataFrame, lake: Lake, mk: Market) -> None:
    """Every window is one symbol, one trade date, 30 consecutive minutes; none is missing."""
    names = read_feature_set(lake)["features"]
    wa = build_windows(frame, names, market=mk)
    ts = pd.DatetimeIndex(wa.keys["ts"]).as_unit("us").asi8
    sym = wa.keys["symbol"].to_numpy()
    day = mk.trade_date(wa.keys["ts"])
    rows = wa.ends[:, None] - np.arange(LOOKBACK - 1, -1, -1)[None, :]
    assert (sym[rows] == sym[rows[:, :1]]).all() and (day[rows] == day[rows[:, :1]]).all()
    assert (np.diff(ts[rows], axis=1) == 60_000_000).all()
    expected = 0
    for (_, d), g in wa.keys.groupby(["symbol", pd.Series(day, index=wa.keys.index)]):
        seg = np.split(np.arange(len(g)), _segment_starts(pd.DatetimeIndex(g["ts"])))
        expected += sum(max(0, len(s) - (LOOKBACK - 1)) for s in seg)
    assert len(wa) == expected > 0


# --- (a) European futures, Date + Time, bar-end stamps, short header --------------------------

def _eu_file(path, mk: Market) -> None:
    """FDAX minute bars as a vendor ships them: Berlin local Date;Time of the bar END, no symbol,
    and an unnamed open-interest field at the end of every row."""
    lines = ["Date,Time,Open,High,Low,Close,Volume"]
    for k, d in enumerate(EU_DATES):
        grid = mk.minutes_utc(d)
        close = _walk(len(grid), k, 17500.0, 0.5)
        for i, start in enumerate(grid):
            end = (start + _MIN).tz_convert("Europe/Berlin")
            c = close[i]
            price = -1.0 if (d == EU_DATES[0] and i == 100) else c  # one bad print
            lines.append(f"{end:%Y-%m-%d},{end:%H:%M:%S},{c},{c + 1},{c - 1},{price},{10 + i % 7},{150000 + i}")
    lines.append("2024-03-08,22:01:00,17500,17501,17499,17500,5,150000")   # after the close
    lines.append("2024-03-29,10:00:00,17500,17501,17499,17500,5,150000")   # Good Friday: closed
    path.write_text("\n".join(lines) + "\n")


def test_european_futures_date_time_bar_end(tmp_path):
    mk = Market(EU_SPEC)
    assert [mk.session(d).n_minutes for d in EU_DATES] == [780] * 4
    src = tmp_path / "FDAX_1min.csv"
    _eu_file(src, mk)
    lake = Lake(f"file://{tmp_path}/lake")
    summary = ingest([str(src)], "ohlcv", lake, column_map={"ts": "Date+Time"}, symbol="FDAX",
                     market=mk, stamp="end", progress=False)
    assert any("unnamed_extra" in n for n in summary["notes"])  # the short header is handled AND said
    _check_counts(summary, {d: 780 for d in EU_DATES} | {EU_DATES[0]: 779},
                  {EU_DATES[0]: {"nonpositive_price": 1, "outside_session": 1}, "2024-03-29": {"closed_date": 1}})
    # bar-end 09:01 Berlin is the 09:00 bar: 08:00 UTC in winter, 07:00 UTC from 31 March
    first = {d: lake.read("validated", d)["ts"].min() for d in EU_DATES}
    assert first["2024-03-11"] == pd.Timestamp("2024-03-11 08:00", tz="UTC")
    assert first["2024-04-02"] == pd.Timestamp("2024-04-02 07:00", tz="UTC")
    frame = _check_features(lake, mk, {d: 780 for d in EU_DATES}, 1)
    _check_windows(frame, lake, mk)


def test_european_file_without_stamp_end_is_diagnosed(tmp_path):
    """Forgetting --stamp end shifts every bar one minute late: the report says so."""
    mk = Market(EU_SPEC)
    src = tmp_path / "FDAX_1min.csv"
    _eu_file(src, mk)
    lake = Lake(f"file://{tmp_path}/lake")
    summary = ingest([str(src)], "ohlcv", lake, column_map={"ts": "Date+Time"}, symbol="FDAX",
                     market=mk, progress=False)
    text = summary["diagnoses"]["2024-03-11"]
    assert "1 minutes after the session" in text and "--stamp end" in text
    assert json.loads((tmp_path / "lake" / "reports" / "validate" / "date=2024-03-11.json").read_text())["diagnosis"] == text


def test_european_file_read_in_the_wrong_time_zone_is_diagnosed(tmp_path):
    mk = Market(EU_SPEC)
    src = tmp_path / "FDAX_1min.csv"
    _eu_file(src, mk)
    lake = Lake(f"file://{tmp_path}/lake")
    summary = ingest([str(src)], "ohlcv", lake, column_map={"ts": "Date+Time"}, symbol="FDAX", tz="UTC",
                     market=mk, stamp="end", progress=False)
    assert "60 minutes after the session" in summary["diagnoses"]["2024-03-11"]  # 09:00 UTC = 10:00 Berlin
    assert "check --tz" in summary["diagnoses"]["2024-03-11"]


def test_european_futures_through_the_cli(tmp_path):
    """The exact command of docs/MARKET_DATA.md, with the custom session in params.yaml."""
    mk = Market(EU_SPEC)
    src = tmp_path / "FDAX_1min.csv"
    _eu_file(src, mk)
    (tmp_path / "params.yaml").write_text(
        "market:\n  calendar: custom\n  tz: Europe/Berlin\n  open: '09:00'\n  close: '22:00'\n"
        "  holidays: ['2024-03-29', '2024-04-01']\n")
    lake = f"file://{tmp_path}/lake"
    env = {"HFCAST_PARAMS": str(tmp_path / "params.yaml"), "HFCAST_HOME": str(tmp_path / ".hfcast")}
    res = CliRunner().invoke(app, ["ingest", str(src), "--format", "ohlcv", "--map", "ts=Date+Time",
                                   "--stamp", "end", "--symbol", "FDAX", "--lake", lake, "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    assert "unnamed_extra" in res.output
    res = CliRunner().invoke(app, ["featurize", "--lake", lake, "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    assert len(load_features(Lake(lake), EU_DATES)) == 4 * 780


# --- (b) CME Globex E-mini trades through a US holiday ----------------------------------------

def test_cme_globex_ticks_from_sunday_evening_through_mlk_day(tmp_path):
    mk = Market("CME_Equity")
    days = {"2024-01-15": 1140, "2024-01-16": 1380}  # MLK: 17:00 Sunday -> 12:00 Monday Chicago
    assert {d: mk.session(d).n_minutes for d in days} == days
    assert mk.session("2024-01-15").open_utc == pd.Timestamp("2024-01-14 23:00", tz="UTC")  # Sunday 17:00 CST
    rows = []
    for d in days:
        for k, start in enumerate(mk.minutes_utc(d)):
            for sec, px in ((5, 4800 + (k % 40) * 0.25), (35, 4800 + ((k + 3) % 40) * 0.25)):
                rows.append(((start + pd.Timedelta(seconds=sec)).value, px, 1 + k % 4))
    stray = [pd.Timestamp("2024-01-15 12:30", tz="America/Chicago"),   # after the holiday's early close
             pd.Timestamp("2024-01-16 16:30", tz="America/Chicago")]   # the daily maintenance hour
    rows += [(t.tz_convert("UTC").value, 4800.0, 1) for t in stray]
    rows.append((rows[10][0] + 1, 4801.0, 0))                           # a zero-size print
    df = pd.DataFrame(rows, columns=["ts_event", "price", "size"]).sort_values("ts_event")
    df.insert(0, "symbol", "ESH4")
    src = tmp_path / "glbx-mdp3-trades.csv"
    df.to_csv(src, index=False)
    lake = Lake(f"file://{tmp_path}/lake")
    summary = ingest([str(src)], "trades", lake, column_map={"ts": "ts_event"}, market=mk, progress=False)
    assert summary["ticks_quarantined"] == 1
    _check_counts(summary, days, {d: {"outside_session": 1} for d in days})
    # the Sunday-evening minutes belong to Monday's session, not to a date of their own
    sunday = lake.read("validated", "2024-01-15")["ts"].min()
    assert sunday == pd.Timestamp("2024-01-14 23:00", tz="UTC") and "2024-01-14" not in summary["dates"]
    frame = _check_features(lake, mk, days, 1)
    _check_windows(frame, lake, mk)


# --- (c) NYSE BBO over Thanksgiving and the early close ---------------------------------------

def test_nyse_bbo_thanksgiving_and_early_close(tmp_path):
    mk = Market("XNYS")
    dates = ["2024-11-27", "2024-11-28", "2024-11-29", "2024-12-02"]
    assert not mk.is_session("2024-11-28") and mk.session("2024-11-29").n_minutes == 210
    rows = []
    for k, d in enumerate(dates):  # the vendor writes 09:30-16:00 every weekday, holiday or not
        local = pd.date_range(f"{d} 09:30", periods=390, freq="min")
        for s, sym in enumerate(("AAPL", "MSFT")):
            mid = _walk(390, 10 * k + s, 190.0 + 200 * s, 0.01)
            for i, t in enumerate(local):
                rows.append((sym, int(t.tz_localize("America/New_York").value // 1_000_000), mid[i] - 0.01,
                             mid[i] + 0.01, 300, 200 + i))
    df = pd.DataFrame(rows, columns=["Symbol", "Timestamp", "BidPrice", "AskPrice", "BidSize", "AskSize"])
    src = tmp_path / "taq_nbbo_1min.csv"
    df.to_csv(src, index=False)
    lake = Lake(f"file://{tmp_path}/lake")
    cmap = {"ts": "Timestamp", "bid": "BidPrice", "ask": "AskPrice", "bid_size": "BidSize", "ask_size": "AskSize"}
    summary = ingest([str(src)], "bbo", lake, column_map=cmap, market=mk, epoch_unit=None, progress=False)
    _check_counts(summary, {"2024-11-27": 780, "2024-11-29": 420, "2024-12-02": 780},
                  {"2024-11-28": {"closed_date": 780}, "2024-11-29": {"outside_session": 360}})
    frame = _check_features(lake, mk, {"2024-11-27": 390, "2024-11-29": 210, "2024-12-02": 390}, 2)
    _check_windows(frame, lake, mk)
    early = frame[frame["ts"].dt.strftime("%Y-%m-%d") == "2024-11-29"]
    assert early["minutes_to_close"].min() == 0 and early["minutes_to_close"].max() == 209


# --- (d) Tokyo with a lunch break ----------------------------------------------------------------

def test_tokyo_lunch_break_and_holiday(tmp_path):
    mk = Market("XTKS")
    dates = ["2024-03-19", "2024-03-20", "2024-03-21"]  # 03-20: Vernal Equinox Day (closed)
    assert not mk.is_session("2024-03-20") and mk.session("2024-03-19").n_minutes == 300
    rows = []
    for k, d in enumerate(dates):  # 09:00-15:00 Tokyo written straight through the 11:30-12:30 lunch
        local = pd.date_range(f"{d} 09:00", periods=360, freq="min", tz="Asia/Tokyo")
        mid = _walk(360, k, 3000.0, 1.0)
        rows += [(t.isoformat(), "7203", mid[i] - 1, mid[i] + 1, 1000, 800) for i, t in enumerate(local)]
    df = pd.DataFrame(rows, columns=["datetime", "code", "bid", "ask", "bid_qty", "ask_qty"])
    src = tmp_path / "jpx_7203.csv"
    df.to_csv(src, index=False)
    lake = Lake(f"file://{tmp_path}/lake")
    summary = ingest([str(src)], "bbo", lake, column_map={"ts": "datetime", "symbol": "code",
                                                          "bid_size": "bid_qty", "ask_size": "ask_qty"},
                     market=mk, progress=False)
    _check_counts(summary, {"2024-03-19": 300, "2024-03-21": 300},
                  {"2024-03-19": {"outside_session": 60}, "2024-03-20": {"closed_date": 360},
                   "2024-03-21": {"outside_session": 60}})
    frame = _check_features(lake, mk, {"2024-03-19": 300, "2024-03-21": 300}, 1)
    _check_windows(frame, lake, mk)


# --- refusals name the file, the row and the fix ---------------------------------------------

@pytest.mark.parametrize("content, match", [
    (b"Date,Time,Close\n2024-03-08,09:01,1,2,3\n", r"header names 3 fields .* row 1 has 5; fix"),
    (b"ts,close\n2024-13-45 09:01,1\n", r"row 0: '2024-13-45 09:01'; fix"),
    (b"ts,close\n5,1\n", r"fit no epoch unit.*fix: give --epoch-unit"),
])
def test_layout_refusals_name_file_row_and_fix(tmp_path, content, match):
    src = tmp_path / "vendor.csv"
    src.write_bytes(content)
    with pytest.raises(IngestError, match=match) as err:
        ingest([str(src)], "ohlcv", Lake(f"file://{tmp_path}/lake"), symbol="X", progress=False)
    assert str(src) in str(err.value)


def test_epoch_units_are_read_from_their_magnitude(tmp_path):
    t0 = pd.Timestamp("2024-01-02 14:30", tz="UTC")
    for unit, scale in (("s", 1e-9), ("ms", 1e-6), ("us", 1e-3), ("ns", 1.0)):
        lake = Lake(f"file://{tmp_path}/{unit}")
        src = tmp_path / f"{unit}.csv"
        src.write_text(f"ts,close\n{int(t0.value * scale)},10\n{int((t0 + _MIN).value * scale)},10.5\n")
        ingest([str(src)], "ohlcv", lake, symbol="X", progress=False)
        assert lake.read("validated", "2024-01-02")["ts"].tolist() == [t0, t0 + _MIN], unit

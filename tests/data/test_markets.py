"""The market calendar (hfcast.market) and the stages that follow it: simulator, look-ahead, featurize."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from hfcast.data import schema
from hfcast.data.simulator import SimConfig, iter_days, write_synth
from hfcast.data.validate import run_validate
from hfcast.features.catalog import feature_names
from hfcast.features.engine import featurize_frame, run_featurize
from hfcast.market import Market, get_market
from hfcast.storage import Lake

EU = {"calendar": "custom", "tz": "Europe/Berlin", "open": "09:00", "close": "22:00"}


# --- the calendar itself ---------------------------------------------------------------------

def test_xnys_holidays_early_closes_and_dst():
    m = Market("XNYS")
    assert m.sessions("2024-11-25", "2024-12-03") == ["2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29",
                                                      "2024-12-02", "2024-12-03"]
    open_, close, n = m.session("2024-11-29")
    assert (open_, close, n) == (pd.Timestamp("2024-11-29 14:30", tz="UTC"), pd.Timestamp("2024-11-29 18:00", tz="UTC"), 210)
    assert m.session("2024-03-08").open_utc.hour == 14 and m.session("2024-03-11").open_utc.hour == 13  # US DST
    with pytest.raises(ValueError, match="2024-11-28 is not a trading session of the XNYS calendar"):
        m.session("2024-11-28")


def test_custom_session_follows_its_own_daylight_saving():
    m = Market(EU)
    # 11 March: New York already on summer time, Berlin not yet -> 08:00 UTC; 2 April: 07:00 UTC
    assert m.session("2024-03-11").open_utc == pd.Timestamp("2024-03-11 08:00", tz="UTC")
    assert m.session("2024-04-02").open_utc == pd.Timestamp("2024-04-02 07:00", tz="UTC")
    assert m.session("2024-03-11").n_minutes == 780 and not m.is_session("2024-03-09")


def test_overnight_custom_session_belongs_to_the_closing_date():
    m = Market({"calendar": "custom", "tz": "America/Chicago", "open": "17:00", "close": "16:00",
                "weekdays": [0, 1, 2, 3, 4], "holidays": ["2024-01-15"]})
    s = m.session("2024-01-16")
    assert s.open_utc == pd.Timestamp("2024-01-15 23:00", tz="UTC") and s.n_minutes == 23 * 60
    ts = pd.Series(pd.to_datetime(["2024-01-15 23:00", "2024-01-16 21:59", "2024-01-16 22:30"], utc=True))
    assert m.trade_date(ts).tolist() == ["2024-01-16", "2024-01-16", "2024-01-16"]
    assert m.minute_of_session(ts).tolist() == [0, 1379, -1]
    assert m.minutes_to_close(ts).tolist() == [1379, 0, -1]


def test_break_is_left_out_of_the_grid():
    m = Market("XTKS")
    grid = m.minutes_utc("2024-03-19")
    assert len(grid) == 300 and (grid[150] - grid[149]) == pd.Timedelta(minutes=61)
    lunch = pd.Series(pd.to_datetime(["2024-03-19 02:45"], utc=True))  # 11:45 Tokyo
    assert m.minute_of_session(lunch).tolist() == [-1] and not m.locate(lunch)[2].any()


def test_params_and_calendar_option():
    assert Market.from_params({"market": {"calendar": "XLON"}}).name == "XLON"
    assert Market.from_params({"market": EU}, calendar="XETR").name == "XETR"  # --calendar wins
    assert Market.from_params({"market": EU}).session("2024-03-11").n_minutes == 780
    assert get_market(None) is get_market("XNYS")
    with pytest.raises(ValueError, match="unknown market calendar 'NOPE'.*custom"):
        Market("NOPE").session("2024-01-02")
    with pytest.raises(ValueError, match=r"custom calendar needs \['open', 'close'\]"):
        Market({"calendar": "custom", "tz": "Asia/Kolkata"})


def test_settings_carry_the_calendar_as_a_value(tmp_path):
    """A component decodes its settings parameter: the settings carry that market (not XNYS), and
    neither building them nor a step's entry point changes anything process-wide: ``market=None``
    still means XNYS afterwards."""
    from components._common import step_settings
    from hfcast.config import get_settings, settings_from_param
    from hfcast.features.stream import SpanReader

    local = get_settings(env={"HFCAST_HOME": str(tmp_path)}, cwd=tmp_path)  # no params.yaml: XNYS
    text = local.with_(params={"market": {"calendar": "XLON"}}).to_param()  # what the pipeline passes
    env = {"HFCAST_HOME": str(tmp_path), "HFCAST_PARAMS": str(tmp_path / "none.yaml")}
    s = settings_from_param(text, env=env)
    assert s.market.name == "XLON" and s.market is s.with_(lake_url="file:///elsewhere").market
    open_, close, n = s.market.session("2024-03-05")  # London winter: 08:00-16:30 UTC
    assert (open_, close, n) == (pd.Timestamp("2024-03-05 08:00", tz="UTC"), pd.Timestamp("2024-03-05 16:30", tz="UTC"), 510)
    stamp = pd.Series([pd.Timestamp("2024-03-05 09:00", tz="UTC")])
    assert schema.minute_of_session(stamp, s.market).tolist() == [60]
    import os

    os.environ.update(env)
    try:
        assert step_settings(text).market.name == "XLON"
    finally:
        for k in env:
            os.environ.pop(k)
    frame = pd.DataFrame({"symbol": ["A"], "ts": [pd.Timestamp("2024-03-05 09:00", tz="UTC")]})
    assert schema.minute_of_session(stamp).tolist() == [-1]  # after the step: None is still New York
    assert SpanReader(frame=frame).market.name == "XNYS"
    assert SpanReader(frame=frame, market=s.market).market.name == "XLON"
    with pytest.raises(ValueError, match="custom calendar needs"):
        settings_from_param('{"params": {"market": {"calendar": "custom"}}}', env={"HFCAST_HOME": str(tmp_path)}).market


def test_two_calendars_in_one_process_do_not_mix(tmp_path):
    """Two settings with different calendars, used one after the other in one process, each get
    their own trade dates and embargo: nothing the first sets leaks into the second (the calendar is
    a value, there is no process-wide one to set)."""
    from hfcast.config import get_settings
    from hfcast.features.stream import SpanReader
    from hfcast.walkforward import WalkForwardConfig

    base = get_settings(env={"HFCAST_HOME": str(tmp_path)}, cwd=tmp_path)
    short = {"calendar": "custom", "tz": "Europe/Berlin", "open": "09:00", "close": "10:00"}  # 60-minute sessions
    tokyo, berlin, newyork = (base.with_(params={"market": m}) for m in ("XTKS", short, "XNYS"))
    ts = pd.to_datetime(["2024-03-05 01:00", "2024-03-05 15:00"], utc=True)  # Tokyo morning; New York midday
    frame = pd.DataFrame({"symbol": ["A", "A"], "ts": ts})
    assert SpanReader(frame=frame, market=tokyo.market).dates() == ["2024-03-05", "2024-03-06"]
    assert SpanReader(frame=frame, market=newyork.market).dates() == ["2024-03-04", "2024-03-05"]
    assert SpanReader(frame=frame, market=tokyo.market).dates() == ["2024-03-05", "2024-03-06"]  # unchanged by New York
    section = {"label_horizon_minutes": 120, "embargo_days": 1}
    with pytest.raises(ValueError, match=r"needs >= 2 day"):  # two 60-minute sessions for a 120-minute label
        WalkForwardConfig.from_params(section, berlin.market)
    assert WalkForwardConfig.from_params(section, newyork.market).market.name == "XNYS"  # one 390-minute session
    assert WalkForwardConfig.from_params({**section, "embargo_days": 2}, berlin.market).market is berlin.market
    with pytest.raises(ValueError, match="walkforward.market is not a walk-forward setting"):
        WalkForwardConfig.from_params({"market": "XLON"})
    # the lake of a project carries its calendar to what builds windows from a lake alone (backtest
    # baselines, attributions, the int8 guard); a bare Lake is XNYS
    from hfcast.storage import Lake

    assert Lake.from_settings(tokyo).market is tokyo.market and Lake(str(tmp_path)).market is None


def test_trading_age_does_not_count_closed_hours():
    m = Market("XNYS")
    ts = pd.to_datetime(["2024-11-29 17:59"], utc=True)  # the last minute before the early close
    age = m.trading_age_s(ts, pd.Timestamp("2024-12-02 14:31", tz="UTC"))  # Monday, one minute after the open
    assert age.tolist() == [120.0]


def test_a_market_travels_to_worker_processes():
    m = Market(EU)
    m.session("2024-03-11")
    assert pickle.loads(pickle.dumps(m)).session("2024-03-11") == m.session("2024-03-11")


# --- the simulator follows the calendar ---------------------------------------------------------

def test_simulator_skips_holidays_and_shortens_early_closes():
    days = {d: (bars, truth) for d, bars, truth in iter_days(SimConfig(n_symbols=2, n_days=4, start_date="2024-11-26", seed=5))}
    assert list(days) == ["2024-11-26", "2024-11-27", "2024-11-29", "2024-12-02"]  # Thanksgiving absent
    assert [len(b) // 2 for b, _ in days.values()] == [390, 390, 210, 390]
    bars, truth = days["2024-11-29"]
    assert bars["ts"].max() == pd.Timestamp("2024-11-29 17:59", tz="UTC") and not bars.isna().any(axis=None)
    minute = schema.minute_of_session(truth["ts"])
    assert truth["true_ret_60m"].isna().tolist() == (minute >= 150).tolist()
    assert truth["true_var_10m"].isna().tolist() == (minute >= 200).tolist()


def test_simulator_on_another_calendar():
    cfg = SimConfig(n_symbols=2, n_days=2, start_date="2024-03-28", seed=5, calendar="XLON")
    out = list(iter_days(cfg))
    assert [d for d, _, _ in out] == ["2024-03-28", "2024-04-02"]  # Good Friday, Easter Monday closed
    assert all(len(b) == 2 * 510 for _, b, _ in out)
    assert out[1][1]["ts"].min() == pd.Timestamp("2024-04-02 07:00", tz="UTC")  # 08:00 BST


# --- look-ahead on other calendars and on an early close ------------------------------------------

def _bars(m: Market, date: str, seed: int, n_symbols: int = 4) -> pd.DataFrame:
    grid = m.minutes_utc(date)
    n = len(grid)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_symbols):
        ticks = np.round(5000 + np.cumsum(rng.normal(0, 4, n))).clip(100)
        half = rng.choice([1, 1, 2, 3], n)
        bid, ask = (ticks - half) / 100, (ticks + half) / 100
        mid = (bid + ask) / 2
        vol = rng.poisson(500, n).astype(float)
        df = pd.DataFrame({"symbol": f"S{i}", "ts": grid, "bid": bid, "ask": ask,
                           "bid_size": rng.integers(1, 50, n) * 100.0, "ask_size": rng.integers(1, 50, n) * 100.0,
                           "last": np.where(rng.random(n) < 0.5, bid, ask), "volume": vol,
                           "trades": np.minimum(vol, rng.poisson(20, n)).astype(float),
                           "vwap": mid + rng.normal(0, 0.005, n), "mid_high": mid + 0.02, "mid_low": mid - 0.02})
        frames.append(df[rng.random(n) > 0.03])
    return schema.conform(pd.concat(frames, ignore_index=True))


def _perturb(bars: pd.DataFrame, after: np.ndarray, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = bars.copy()
    n = int(after.sum())
    jump = np.exp(rng.normal(0, 0.02, n))
    for c in ("bid", "ask", "last", "vwap", "mid_high", "mid_low"):
        out.loc[after, c] = out.loc[after, c].to_numpy() * jump
    for c in ("bid_size", "ask_size", "volume", "trades"):
        out.loc[after, c] = rng.integers(1, 5000, n).astype(float)
    return out[~(after & (rng.random(len(out)) < 0.1))].reset_index(drop=True)


@pytest.mark.parametrize("spec, day1, day2", [
    (EU, "2024-03-08", "2024-03-11"),              # a custom European session, 780 minutes
    ("XTKS", "2024-03-19", "2024-03-21"),         # a lunch break inside the session
    ("XNYS", "2024-11-27", "2024-11-29"),         # the early close
])
def test_features_are_causal_on_other_sessions(spec, day1, day2):
    m = Market(spec)
    _, state = featurize_frame(_bars(m, day1, 1), day1, market=m)
    b2 = _bars(m, day2, 2)
    base, _ = featurize_frame(b2, day2, state, market=m)
    n = m.session(day2).n_minutes
    assert len(base) == 4 * n
    minute = m.minute_of_session(base["ts"], day2)
    names = feature_names(True)
    moved = set()
    for t in (0, 29, 149, 150, n - 2):
        pert, _ = featurize_frame(_perturb(b2, m.minute_of_session(b2["ts"], day2) > t, t), day2, state, market=m)
        past = minute <= t
        for name in names:
            np.testing.assert_array_equal(pert.loc[past, name].to_numpy(), base.loc[past, name].to_numpy(),
                                          err_msg=f"{spec} {name!r} at minutes <= {t} moved (look-ahead)")
            if not np.array_equal(pert.loc[~past, name].to_numpy(), base.loc[~past, name].to_numpy(), equal_nan=True):
                moved.add(name)
    assert "past_ret_1m" in moved and "spread_bps" in moved  # the perturbation did reach the future
    assert base["minutes_to_close"].min() == 0 and base["minutes_to_close"].max() == n - 1


# --- featurize skips empty dates when it chooses the feature set ---------------------------------

def test_featurize_chooses_features_from_first_non_empty_date(tmp_path, caplog):
    lake = Lake(f"file://{tmp_path}/lake")
    summary = write_synth(SimConfig(n_symbols=2, n_days=2, start_date="2024-01-02", seed=3), lake, progress=False)
    d1, d2 = summary["dates"]
    for d in (d1, d2):  # an OHLCV source: no quotes
        raw = lake.read("raw", d)
        raw[["bid", "ask", "bid_size", "ask_size"]] = np.nan
        if d == d1:
            raw["ts"] = raw["ts"] + pd.Timedelta(hours=8)  # every row outside the session: nothing clean
        lake.write("raw", d, raw)
    run_validate(lake, progress=False, quotes_available=False)
    assert len(lake.read("validated", d1)) == 0
    with caplog.at_level(logging.WARNING):
        out = run_featurize(lake, progress=False)
    assert out["quotes_available"] is False and out["rows"] == 2 * 390  # the empty date adds no rows
    assert any(f"{d1} has no bars" in r.message for r in caplog.records)


# --- serving: market closed is not stale ---------------------------------------------------------

def test_serving_staleness_counts_trading_time_only():
    from serving.core import ForecastService, Limits
    from serving_fixtures import tiny_forecaster

    n_feat = 8
    friday = np.datetime64("2024-11-29T17:59:00", "us")  # the last minute before the 13:00 early close

    def lookup(symbols):
        return np.zeros((len(symbols), 30, n_feat), np.float32), np.array([friday] * len(symbols)), \
            [f"f{j}" for j in range(n_feat)]

    def at(when: str) -> ForecastService:
        now = pd.Timestamp(when, tz="UTC").value / 1e9
        return ForecastService(tiny_forecaster("tcn", n_feat), lookup, Limits(max_staleness_s=600), clock=lambda: now)

    from serving import validation as v

    req = v.ParsedRequest("v2", symbols=["AAA"])
    at("2024-12-02 14:30").windows(req)  # Monday's open: 60 s of trading age, not three days
    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"stale features.*'AAA': 660"):
        at("2024-12-02 14:40").windows(req)  # ten minutes into Monday's session it is


def test_trading_age_does_not_depend_on_what_the_session_table_held_before():
    """Ages are differences of one cumulative count: a table that first covered only recent days
    (the server's first request) must give the same age to an old stamp as a fresh one."""
    import pandas as pd

    from hfcast.market import Market

    old = pd.DatetimeIndex([pd.Timestamp("2024-01-02 19:59", tz="UTC")])
    now = pd.Timestamp("2024-11-29 04:51", tz="UTC")
    fresh = Market.from_params({}, "XNYS").trading_age_s(old, now)
    warmed = Market.from_params({}, "XNYS")
    warmed.trading_age_s(pd.DatetimeIndex([now - pd.Timedelta("1h")]), now)  # covers recent days only
    assert warmed.trading_age_s(old, now) == pytest.approx(fresh)
    assert fresh[0] > 200 * 6.5 * 3600  # about 230 sessions of 6.5 hours (early closes shorter)

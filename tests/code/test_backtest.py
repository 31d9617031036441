"""Backtest accounting by hand, no look-ahead, and the yardsticks on simulated data."""

from __future__ import annotations

import math
import re

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcast.backtest import (BacktestConfig, Day, backtest_days, gate_check, leg_weights, long_short_day, make_day,
                             summarize_long_short, summarize_vol, vol_target_day, write_outputs)
from hfcast.data.schema import session_minutes_utc

FEE = 1e-4  # 1 bp


def _bars(mids: dict[str, list[float]], spreads: dict[str, float], ts: pd.DatetimeIndex) -> pd.DataFrame:
    rows = []
    for s, m in mids.items():
        for t, mid in zip(ts, m):
            rows.append({"symbol": s, "ts": t, "bid": mid - spreads[s] / 2, "ask": mid + spreads[s] / 2})
    return pd.DataFrame(rows)


def _preds(values: dict[str, list[float]], ts: pd.DatetimeIndex) -> pd.DataFrame:
    rows = [{"symbol": s, "ts": t, "ret_60m_pred": v, "ret_60m_conf": 0.6, "rv_10m_pred": 0.001}
            for s, vals in values.items() for t, v in zip(ts, vals)]
    return pd.DataFrame(rows)


@pytest.fixture
def hand_day() -> Day:
    """Three symbols, five minutes; rebalances at minutes 0 and 2, flat at minute 4."""
    ts = session_minutes_utc("2024-01-02")[:5]
    mids = {"A": [100, 101, 102, 101, 103], "B": [50, 50, 49, 49.5, 50], "C": [20, 20.2, 20.1, 20, 19.8]}
    spreads = {"A": 0.02, "B": 0.04, "C": 0.02}
    preds = {"A": [0.01, 0, -0.01, 0, 0], "B": [-0.02, 0, 0.0, 0, 0], "C": [0.0, 0, 0.02, 0, 0]}
    return make_day("2024-01-02", _bars(mids, spreads, ts), _preds(preds, ts))


def test_long_short_accounting_matches_hand_computation(hand_day):
    cfg = BacktestConfig(rebalance=2, quantile=1 / 3, fee_bps=1.0)
    p = long_short_day(hand_day, hand_day.ret["model"], cfg)
    assert p["minute"].tolist() == [0, 2] and p["end_minute"].tolist() == [2, 4]
    # period 1: long A (+0.5), short B (-0.5), entered at minute 0, marked at minute 2
    gross1 = 0.5 * (102 / 100 - 1) - 0.5 * (49 / 50 - 1)
    cost1 = 0.5 * (0.01 / 100 + FEE) + 0.5 * (0.02 / 50 + FEE)
    # period 2: long C, short A: A goes +0.5 -> -0.5 (1.0 traded), B closed (0.5), C opened (0.5);
    # then everything is closed at minute 4 (A 0.5, C 0.5) at minute 4's half spread
    gross2 = 0.5 * (19.8 / 20.1 - 1) - 0.5 * (103 / 102 - 1)
    cost2 = (1.0 * (0.01 / 102 + FEE) + 0.5 * (0.02 / 49 + FEE) + 0.5 * (0.01 / 20.1 + FEE)
             + 0.5 * (0.01 / 103 + FEE) + 0.5 * (0.01 / 19.8 + FEE))
    np.testing.assert_allclose(p["gross"], [gross1, gross2], rtol=1e-12)
    np.testing.assert_allclose(p["cost"], [cost1, cost2], rtol=1e-12)
    np.testing.assert_allclose(p["net"], [gross1 - cost1, gross2 - cost2], rtol=1e-12)
    assert p["traded"].tolist() == [1.0, 3.0]

    s = summarize_long_short(p, cfg)
    net = np.array([gross1 - cost1, gross2 - cost2])
    assert s["periods_per_session"] == 2
    assert s["net_sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(252 * 2))
    assert s["hit_rate"] == (net > 0).mean()
    eq = np.cumprod(1 + net)
    assert s["max_drawdown"] == pytest.approx(max(0.0, 1 - eq[1] / max(1.0, eq[0])))
    assert s["turnover_per_day"] == 4.0


def test_leg_weights_equal_or_confidence_weighted():
    score = np.array([0.3, -0.1, 0.2, np.nan, -0.4, 0.0])
    ok = np.ones(6, bool)
    w = leg_weights(score, ok, quantile=0.4)  # 5 rankable -> 2 per leg
    np.testing.assert_allclose(w, [0.25, -0.25, 0.25, 0, -0.25, 0])
    conf = np.array([0.9, 0.6, 0.3, 0.5, 0.6, 0.5])
    wc = leg_weights(score, ok, 0.4, conf)
    np.testing.assert_allclose(wc[[0, 2]], [0.5 * 0.9 / 1.2, 0.5 * 0.3 / 1.2])
    assert wc.sum() == pytest.approx(0.0) and np.abs(wc).sum() == pytest.approx(1.0)
    assert not leg_weights(score, np.eye(6, dtype=bool)[0], 0.4).any()  # one name: flat


def test_a_forecast_that_ranks_nothing_holds_nothing():
    """The zero return (served without return skill) is one value for every name: no book on symbol
    order; names tied across the legs leave both, the ranked ones stay."""
    ok = np.ones(6, bool)
    assert not leg_weights(np.zeros(6), ok, 0.4).any()
    assert not leg_weights(np.zeros(6), ok, 0.4, conf=np.full(6, 0.5)).any()
    np.testing.assert_allclose(leg_weights(np.array([0.0, 0.0, 0.1, 0.0, -0.1, 0.0]), ok, 0.4),
                               [0, 0, 0.5, 0, -0.5, 0])
    np.testing.assert_allclose(leg_weights(np.array([0.2, 0.0, 0.1, 0.0, -0.1, 0.0]), ok, 0.4),  # no tie across
                               [0.25, -0.25, 0.25, 0, -0.25, 0])
    bars, preds, ts = _random_day()
    preds["ret_60m_pred"] = 0.0
    day = make_day("2024-01-03", bars, preds)
    p = long_short_day(day, day.ret["model"], BacktestConfig(rebalance=10, quantile=0.25, fee_bps=0.5))
    assert len(p) and (p["traded"] == 0).all() and (p["net"] == 0).all()
    s = summarize_long_short(p, BacktestConfig(rebalance=10, quantile=0.25, fee_bps=0.5))
    assert s["share_held"] == 0 and math.isnan(s["hit_rate"]) and math.isnan(s["net_sharpe"])
    assert s["max_drawdown"] == 0 and math.copysign(1, s["max_drawdown"]) == 1
    res = backtest_days([day], BacktestConfig(rebalance=10, quantile=0.25, fee_bps=0.5))
    assert any("ranks no name" in n for n in res.notes), res.notes
    g = gate_check(res, res)  # two zero-return forecasters: no Sharpe to compare, and the user is told why
    assert not g["passed"] and "flat long-short book" in g["reason"] and "vol_tracking_error" in g["reason"]
    assert gate_check(res, res, metric="vol_tracking_error")["passed"]
    # what a pipeline step logs: Kubeflow serializes metrics and metadata as protobuf Structs, which refuse NaN
    from google.protobuf import json_format, struct_pb2

    from hfcast.backtest import GatedBacktest

    gated = GatedBacktest(res, Path("."), g)
    assert gated.metrics() and all(math.isfinite(v) for v in gated.metrics().values())
    assert "ls_model_net_sharpe" not in gated.metrics() and "ls_zero_skill_net_sharpe" in gated.metrics()
    doc = struct_pb2.Struct()
    doc.update({**gated.metrics(), **gated.metadata()})
    assert json_format.MessageToDict(doc)["gate_value"] is None


def _random_day(seed: int = 0, S: int = 12, T: int = 120) -> tuple[pd.DataFrame, pd.DataFrame, pd.DatetimeIndex]:
    rng = np.random.default_rng(seed)
    ts = session_minutes_utc("2024-01-03")[:T]
    mids = {f"S{i:02d}": list(50 * np.exp(np.cumsum(rng.normal(0, 1e-3, T)))) for i in range(S)}
    spreads = {s: 0.01 * (1 + i % 3) for i, s in enumerate(mids)}
    bars = _bars(mids, spreads, ts)
    preds = _preds({s: list(rng.normal(0, 1e-3, T)) for s in mids}, ts)
    preds["rv_10m_pred"] = rng.uniform(0.002, 0.004, len(preds))
    return bars, preds, ts


def test_no_look_ahead_future_prices_and_forecasts_do_not_move_the_past():
    bars, preds, ts = _random_day()
    cut = ts[70]
    bars2, preds2 = bars.copy(), preds.copy()
    later = bars2["ts"] > cut
    shock = np.random.default_rng(9).uniform(0.5, 2.0, later.sum())
    bars2.loc[later, ["bid", "ask"]] = bars2.loc[later, ["bid", "ask"]].mul(shock, axis=0).to_numpy()
    preds2.loc[preds2["ts"] > cut, "ret_60m_pred"] *= -3.0
    preds2.loc[preds2["ts"] > cut, "rv_10m_pred"] *= 3.0
    a, b = make_day("2024-01-03", bars, preds), make_day("2024-01-03", bars2, preds2)
    cfg = BacktestConfig(rebalance=10, quantile=0.25, fee_bps=0.5, vol_hold=10)
    pa, pb = long_short_day(a, a.ret["model"], cfg), long_short_day(b, b.ret["model"], cfg)
    past = pa["end_minute"] <= 70
    assert past.sum() >= 5
    pd.testing.assert_frame_equal(pa[past], pb[past])
    assert not np.allclose(pa.loc[~past, "net"], pb.loc[~past, "net"])  # the perturbation did bite
    for t in range(0, 71):  # the positions decided up to the cut are the same
        np.testing.assert_array_equal(leg_weights(a.ret["model"][:, t], a.active[:, t], 0.25),
                                      leg_weights(b.ret["model"][:, t], b.active[:, t], 0.25))
    ha = vol_target_day(a, a.vol["model"], a.active, cfg, 252 * 390)
    hb = vol_target_day(b, b.vol["model"], b.active, cfg, 252 * 390)
    done_a, done_b = (h[h["minute"] + cfg.vol_hold <= 70].drop(columns="traded").reset_index(drop=True)
                      for h in (ha, hb))
    assert len(done_a) >= 5 * 12
    pd.testing.assert_frame_equal(done_a, done_b)


def test_vol_targeting_tracks_exactly_with_perfect_foresight_and_flags_a_bad_forecast():
    bars, preds, ts = _random_day(seed=3, S=5, T=100)
    day = make_day("2024-01-03", bars, preds)
    logmid = np.log(day.mid)
    realized = np.full(day.shape, np.nan)
    for t in range(day.shape[1] - 10):  # the realized vol of the next 10 minutes, known in hindsight
        realized[:, t] = np.sqrt(np.sum(np.diff(logmid[:, t:t + 11], axis=1) ** 2, axis=1))
    cfg = BacktestConfig(target_vol=0.15, vol_hold=10)
    mpy = 252 * day.shape[1]
    perfect = summarize_vol(vol_target_day(day, realized, day.active, cfg, mpy), cfg, mpy)
    assert perfect["tracking_error"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["realized_vol"] == pytest.approx(0.15) and perfect["share_beyond_1_5"] == 0.0
    low = summarize_vol(vol_target_day(day, realized / 2, day.active, cfg, mpy), cfg, mpy)
    assert low["median_ratio"] == pytest.approx(2.0) and low["share_beyond_1_5"] == 1.0
    assert low["tracking_error"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def sim_days():
    """A small simulated market; the 'model' is the oracle blurred by noise (partial skill)."""
    from hfcast.data.simulator import SimConfig, iter_days

    days = []
    rng = np.random.default_rng(5)
    for date, bars, truth in iter_days(SimConfig(n_symbols=40, n_days=4, seed=3)):
        preds = truth[["symbol", "ts"]].copy()
        sd = np.nanstd(truth["true_ret_60m"])
        preds["ret_60m_pred"] = truth["true_ret_60m"] + rng.normal(0, 1.5 * sd, len(truth))
        preds["ret_60m_conf"] = 0.55
        preds["rv_10m_pred"] = np.sqrt(truth["true_var_10m"]) * np.exp(rng.normal(0, 0.3, len(truth)))
        minute = np.tile(np.arange(390), 40)
        preds.loc[minute < 29, ["ret_60m_pred", "rv_10m_pred"]] = np.nan  # no 30-minute window yet
        days.append(make_day(date, bars, preds, truth))
    return days


def test_on_simulated_data_oracle_beats_zero_skill_net_and_the_model_lies_between(sim_days, tmp_path):
    cfg = BacktestConfig(rebalance=30, quantile=0.2, fee_bps=0.2)
    res = backtest_days(sim_days, cfg, "noisy-oracle")
    ls = res.long_short
    print({m: round(ls[m]["net_sharpe"], 2) for m in ls}, {m: round(ls[m]["gross_sharpe"], 2) for m in ls})
    assert res.minutes_per_session == 390
    assert ls["oracle"]["net_sharpe"] > ls["zero_skill"]["net_sharpe"]
    # a random book's Sharpe has a standard error of ~8 over 4 days: its sign is not tested, only
    # that skill ranks the books and that costs without skill lose money
    assert ls["oracle"]["gross_sharpe"] > ls["model"]["gross_sharpe"]
    assert ls["oracle"]["net_sharpe"] > ls["model"]["net_sharpe"]
    assert ls["zero_skill"]["net_sharpe"] < 0  # costs with no skill lose money
    vt = res.vol_target
    assert set(vt) == {"model", "oracle"} and vt["oracle"]["holds"] == vt["model"]["holds"]
    assert vt["oracle"]["tracking_error"] < vt["model"]["tracking_error"]
    paths = write_outputs(res, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert res.to_dict()["gate"] == {"metric": "net_sharpe", "value": ls["model"]["net_sharpe"]}


def test_gate_check_refuses_a_challenger_that_loses_economic_value(sim_days):
    cfg = BacktestConfig(rebalance=30)
    good = backtest_days(sim_days, cfg)
    worse_days = []
    for d in sim_days:
        flipped = Day(d.date, d.symbols, d.ts, d.mid, d.half_spread, ret={"model": -d.ret["model"]},
                      vol=d.vol, conf=d.conf, active=d.active)
        worse_days.append(flipped)
    bad = backtest_days(worse_days, cfg)
    assert gate_check(good, bad)["passed"] and not gate_check(bad, good)["passed"]
    assert gate_check(bad, good, margin=1e9)["passed"]
    with pytest.raises(ValueError, match="gate metric"):
        gate_check(good, bad, metric="profit")


def _periods_with_known_sharpe(seed: int, sharpe_ann: float, days: int, per_day: int = 13,
                               day_share: float = 0.3) -> pd.DataFrame:
    """Period returns whose annualised Sharpe is ``sharpe_ann`` by construction; a shock common
    to all periods of a day carries ``day_share`` of the variance (periods of a day are dependent,
    as in a real intraday book), so only a bootstrap over whole days covers honestly."""
    rng = np.random.default_rng(seed)
    sd = 1e-3
    mu = sharpe_ann / math.sqrt(252 * per_day) * sd
    r = (mu + rng.normal(0, sd * math.sqrt(day_share), (days, 1))
         + rng.normal(0, sd * math.sqrt(1 - day_share), (days, per_day))).ravel()
    dates = pd.bdate_range("2024-01-02", periods=days).strftime("%Y-%m-%d")
    return pd.DataFrame({"date": np.repeat(dates, per_day), "gross": r, "net": r, "cost": 0.0, "traded": 1.0,
                         "n_long": 1, "n_short": 1})


def test_day_block_bootstrap_interval_covers_the_true_sharpe_in_about_95_percent_of_seeds():
    from hfcast.backtest_ci import _ls_sums, _sharpe_from, day_block_ci

    true_sharpe, days, hits = 2.0, 120, []
    for seed in range(200):
        p = _periods_with_known_sharpe(seed, true_sharpe, days)
        sums = _ls_sums(p, sorted(p["date"].unique()))["net"]
        if seed == 0:  # the resampled statistic is empyrical's Sharpe when every day is drawn once
            assert _sharpe_from(sums.sum(axis=0), 252 * 13) == pytest.approx(
                summarize_long_short(p, BacktestConfig())["net_sharpe"], rel=1e-9)
        lo, hi = day_block_ci(lambda idx: _sharpe_from(sums[idx].sum(axis=-2), 252 * 13), days, seed=seed,
                              n_resamples=999)
        hits.append(lo <= true_sharpe <= hi)
    coverage = float(np.mean(hits))
    print(f"coverage of the 95% day-block interval over 200 seeds: {coverage:.3f}")
    assert 0.90 <= coverage <= 0.99


def test_short_backtest_warns_of_its_small_sample_and_reports_intervals(sim_days):
    res = backtest_days(sim_days, BacktestConfig(rebalance=30))
    assert any(n.startswith("small sample: only 4 independent day(s)") for n in res.notes)
    lo, hi = res.long_short["model"]["net_sharpe_ci"]
    assert lo < res.long_short["model"]["net_sharpe"] < hi
    assert {(d["book"], d["yardstick"]) for d in res.differences} == {
        ("long_short", "zero_skill"), ("long_short", "oracle"), ("vol_target", "oracle")}
    oracle = next(d for d in res.differences if d["yardstick"] == "oracle" and d["figure"] == "net_sharpe")
    assert oracle["difference"] == pytest.approx(res.long_short["model"]["net_sharpe"]
                                                 - res.long_short["oracle"]["net_sharpe"])
    long_enough = _periods_with_known_sharpe(1, 2.0, 60)
    from hfcast.backtest_ci import small_sample_notes

    assert small_sample_notes(long_enough["date"].nunique()) == []


def test_cli_tables_fit_100_columns_with_annual_return_cost_and_intervals(tmp_path, monkeypatch):
    """`hfcast backtest` on a small lake (bars, truth, prediction CSVs; no features: no HAR/EWMA)."""
    from typer.testing import CliRunner

    from hfcast.cli import app
    from hfcast.data.simulator import SimConfig, iter_days
    from hfcast.storage import Lake

    lake = Lake((tmp_path / "lake").as_uri())
    rng = np.random.default_rng(2)
    for date, bars, truth in iter_days(SimConfig(n_symbols=12, n_days=3, seed=4)):
        lake.write("raw", date, bars)
        lake.write("truth", date, truth)
        preds = truth[["symbol", "ts"]].assign(ret_60m_pred=truth["true_ret_60m"] + rng.normal(0, 1e-3, len(truth)),
                                               ret_60m_conf=0.55, rv_10m_pred=np.sqrt(truth["true_var_10m"]))
        path = tmp_path / "lake" / "predictions" / "hfcast" / "1" / f"date={date}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["backtest", "--model", "hfcast/1", "--lake", lake.url, "--out", str(tmp_path / "bt")])
    assert r.exit_code == 0, r.output
    print(r.output)
    lines = r.output.splitlines()
    assert max(map(len, lines)) <= 100
    assert "…" not in r.output  # no cell cut short
    for words in ("ann. ret", "cost bp/d", "net SR 95% CI", "model minus yardstick", "small sample: only 3"):
        assert words in " ".join(lines), words
    model_row = next(line for line in lines if line.strip().startswith("model ") and "%" in line)
    assert re.search(r"-?\d+\.\d% ", model_row)  # the annual return, in percent

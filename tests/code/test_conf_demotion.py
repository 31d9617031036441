"""A confidence flag that live dates contradict is demoted (hfcast.monitoring.rules.confidence):
the rule judges a date, K dates in a row demote without retraining, the decision log says why, and
the demoted calibrator serves the confidence as uninformative (constant, flag 0)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hfcast.calibration import Calibrator
from hfcast.monitoring.decision import NONE, RETRAIN, Checks, MonitorConfig, decide

CFG = MonitorConfig.of(consecutive=2, cooldown_dates=5, conf_ratio_max=1.1, conf_consecutive=3, conf_min_labels=100)
CONF = CFG.rule("conf")
DATES = [d.date().isoformat() for d in pd.bdate_range("2024-01-02", periods=10)]


def _checks(i, ret_ratio=1.0, rv_ratio=0.9, ret_flag=1.0, rv_flag=1.0, n=1000, drift=0.0):
    return Checks(date=DATES[i], version="1", drift_share=drift,
                  live={"n_labels": n, "ret_decile_ratio": ret_ratio, "rv_decile_ratio": rv_ratio},
                  measures={"conf": {"ret_flag": ret_flag, "rv_flag": rv_flag}})


def test_a_date_contradicts_only_a_flag_that_is_on():
    assert CONF.check(_checks(0, ret_ratio=1.3)).alarm is True
    assert CONF.targets(_checks(0, ret_ratio=1.3)) == ("ret",)
    assert CONF.targets(_checks(0, ret_ratio=1.3, rv_ratio=1.2)) == ("ret", "rv")
    assert CONF.check(_checks(0, ret_ratio=1.05)).alarm is False        # flat is not contradiction
    assert CONF.check(_checks(0, ret_ratio=1.3, ret_flag=0.0)).alarm is False  # rv holds, ret claimed nothing
    assert CONF.check(_checks(0, ret_ratio=9, ret_flag=0.0, rv_flag=0.0)).alarm is None  # nothing claimed
    assert CONF.check(_checks(0, ret_ratio=9, n=50)).alarm is None     # labels not matured
    assert CONF.check(Checks(date=DATES[0], version="1")).alarm is None


def test_the_summary_says_why_a_flag_was_not_judged_and_live_qlike_against_har_tod():
    assert CONF.summary(_checks(0, ret_flag=0.0, rv_flag=0.0)) == "confidence flags not judged (none claims information)"
    assert CONF.summary(_checks(0, n=50)) == "confidence flags not judged (fewer than 100 matured labels)"
    assert CONF.summary(_checks(0, ret_ratio=1.3)) == "confidence flags contradicted"
    assert CONF.summary(_checks(0)) == "confidence flags hold"
    perf = CFG.rule("perf")
    live = {"n_labels": 1000, "vol_qlike": 0.3441, "ret_ic": 0.0, "vol_qlike_ratio_har_tod": 0.9812}
    assert perf.summary(Checks(date=DATES[0], version="1", live=live)) == "live QLIKE 0.3441 (0.981x har_tod), IC 0.000"
    live.pop("vol_qlike_ratio_har_tod")
    assert perf.summary(Checks(date=DATES[0], version="1", live=live)) == "live QLIKE 0.3441, IC 0.000"


def test_k_contradicted_dates_demote_without_retraining():
    history: list[dict] = []
    for i in range(4):
        history.append(decide(history, _checks(i, ret_ratio=1.3), CFG))
    assert [r["conf_streak"] for r in history] == [1, 2, 3, 4]
    assert [bool(r.get("demote")) for r in history] == [False, False, True, True]
    assert all(r["action"] == NONE for r in history)  # a confidence is demoted, the forecast not retrained
    assert list(history[2]["demote"]) == ["ret"]
    assert "demoted" in history[2]["explanation"] and "1.300" in history[2]["explanation"]
    assert history[2]["drifted_dates"] == []


def test_a_broken_streak_demotes_nothing_and_drift_still_retrains():
    history: list[dict] = []
    for i, ratio in enumerate([1.3, 1.3, 0.9, 1.3, 1.3]):
        history.append(decide(history, _checks(i, ret_ratio=ratio), CFG))
    assert not any(r.get("demote") for r in history)
    both: list[dict] = []
    for i in range(3):
        both.append(decide(both, _checks(i, ret_ratio=1.3, drift=0.9), CFG))
    assert both[1]["action"] == RETRAIN and "demote" not in both[1]
    assert both[2]["demote"] and "demoted" in both[2]["explanation"]  # said beside the suppression


def _calibrator():
    rng = np.random.default_rng(0)
    n = 20000
    sig = np.exp(rng.normal(0, 0.5, n))
    mu = rng.normal(0, 0.3, n) * sig
    y = mu + sig * rng.standard_normal(n)
    lrv_sigma = np.exp(rng.normal(-1.2, 0.5, n))
    rv_hat = np.exp(rng.normal(-6, 0.3, n))
    rv = rv_hat * np.exp(lrv_sigma * rng.standard_normal(n))
    pred = {"ret_mu": mu, "ret_sigma": 0.5 * sig, "rv_hat": rv_hat, "lrv_sigma": 2.0 * lrv_sigma}
    return Calibrator().fit(pred, y, rv), pred


def test_a_demoted_calibrator_claims_nothing_and_the_bundle_is_untouched():
    cal, pred = _calibrator()
    assert cal.ret_informative  # the planted signal: validation found sign skill
    out = cal.apply(pred)
    assert np.ptp(out["ret_60m_conf"]) > 0
    demoted = cal.demote(["ret", "rv"])
    assert not demoted.ret_informative and not demoted.rv_informative
    d_out = demoted.apply(pred)
    assert np.all(d_out["ret_60m_conf"] == 0.5) and np.ptp(d_out["rv_10m_conf"]) == 0
    assert set(demoted.info_columns(3)["ret_60m_conf_informative"]) == {0.0}
    for col in ("ret_60m_pred", "rv_10m_pred", "ret_60m_lo", "rv_10m_hi"):  # the forecast itself is unchanged
        np.testing.assert_array_equal(d_out[col], out[col])
    assert cal.ret_informative  # a copy: the fitted maps are the same, only the claims differ
    maps = lambda c: {k: v for k, v in c.to_dict().items() if not k.endswith("_conf_informative")}  # noqa: E731
    assert maps(cal) == maps(demoted)
    with pytest.raises(ValueError, match="unknown confidence target"):
        cal.demote(["sharpe"])

"""Context-conditioned volatility confidence and time-of-day conformal intervals (hfcast.calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hfcast.calibration import Calibrator


def _synth(n: int, seed: int, hetero: bool):
    """Forecasts whose log error sd grows with the spread and at the open (hetero) or is constant;
    return errors are fat-tailed (t3) and twice as wide at the open either way."""
    rng = np.random.default_rng(seed)
    tod = rng.integers(0, 390, n).astype(float)
    spread = rng.uniform(1, 10, n)
    sd = (0.05 + 0.06 * spread) * np.where(tod < 30, 2.0, 1.0) if hetero else np.full(n, 0.35)
    rv = np.exp(rng.standard_normal(n) * sd)
    pred = {"ret_mu": rng.normal(0, 1e-3, n), "ret_sigma": np.full(n, 1e-2), "rv_hat": np.ones(n),
            "lrv_sigma": np.full(n, 0.35)}
    y = rng.standard_t(3, n) * 1e-2 * np.where(tod < 30, 2.0, 1.0)
    ctx = {"tod": tod, "spread_bps": spread, "jump_ratio": rng.uniform(0, 1, n), "log_volume": rng.normal(8, 1, n)}
    return pred, y, rv, ctx


def _decile_ratio(conf, err):
    order = np.argsort(conf + 1e-9 * np.random.default_rng(0).standard_normal(conf.size))
    k = conf.size // 10
    return err[order[-k:]].mean() / err[order[:k]].mean()


def test_context_confidence_discriminates_and_flags_itself():
    pred, y, rv, ctx = _synth(20000, 0, hetero=True)
    cal = Calibrator().fit(pred, y, rv, context=ctx)
    assert cal.rv_informative
    tp, ty, trv, tctx = _synth(20000, 1, hetero=True)
    out = cal.apply(tp, context=tctx)
    assert _decile_ratio(out["rv_10m_conf"], np.abs(trv - 1)) < 0.6
    within = (np.abs(trv - 1) <= 0.25).astype(float)
    assert abs(out["rv_10m_conf"].mean() - within.mean()) < 0.03
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.allclose(back.apply(tp, context=tctx)["rv_10m_conf"], out["rv_10m_conf"])
    assert cal.to_dict()["rv_conf_informative"] is True


def test_homogeneous_errors_are_flagged_uninformative_and_served_as_the_base_rate():
    pred, y, rv, ctx = _synth(20000, 2, hetero=False)
    pred["lrv_sigma"] = np.random.default_rng(9).uniform(0.2, 0.5, rv.size)  # a sigma that ranks nothing
    cal = Calibrator().fit(pred, y, rv, context=ctx)
    assert not cal.rv_informative and cal.info_columns(2)["rv_10m_conf_informative"].tolist() == [0.0, 0.0]
    assert cal.vol_sigma_ratio > 0.9
    within = (np.abs(rv - 1) <= 0.25).mean()
    tp, ty, trv, tctx = _synth(5000, 12, hetero=False)
    tp["lrv_sigma"] = np.random.default_rng(10).uniform(0.2, 0.5, trv.size)
    conf = cal.apply(tp, context=tctx)["rv_10m_conf"]
    assert np.ptp(conf) == 0 and conf[0] == cal.vol_base_rate == within  # one honest number for every row
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.apply(tp, context=tctx)["rv_10m_conf"], conf)
    # a calibrator saved before the base rate existed keeps serving its sigma-only map
    legacy = {k: v for k, v in cal.to_dict().items() if k not in ("vol_base_rate", "vol_sigma_ratio")}
    old = Calibrator.from_dict(legacy).apply(tp, context=tctx)["rv_10m_conf"]
    np.testing.assert_array_equal(old, cal.vol_conf(tp["lrv_sigma"]))


def test_a_sigma_that_ranks_errors_is_served_without_context():
    rng = np.random.default_rng(11)
    n = 20000
    ls = rng.uniform(0.05, 0.6, n)
    rv = np.exp(ls * rng.standard_normal(n))
    pred = {"ret_mu": rng.normal(0, 1e-3, n), "ret_sigma": np.full(n, 1e-2), "rv_hat": np.ones(n), "lrv_sigma": ls}
    cal = Calibrator().fit(pred, rng.normal(0, 1e-2, n), rv)
    assert cal.vol_ctx is None and cal.rv_informative and cal.vol_sigma_ratio < 0.5
    np.testing.assert_array_equal(cal.apply(pred)["rv_10m_conf"], cal.vol_conf(ls))


def test_tod_conformal_keeps_coverage_at_the_fat_tailed_open():
    pred, y, rv, ctx = _synth(20000, 3, hetero=True)
    cal = Calibrator().fit(pred, y, rv, context=ctx)
    tp, ty, trv, tctx = _synth(20000, 4, hetero=True)
    open_ = tctx["tod"] < 30
    for context in (tctx, None):
        out = cal.apply(tp, context=context)
        cov = (ty >= out["ret_60m_lo"]) & (ty <= out["ret_60m_hi"])
        if context is None:  # one pooled quantile under-covers the fat-tailed open
            assert cov[open_].mean() < 0.72
        else:
            assert abs(cov[open_].mean() - 0.8) < 0.04 and abs(cov.mean() - 0.8) < 0.02


def _lagging(n: int, seed: int):
    """A forecast that lags: the true level moved by a symmetric log shift d since the forecast,
    and a recent volatility estimate (park_5m) sees the shift with noise. The error grows with |d|
    in either direction, which only |z| or z^2 of the recent-vol ratio can rank."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 0.5, n)
    level = np.exp(d)  # true vol relative to the forecast (rv_hat = 1)
    rv = level * np.exp(rng.normal(0, 0.15, n))
    pred = {"ret_mu": rng.normal(0, 1e-3, n), "ret_sigma": np.full(n, 1e-2), "rv_hat": np.ones(n),
            "lrv_sigma": np.full(n, 0.5)}
    ctx = {"tod": rng.integers(0, 390, n).astype(float), "park_5m": level * np.exp(rng.normal(0, 0.2, n))}
    return pred, rng.normal(0, 1e-2, n), rv, ctx


def test_recent_volatility_ranks_a_lagging_forecast_in_either_direction():
    pred, y, rv, ctx = _lagging(20000, 5)
    cal = Calibrator().fit(pred, y, rv, context=ctx)
    tp, ty, trv, tctx = _lagging(20000, 6)
    err = np.abs(trv - 1)
    assert cal.rv_informative
    assert _decile_ratio(cal.apply(tp, context=tctx)["rv_10m_conf"], err) < 0.5
    # without the recent estimate there is nothing to rank by: flagged, and one base rate is served
    bare = {"tod": ctx["tod"]}
    cal0 = Calibrator().fit(pred, y, rv, context=bare)
    assert not cal0.rv_informative
    assert _decile_ratio(cal0.apply(tp, context={"tod": tctx["tod"]})["rv_10m_conf"], err) > 0.85


def test_a_context_model_fitted_on_fewer_columns_still_applies():
    """Bundles saved before the recent-volatility inputs hold a 12-column context model: it reads
    the first 12 columns of today's matrix, which are the same inputs in the same order."""
    pred, y, rv, ctx = _synth(20000, 7, hetero=True)
    cal = Calibrator().fit(pred, y, rv, context=ctx)
    d = cal.to_dict()
    vc = d["vol_ctx"]
    d["vol_ctx"] = {**vc, "mean": vc["mean"][:12], "std": vc["std"][:12], "coef": vc["coef"][:13]}
    old = Calibrator.from_dict(json.loads(json.dumps(d)))
    out_old, out_new = old.apply(pred, context=ctx)["rv_10m_conf"], cal.apply(pred, context=ctx)["rv_10m_conf"]
    # _synth has no recent-vol inputs: their columns are standardised to 0, so both agree
    assert np.allclose(out_old, out_new)


def test_decile_ratio_bound_accounts_for_clustered_errors():
    """A score that happens to line up with a few hours of large errors looks informative by its
    ratio alone; the cluster bootstrap sees that only a few independent hours carry it."""
    from hfcast.calibration import decile_ratio_bound, ranks_errors

    rng = np.random.default_rng(3)
    hours = np.repeat(np.arange(26), 200)                       # a validation span: 26 hours x 200 rows
    shock = np.exp(rng.normal(0, 0.6, 26))[hours]               # every row of an hour shares its level
    err = shock * np.abs(rng.normal(0, 0.3, hours.size))
    score = -np.log(shock) + rng.normal(0, 12.0, hours.size)    # a weak, hour-level signal
    ratio, hi = decile_ratio_bound(score, err, hours)
    assert ratio < 0.85 and not ranks_errors(ratio, hi)         # 26 hours cannot show it
    iid_ratio, iid_hi = decile_ratio_bound(score, err, np.arange(hours.size) // 20)  # clusters ignored
    assert iid_ratio == pytest.approx(ratio) and iid_hi < min(hi, 1.0)  # ignoring clusters, it would look significant
    noise = rng.normal(0, 1, hours.size)                        # a score that ranks nothing
    assert not ranks_errors(*decile_ratio_bound(noise, err, hours))
    tied = decile_ratio_bound(np.zeros(hours.size), err, hours)  # ties rank nothing
    assert tied[0] == 1.0 and np.isnan(tied[1]) and not ranks_errors(*tied)
    good = -err + rng.normal(0, 0.05, hours.size)               # a score that truly ranks the errors
    assert ranks_errors(*decile_ratio_bound(good, err, hours))
    # a ranking clear of 1 but worth a few percent of the error is not claimed (RV_MATERIAL)
    assert not ranks_errors(0.93, 0.97) and ranks_errors(0.85, 0.94) and not ranks_errors(0.99, float("nan"))

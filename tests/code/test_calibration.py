"""Calibrator: coverage and ECE on held-out heteroscedastic data, a low-variance return
confidence (one shrunk probit slope, cluster-robust), monotone maps, JSON round trip."""

import json

import numpy as np
import pytest

from hfcast import metrics as M
from hfcast.contracts import PRED_COLUMNS
from hfcast.calibration import Calibrator, IsotonicMap, SignProbit, pava
from hfcast.evaluate import ret_correct, rv_correct


def _synth(n, seed, signal=True):
    """Return with a weak signal and heteroscedastic noise; log-normal rv around a forecast."""
    rng = np.random.default_rng(seed)
    sig = np.exp(rng.normal(0, 0.5, n))          # true return noise scale, varies 5x
    mu = rng.normal(0, 0.3, n) * sig             # predicted mean
    y = (mu if signal else 0.0) + sig * rng.standard_normal(n)
    lrv_sigma = np.exp(rng.normal(-1.2, 0.5, n))
    rv_hat = np.exp(rng.normal(-6, 0.3, n))
    rv = rv_hat * np.exp(lrv_sigma * rng.standard_normal(n))
    # the model's sigmas are off by a constant factor: calibration must fix that
    pred = {"ret_mu": mu, "ret_sigma": 0.5 * sig, "rv_hat": rv_hat, "lrv_sigma": 2.0 * lrv_sigma}
    return pred, y, rv


def test_heldout_coverage_and_ece():
    pred, y, rv = _synth(20000, 0)
    cal = Calibrator().fit(pred, y, rv)
    tp, ty, trv = _synth(20000, 1)
    out = cal.apply(tp)
    assert set(out) == set(PRED_COLUMNS)
    assert M.coverage(out["ret_60m_lo"], out["ret_60m_hi"], ty) == pytest.approx(0.8, abs=0.015)
    assert M.coverage(out["rv_10m_lo"], out["rv_10m_hi"], trv) == pytest.approx(0.8, abs=0.015)
    assert M.ece(out["ret_60m_conf"], ret_correct(out["ret_60m_pred"], ty)) < 0.02
    assert M.ece(out["rv_10m_conf"], rv_correct(out["rv_10m_pred"], trv)) < 0.02
    # the true P(sign right) is Phi(|mu| / sig) = Phi(0.5 |mu| / ret_sigma): the calibrator must
    # pick the signal-to-noise score (|mu| alone ignores the 5x heteroscedasticity), slope ~0.5
    assert cal.ret_conf.score == "z"
    assert cal.ret_conf.a == pytest.approx(0.5, rel=0.15)
    # confidences carry information: the top decile is right more often than the bottom one
    dec = M.error_by_decile(out["rv_10m_conf"], np.abs(trv / out["rv_10m_pred"] - 1))
    assert dec["abs_err"].iloc[-1] < 0.6 * dec["abs_err"].iloc[0]
    miss = M.error_by_decile(out["ret_60m_conf"], 1 - ret_correct(out["ret_60m_pred"], ty))
    assert miss["abs_err"].iloc[-1] < 0.6 * miss["abs_err"].iloc[0]


def test_uninformative_forecast_gets_coin_flip_confidence():
    """When |mu| says nothing about the sign, the confidence must stay near 0.5 everywhere
    (a free isotonic map would invent steps from noise)."""
    pred, y, rv = _synth(5000, 5, signal=False)
    out = Calibrator().fit(pred, y, rv).apply(_synth(5000, 6, signal=False)[0])
    assert out["ret_60m_conf"].min() >= 0.5
    assert out["ret_60m_conf"].max() < 0.56


def test_biased_forecast_is_centered_by_its_own_validation_median():
    """A net that learned the training span's market drift as an intercept calls every sign the
    same way; the calibrator subtracts the median of its validation forecasts (no labels used)."""
    pred, y, rv = _synth(20000, 8)
    bias = 3.0 * np.std(pred["ret_mu"])
    biased = {**pred, "ret_mu": pred["ret_mu"] + bias}
    cal = Calibrator().fit(biased, y, rv)
    assert cal.ret_offset == pytest.approx(bias, abs=0.05 * bias)
    tp, ty, _ = _synth(20000, 9)
    out = cal.apply({**tp, "ret_mu": tp["ret_mu"] + bias})
    assert M.hit_rate(out["ret_60m_pred"], ty) > 0.55  # 0.5 when every call is "up"
    assert M.ece(out["ret_60m_conf"], ret_correct(out["ret_60m_pred"], ty)) < 0.02
    assert Calibrator().fit(pred, y, rv).ret_offset == 0.0  # an unbiased forecast is left alone
    raw = Calibrator(center_ret=False).fit(biased, y, rv)
    assert raw.ret_offset == 0.0 and Calibrator.from_dict(raw.to_dict()).ret_offset == 0.0


def test_clustered_hits_shrink_the_slope():
    """Rows that share one outcome (a market-wide minute) are one observation, not hundreds: the
    cluster-robust standard error is much larger and the slope is shrunk toward 0."""
    rng = np.random.default_rng(7)
    n_clusters, size = 24, 400
    clusters = np.repeat(np.arange(n_clusters), size)
    factor = rng.standard_normal(n_clusters)[clusters]            # shared market move
    level = np.exp(rng.normal(0, 0.7, n_clusters))[clusters]      # how bold the minute's calls are
    mu = level * np.sign(rng.standard_normal(n_clusters))[clusters] * np.exp(rng.normal(0, 0.1, clusters.size))
    y = factor + 0.05 * rng.standard_normal(clusters.size)
    hit = ret_correct(mu, y)
    s = np.abs(mu)
    naive = SignProbit.fit(s, hit, np.arange(s.size), score="abs_mu")
    robust = SignProbit.fit(s, hit, clusters, score="abs_mu")
    assert naive.a_ml == pytest.approx(robust.a_ml)                # same point estimate
    assert robust.se > 5 * naive.se
    assert robust.a <= robust.a_ml and robust.n_clusters == n_clusters
    # the Calibrator passes groups through
    pred = {"ret_mu": mu, "ret_sigma": np.ones_like(mu), "rv_hat": np.ones_like(mu), "lrv_sigma": np.full_like(mu, 0.3)}
    rv = np.exp(0.3 * rng.standard_normal(mu.size))
    cal = Calibrator().fit(pred, y, rv, groups=clusters)
    assert cal.ret_conf.n_clusters == n_clusters


def test_maps_are_monotone_and_probabilities():
    pred, y, rv = _synth(5000, 2)
    cal = Calibrator().fit(pred, y, rv)
    z = np.linspace(0, 5, 200)
    rc = cal.ret_conf(z)
    vc = cal.vol_conf(z)
    assert np.all(np.diff(rc) >= -1e-12) and np.all(np.diff(vc) <= 1e-12)
    assert rc[0] == pytest.approx(0.5) and rc.max() <= 1  # no call (|mu| = 0) is a coin flip
    assert vc.min() >= 0 and vc.max() <= 1


def test_pava_hand_example_and_ties():
    s, e, v = pava(np.array([1.0, 3.0, 2.0, 4.0]))
    assert list(v) == [1.0, 2.5, 4.0] and list(s) == [0, 1, 3] and list(e) == [0, 2, 3]
    m = IsotonicMap.fit(np.zeros(10), np.array([0, 1] * 5))  # all x tied: one value
    assert m(np.array([0.0]))[0] == pytest.approx(0.5)


def test_json_round_trip_identical_outputs():
    pred, y, rv = _synth(3000, 3)
    cal = Calibrator().fit(pred, y, rv)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.ret_conf == cal.ret_conf
    a, b = cal.apply(pred), back.apply(pred)
    for k in PRED_COLUMNS:
        np.testing.assert_array_equal(a[k], b[k])


def test_errors_named():
    pred, y, rv = _synth(100, 4)
    with pytest.raises(RuntimeError, match="before fit"):
        Calibrator().apply(pred)
    with pytest.raises(KeyError, match="lrv_sigma"):
        Calibrator().fit({k: v for k, v in pred.items() if k != "lrv_sigma"}, y, rv)
    with pytest.raises(ValueError, match="labelled validation rows"):
        Calibrator().fit(pred, np.full(100, np.nan), rv)
    with pytest.raises(ValueError, match="missing key"):
        Calibrator.from_dict({"level": 0.8})
    old = {"level": 0.8, "q_ret": 1.0, "q_rv": 1.0, "ret_conf": {"x": [0.0, 1.0], "y": [0.5, 0.6]},
           "vol_conf": {"x": [0.0], "y": [0.5]}}
    with pytest.raises(ValueError, match="old isotonic return-confidence map"):
        Calibrator.from_dict(old)
    with pytest.raises(ValueError, match="unknown return-confidence score"):
        Calibrator().fit(pred, y, rv, ret_scores=("sharpe",))
    with pytest.raises(ValueError, match="groups has 3 entries"):
        Calibrator().fit(pred, y, rv, groups=np.arange(3))


def test_pred_columns_match_model_base():
    from hfcast.models import base

    assert tuple(base.PRED_COLUMNS) == PRED_COLUMNS


def _flat(pred, rv, share, seed):
    """``share`` of the rows made flat (a 10 minutes in which the quote never left its tick)."""
    rv = rv.copy()
    rv[np.random.default_rng(seed).random(rv.size) < share] = 0.0
    return pred, rv


@pytest.mark.parametrize("share", [0.35, 0.6])
def test_a_volatility_interval_over_mostly_flat_spans_starts_at_zero_and_covers(share):
    """More than 20% flat 10-minute spans (a thinly traded or tick-bound symbol): no interval of
    positive bounds covers 80%, so the interval starts at 0 and its upper end is the one-sided
    conformal quantile; before, the fit raised and `hfcast train` stopped."""
    pred, y, rv = _synth(20000, 0)
    pred, rv = _flat(pred, rv, share, 1)
    cal = Calibrator().fit(pred, y, rv)
    assert cal.rv_lo_zero
    tp, ty, trv = _synth(20000, 2)
    tp, trv = _flat(tp, trv, share, 3)
    out = cal.apply(tp)
    assert np.all(out["rv_10m_lo"] == 0) and np.all(np.isfinite(out["rv_10m_hi"]))
    assert M.coverage(out["rv_10m_lo"], out["rv_10m_hi"], trv) == pytest.approx(0.8, abs=0.015)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.rv_lo_zero and np.array_equal(back.apply(tp)["rv_10m_hi"], out["rv_10m_hi"])


def test_a_few_flat_spans_keep_the_two_sided_interval():
    pred, y, rv = _synth(20000, 0)
    pred, rv = _flat(pred, rv, 0.05, 1)
    cal = Calibrator().fit(pred, y, rv)
    assert not cal.rv_lo_zero
    tp, ty, trv = _synth(20000, 2)
    tp, trv = _flat(tp, trv, 0.05, 3)
    out = cal.apply(tp)
    assert np.all(out["rv_10m_lo"] > 0)
    assert M.coverage(out["rv_10m_lo"], out["rv_10m_hi"], trv) == pytest.approx(0.8, abs=0.015)

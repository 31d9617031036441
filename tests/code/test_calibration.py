"""Calibrator: coverage and ECE on held-out heteroscedastic data, monotone maps, JSON round trip."""

import json

import numpy as np
import pytest

from hfcast import metrics as M
from hfcast.calibration import PRED_COLUMNS, Calibrator, IsotonicMap, pava
from hfcast.evaluate import ret_correct, rv_correct


def _synth(n, seed):
    """Return with a weak signal and heteroscedastic noise; log-normal rv around a forecast."""
    rng = np.random.default_rng(seed)
    sig = np.exp(rng.normal(0, 0.5, n))          # true return noise scale, varies 5x
    mu = rng.normal(0, 0.3, n) * sig             # predicted mean
    y = mu + sig * rng.standard_normal(n)
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
    # confidences carry information: the top decile is right more often than the bottom one
    dec = M.error_by_decile(out["rv_10m_conf"], np.abs(trv / out["rv_10m_pred"] - 1))
    assert dec["abs_err"].iloc[-1] < 0.6 * dec["abs_err"].iloc[0]


def test_maps_are_monotone_and_probabilities():
    pred, y, rv = _synth(5000, 2)
    cal = Calibrator().fit(pred, y, rv)
    z = np.linspace(0, 5, 200)
    rc = cal.ret_conf(z)
    vc = cal.vol_conf(z)
    assert np.all(np.diff(rc) >= -1e-12) and np.all(np.diff(vc) <= 1e-12)
    assert rc.min() >= 0 and rc.max() <= 1 and vc.min() >= 0 and vc.max() <= 1


def test_pava_hand_example_and_ties():
    s, e, v = pava(np.array([1.0, 3.0, 2.0, 4.0]))
    assert list(v) == [1.0, 2.5, 4.0] and list(s) == [0, 1, 3] and list(e) == [0, 2, 3]
    m = IsotonicMap.fit(np.zeros(10), np.array([0, 1] * 5))  # all x tied: one value
    assert m(np.array([0.0]))[0] == pytest.approx(0.5)


def test_json_round_trip_identical_outputs():
    pred, y, rv = _synth(3000, 3)
    cal = Calibrator().fit(pred, y, rv)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
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


def test_pred_columns_match_model_base():
    base = pytest.importorskip("hfcast.models.base", reason="model base not written yet")
    assert tuple(base.PRED_COLUMNS) == PRED_COLUMNS

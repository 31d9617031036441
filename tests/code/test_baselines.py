"""Baselines: PRED_COLUMNS outputs, causality of their inputs, fitted HAR beats naive, oracle ceiling."""

import numpy as np
import pandas as pd
import pytest

from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.evaluate import score
from hfcast.features.windows import synthetic_feature_frame
from hfcast.models.baselines import BASELINES, Baseline, baseline_inputs, fit_baselines


@pytest.fixture(scope="module")
def frame():
    df = synthetic_feature_frame(n_symbols=6, n_days=6, n_features=4, seed=1)
    # truth consistent with the planted signal of synthetic_feature_frame
    df["true_ret_60m"] = 0.001 * df["f0"].astype(float)
    df["true_var_10m"] = np.exp(2 * (np.log(1e-3) + 0.6 * df["f1"].astype(float)) + 2 * 0.09 / 2)
    return df


def _split(df, inp):
    day = df["ts"].dt.strftime("%Y-%m-%d")
    days = sorted(day.unique())
    mask = lambda ds: day.isin(ds).to_numpy() & (inp["tod"].to_numpy() >= 29)
    return inp[mask(days[:3])], inp[mask(days[3:4])], inp[mask(days[5:])]


def test_outputs_and_scores(frame):
    inp = baseline_inputs(frame)
    tr, va, te = _split(frame, inp)
    fitted = fit_baselines(tr, va)
    assert set(fitted) == set(BASELINES)
    scores = {}
    for name, b in fitted.items():
        out = b.predict(te)
        assert list(out.columns) == [*PRED_COLUMNS, *INFO_COLUMNS] and out.index.equals(te.index)
        assert set(out[list(INFO_COLUMNS)].stack()) <= {0.0, 1.0}
        assert np.isfinite(out.to_numpy()).all(), name
        assert (out["rv_10m_lo"] <= out["rv_10m_pred"]).all() and (out["rv_10m_pred"] <= out["rv_10m_hi"]).all()
        scores[name] = score(pd.concat([te, out], axis=1))
    # fitted HAR-RV beats the unfitted random-walk and last-10-minute vol forecasts
    assert scores["har_rv"]["vol_qlike"] < scores["zero"]["vol_qlike"]
    assert scores["har_rv"]["vol_qlike"] < scores["persistence"]["vol_qlike"]
    # the oracle is the ceiling on the planted return signal
    assert scores["oracle"]["ret_ic"] > 0.2 and scores["zero"]["ret_ic"] == 0.0
    assert scores["oracle"]["vol_qlike"] < scores["har_rv"]["vol_qlike"]
    for name in BASELINES:  # calibrated on val: coverage close to 80% on the test day
        assert scores[name]["rv_coverage"] == pytest.approx(0.8, abs=0.06), name
        assert scores[name]["ret_coverage"] == pytest.approx(0.8, abs=0.06), name


def test_inputs_are_causal(frame):
    """Changing labels that are not yet known at minute t leaves every input at t unchanged."""
    inp = baseline_inputs(frame)
    t = frame["ts"].iloc[200]  # some minute of the first symbol's first day
    pert = frame.copy()
    rng = np.random.default_rng(0)
    late_rv = pert["ts"] > t - pd.Timedelta(minutes=10)   # rv_10m of these rows reads beyond t
    late_ret = pert["ts"] > t - pd.Timedelta(minutes=60)  # ret_60m of these rows reads beyond t
    pert.loc[late_rv, "rv_10m"] = rng.uniform(0.1, 1, late_rv.sum())
    pert.loc[late_ret, "ret_60m"] = rng.normal(0, 1, late_ret.sum())
    inp2 = baseline_inputs(pert)
    at = (frame["ts"] <= t).to_numpy()
    cols = ["v10", "v30", "v60", "vday", "ewma_var", "ret_past60"]
    pd.testing.assert_frame_equal(inp.loc[at, cols], inp2.loc[at, cols])
    assert not inp.loc[~at, cols].equals(inp2.loc[~at, cols])  # and the perturbation did bite


def test_lag_needs_exact_minute_and_same_day(frame):
    inp = baseline_inputs(frame)
    first = frame.groupby([frame["symbol"], frame["ts"].dt.date]).head(10).index
    assert inp.loc[first, "v10"].isna().all()
    i = 100
    assert inp["v10"].iloc[i] == pytest.approx(frame["rv_10m"].iloc[i - 10] ** 2)


def test_errors_named(frame):
    with pytest.raises(ValueError, match="unknown baseline"):
        Baseline("garch")
    inp = baseline_inputs(frame.drop(columns=["true_ret_60m", "true_var_10m"]))
    tr, va, _ = _split(frame, inp)
    assert "oracle" not in fit_baselines(tr, va)
    with pytest.raises(KeyError, match="truth columns"):
        Baseline("oracle").fit(tr, va)
    with pytest.raises(KeyError, match="rv_10m"):
        baseline_inputs(frame.drop(columns=["rv_10m"]))

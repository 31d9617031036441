"""Baselines from the window alone: PRED_COLUMNS outputs, inputs equal to what the labels say,
causality, a fitted HAR beats naive forecasts, the oracle ceiling, a JSON round trip."""

import numpy as np
import pandas as pd
import pytest

from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.evaluate import score
from hfcast.features.windows import build_windows, synthetic_feature_frame, synthetic_feature_names
from hfcast.models.baselines import (BASELINES, DEPLOYABLE, Baseline, baseline_inputs, fit_baselines,
                                     minute_from_features, side_from_arrays, side_from_windows)

NAMES = synthetic_feature_names(4)


@pytest.fixture(scope="module")
def frame():
    df = synthetic_feature_frame(n_symbols=6, n_days=6, n_features=4, seed=1)
    df["true_ret_60m"] = df["ret_60m"].fillna(0.0) * 0.3
    df["true_var_10m"] = np.maximum(df["rv_10m"].fillna(1e-3).to_numpy() ** 2, 1e-12)
    return df


@pytest.fixture(scope="module")
def windows(frame):
    return build_windows(frame, NAMES)


def _split(windows, inp):
    days = sorted(set(windows.end_dates()))
    by = windows.end_dates()
    part = lambda ds: inp[np.isin(by, ds)]  # noqa: E731
    return part(days[:3]), part(days[3:4]), part(days[5:])


def test_outputs_and_scores(windows, frame):
    inp = baseline_inputs(windows, frame)
    tr, va, te = _split(windows, inp)
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
    # fitted HARs beat the unfitted random-walk and last-30-minute vol forecasts
    for har in ("har_rv", "har_tod"):
        assert scores[har]["vol_qlike"] < scores["zero"]["vol_qlike"], har
        assert scores[har]["vol_qlike"] < scores["persistence"]["vol_qlike"], har
    assert scores["oracle"]["ret_ic"] > 0.2 and scores["zero"]["ret_ic"] == 0.0
    assert scores["oracle"]["vol_qlike"] < scores["har_rv"]["vol_qlike"]
    for name in BASELINES:  # calibrated on val: coverage close to 80% on the test day
        assert scores[name]["rv_coverage"] == pytest.approx(0.8, abs=0.12), name
        assert scores[name]["ret_coverage"] == pytest.approx(0.8, abs=0.12), name


def test_inputs_are_what_the_returns_and_labels_say(windows, frame):
    """A block is the realized variance the labels report 10, 20, 30 minutes earlier (same day)."""
    inp = baseline_inputs(windows, frame)
    rv = frame["rv_10m"].to_numpy(np.float64)
    day = frame["ts"].dt.date.to_numpy()
    for j in (1, 2, 3):
        lag = np.roll(rv, 10 * j) ** 2
        same = np.roll(day, 10 * j) == day
        e = windows.ends
        ok = same[e] & np.isfinite(lag[e]) & (inp["tod"].to_numpy() >= 10 * j + 10)
        np.testing.assert_allclose(inp[f"v10_l{j}"].to_numpy()[ok], lag[e][ok], rtol=2e-5)
    assert inp["v_back"][inp["tod"] < 60].isna().all() and inp["v_back"][inp["tod"] >= 60].notna().all()


def test_window_and_array_paths_agree_exactly(windows):
    """Batch prediction computes them from the arrays, the server from the request's windows."""
    idx = np.arange(0, len(windows), 37)
    a = side_from_arrays(windows.select(idx))
    b = side_from_windows(windows.windows(idx), windows.feature_names)
    pd.testing.assert_frame_equal(a, b)


def test_minute_of_session_from_the_time_features():
    m = np.array([0, 1, 100, 389, 209])
    n = np.array([390, 390, 390, 390, 210])  # an early close: 210 minutes
    ang = 2 * np.pi * m / n
    got = minute_from_features(np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32), (n - 1 - m))
    np.testing.assert_array_equal(got, m)


def test_inputs_are_causal(frame):
    """Changing minutes after t leaves every window input at t unchanged."""
    wa = build_windows(frame, NAMES)
    inp = baseline_inputs(wa, frame)
    t = frame["ts"].iloc[250]
    pert = frame.copy()
    later = pert["ts"] > t
    rng = np.random.default_rng(0)
    for c in NAMES:
        pert.loc[later, c] = rng.uniform(0.1, 1, later.sum()).astype(np.float32)
    inp2 = baseline_inputs(build_windows(pert, NAMES), pert)
    at = (frame["ts"].iloc[wa.ends] <= t).to_numpy()
    cols = ["v10_l1", "v10_l2", "v10_l3", "v_back", "vday", "vweek", "ewma_var", "ret_past60", "ac1",
            *[c for c in inp if c.startswith(("x_", "a_", "m10_", "m30_"))]]
    assert {"ac1", "x_rv_5m", "x_ewma_vol_10"} <= set(cols)  # har_x's covariates are checked too
    pd.testing.assert_frame_equal(inp.loc[at, cols], inp2.loc[at, cols])
    assert not inp.loc[~at, cols].equals(inp2.loc[~at, cols])  # and the perturbation did bite


def test_round_trip_and_errors_named(windows, frame):
    inp = baseline_inputs(windows, frame)
    tr, va, te = _split(windows, inp)
    for name, b in fit_baselines(tr, va, DEPLOYABLE).items():
        back = Baseline.from_dict(b.to_dict())
        for k, v in b.natural(te).items():
            np.testing.assert_array_equal(back.natural(te)[k], v)
    with pytest.raises(ValueError, match="unknown baseline"):
        Baseline("garch")
    no_truth = tr.drop(columns=["true_ret_60m", "true_var_10m"])
    assert "oracle" not in fit_baselines(no_truth, va.drop(columns=["true_ret_60m", "true_var_10m"]))
    with pytest.raises(KeyError, match="truth columns"):
        Baseline("oracle").fit(no_truth, va)
    with pytest.raises(ValueError, match="cannot be saved"):
        fit_baselines(tr, va, ("oracle",))["oracle"].to_dict()
    with pytest.raises(ValueError, match="past_ret_1m"):
        baseline_inputs(build_windows(frame, ["f0", "f1"]))


def _activity_frame(signal: bool, seed: int = 4) -> tuple[pd.DataFrame, list[str]]:
    """The synthetic frame plus ``log_volume``: the planted volatility driver ``f1`` seen through
    noise (volume moves with volatility), or pure noise."""
    df = synthetic_feature_frame(n_symbols=5, n_days=6, n_features=2, seed=seed)
    noise = np.random.default_rng(seed).standard_normal(len(df))
    df["log_volume"] = (df["f1"].to_numpy() + 0.3 * noise) if signal else noise
    return df, [*synthetic_feature_names(2), "log_volume"]


@pytest.mark.parametrize("signal", [True, False])
def test_har_x_uses_what_the_window_carries_beyond_har_tod(signal):
    """Fitted on the first days and scored on the last ones: with a window covariate that carries
    the volatility's driver har_x beats har_tod clearly; with a covariate of pure noise it stays
    within a few percent of it (a ridge-penalised fit of ~50 coefficients on thousands of rows)."""
    from hfcast import metrics as M

    df, names = _activity_frame(signal)
    wa = build_windows(df, names)
    inp = baseline_inputs(wa, df)
    by = wa.end_dates()
    days = sorted(set(by))
    tr, te = inp[np.isin(by, days[:4])], inp[np.isin(by, days[4:])]
    te = te[np.isfinite(te["rv_10m"]) & (te["rv_10m"] > 0)]
    assert {"a_log_volume", "m10_log_volume", "m30_log_volume"} <= set(inp)
    base = fit_baselines(tr, tr, ("har_tod", "har_x"))
    y2 = te["rv_10m"].to_numpy() ** 2
    q = {n: M.qlike(b.natural(te)["rv_hat"] ** 2, y2) for n, b in base.items()}
    assert "m30_log_volume" in base["har_x"].harx.columns
    if signal:
        assert q["har_x"] < 0.9 * q["har_tod"], q
    else:
        assert q["har_x"] < 1.03 * q["har_tod"], q


def test_har_x_reads_the_month_noise_signature_as_it_is():
    """A symbol's realized scale set by its quote noise, which only the month's return
    autocorrelation (``noise_ac1_m``, a daily-carried feature) tells: har_x takes it raw (not as a
    log variance relative to har_tod) and beats the same fit without it on later days."""
    from hfcast import metrics as M

    df = synthetic_feature_frame(n_symbols=6, n_days=6, n_features=2, seed=7)
    sym = df["symbol"].astype(str).str[1:].astype(int).to_numpy()
    z = (sym - 2.5) / 1.7  # each symbol's noise share, standardised
    df["rv_10m"] = df["rv_10m"] * np.exp(0.35 * z)
    df["noise_ac1_m"] = (-0.25 - 0.1 * z + 0.01 * np.random.default_rng(0).standard_normal(len(df))).astype(np.float32)
    names = [*synthetic_feature_names(2), "noise_ac1_m"]
    by_days = {}
    for with_noise in (True, False):
        wa = build_windows(df, names if with_noise else names[:-1])
        inp = baseline_inputs(wa, df)
        by = wa.end_dates()
        days = sorted(set(by))
        tr, te = inp[np.isin(by, days[:4])], inp[np.isin(by, days[4:])]
        te = te[np.isfinite(te["rv_10m"]) & (te["rv_10m"] > 0)]
        harx = fit_baselines(tr, tr, ("har_x",))["har_x"]
        by_days[with_noise] = M.qlike(harx.natural(te)["rv_hat"] ** 2, te["rv_10m"].to_numpy() ** 2)
        if with_noise:
            assert "x_noise_ac1_m" in harx.harx.columns
            raw, cols = harx.harx._raw(te, harx.harx.har.log_var(te), ["x_noise_ac1_m"])
            np.testing.assert_allclose(raw[:, 0], te["x_noise_ac1_m"].to_numpy(np.float64))
    assert by_days[True] < 0.95 * by_days[False], by_days

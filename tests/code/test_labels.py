"""Labels read the future by exactly their declared horizon, match a per-row reference, stop at the close."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _feature_reference import make_bars, reference_labels
from hfcast.data.schema import LABEL_HORIZONS, minute_of_session
from hfcast.features.engine import featurize_frame
from hfcast.features.labels import make_labels

T = 390


@pytest.fixture
def mid() -> np.ndarray:
    rng = np.random.default_rng(5)
    return 50 * np.exp(np.cumsum(rng.normal(0, 1e-3, (4, T)), axis=1))


@pytest.mark.parametrize("label,t", [(n, t) for n, h in sorted(LABEL_HORIZONS.items())
                                     for t in (0, 17, 200, T - 2 - h, T - 1 - h)])
def test_label_reads_exactly_its_horizon(mid, label, t):
    h = LABEL_HORIZONS[label]
    base = make_labels(mid)[label][:, t]
    assert np.isfinite(base).all()
    at_h, after_h, before = mid.copy(), mid.copy(), mid.copy()
    at_h[:, t + h] *= 1.01
    if t + h + 1 < T:
        after_h[:, t + h + 1:] *= 1.03
    if t > 0:
        before[:, :t] *= 0.97
    assert (make_labels(at_h)[label][:, t] != base).all(), f"{label} at t ignores bar t+{h}"
    np.testing.assert_array_equal(make_labels(after_h)[label][:, t], base,
                                  err_msg=f"{label} at t reads beyond t+{h}")
    np.testing.assert_array_equal(make_labels(before)[label][:, t], base,
                                  err_msg=f"{label} at t reads bars before t")


def test_labels_crossing_close_are_nan(mid):
    lab = make_labels(mid)
    for name, h in LABEL_HORIZONS.items():
        assert np.isnan(lab[name][:, T - h:]).all(), f"{name} crosses the close"
        assert np.isfinite(lab[name][:, : T - h]).all()


def test_labels_match_per_row_reference(mid):
    lab = make_labels(mid)
    for i in range(mid.shape[0]):
        ref = reference_labels(pd.Series(mid[i]))
        for name in LABEL_HORIZONS:
            np.testing.assert_allclose(lab[name][i], ref[name].to_numpy(), rtol=1e-12, atol=1e-15)


def test_labels_nan_before_first_bar():
    m = np.full((1, T), 20.0)
    m[0, :5] = np.nan
    lab = make_labels(m)
    assert np.isnan(lab["rv_10m"][0, :5]).all() and lab["rv_10m"][0, 5] == 0.0
    assert np.isnan(lab["ret_60m"][0, :5]).all() and lab["ret_60m"][0, 5] == 0.0


def test_engine_labels_and_truth_columns():
    date = "2024-03-05"
    bars = make_bars(3, date, seed=9)
    truth = bars[["symbol", "ts"]].copy()
    truth["true_ret_60m"] = np.arange(len(truth), dtype=float)
    truth["true_var_10m"] = 1.0
    truth["latent_sigma"] = 0.5
    df, _ = featurize_frame(bars, date, truth=truth)
    assert df["ret_60m"].dtype == np.float64 and df["rv_10m"].dtype == np.float64
    m = minute_of_session(df["ts"])
    assert df.loc[m >= T - 60, "ret_60m"].isna().all() and df.loc[m >= T - 10, "rv_10m"].isna().all()
    assert "latent_sigma" not in df.columns
    joined = df.merge(truth, on=["symbol", "ts"], suffixes=("", "_in"))
    np.testing.assert_array_equal(joined["true_ret_60m"], joined["true_ret_60m_in"])
    assert df["true_var_10m"].isna().sum() == len(df) - len(truth)  # filled minutes have no truth
    # the engine's labels are make_labels on the gridded mid (bid/ask mid, carried forward)
    one = df[df["symbol"] == "S000"]
    b = bars[bars["symbol"] == "S000"].set_index("ts").reindex(one["ts"])
    mid = ((b["bid"] + b["ask"]) / 2).ffill().to_numpy()[None, :]
    np.testing.assert_allclose(one["ret_60m"].to_numpy(), make_labels(mid)["ret_60m"][0], equal_nan=True)

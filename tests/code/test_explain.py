"""Explanations find a planted signal, and integrated gradients add up to the forecast."""

from __future__ import annotations

import numpy as np
import pytest

from hfcast.explain import (EXPLAINED, attention_by_time_of_day, attention_weights, attribute, explain_forecasts,
                            feature_groups, kept_attention, mean_abs_attribution_by_group, permutation_importance,
                            summarize)
from hfcast.contracts import COLUMN_UNITS
from hfcast.features.catalog import BY_NAME
from hfcast.forecaster import Forecaster
from hfcast.features.windows import build_windows, synthetic_feature_frame
from hfcast.train import TrainConfig, train_forecaster

# synthetic_feature_frame plants f0 -> ret_60m and f1 -> log rv_10m; the rest is noise. Renamed to
# registry features, the return signal lives in the "ofi" group and the volatility signal in "spread".
NAMES = {"f0": "ofi_5m", "f1": "spread_bps", "f2": "ofi_1m", "f3": "log_volume", "f4": "vwap_dist_bps",
         "f5": "rsi_14", "f6": "depth_imbalance", "f7": "bpv_15m"}


@pytest.fixture(scope="module")
def trained():
    df = synthetic_feature_frame(n_symbols=4, n_days=4, n_features=len(NAMES), seed=11).rename(columns=NAMES)
    wa = build_windows(df, list(NAMES.values()))
    train, val, test = (wa.subset_dates(d) for d in (["2024-01-02", "2024-01-03"], ["2024-01-04"], ["2024-01-05"]))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, max_train_windows=1500, max_val_windows=500, patience=2,
                      seed=0, num_threads=1)
    fc, _ = train_forecaster("transformer", train, val, {"d_model": 16, "n_heads": 2, "n_layers": 1,
                                                          "head_hidden": 16, "dropout": 0.0}, cfg, progress=False)
    return fc, test


def test_groups_come_from_the_registry():
    g = feature_groups(["ofi_5m", "spread_bps", "ofi_1m", "not_registered"])
    assert g == {"ofi": [0, 2], "spread": [1], "not_registered": [3]}
    assert BY_NAME["ofi_5m"].group == "ofi"


def test_permutation_importance_ranks_the_planted_groups_first(trained):
    fc, test = trained
    imp = permutation_importance(fc, test, n_repeats=2, max_windows=1500)
    assert imp.iloc[0]["group"] == "ofi", imp
    assert imp.sort_values("vol_importance", ascending=False).iloc[0]["group"] == "spread", imp
    assert imp.iloc[0]["ret_importance"] > 0 and set(imp["group"]) == set(feature_groups(fc.feature_names))


def test_mean_attributions_rank_the_planted_groups_first(trained):
    fc, test = trained
    X = fc.scaler.transform(test.windows(np.arange(0, len(test), max(1, len(test) // 48))))
    assert mean_abs_attribution_by_group(fc, X, "ret").index[0] == "ofi"
    assert mean_abs_attribution_by_group(fc, X, "vol").index[0] == "spread"


@pytest.mark.parametrize("target", ["ret", "vol"])
def test_integrated_gradients_are_complete(trained, target):
    fc, test = trained
    X = fc.scaler.transform(test.windows(np.array([5, 50, 150])))
    a = attribute(fc, X, target, n_steps=64)
    gap = a.forecast - a.reference
    np.testing.assert_allclose(a.attributions.sum(axis=(1, 2)), gap, rtol=0.02, atol=1e-3 * np.abs(gap).max())
    nat = fc.natural(fc.predict_raw(X))
    served = nat["ret_mu"] if target == "ret" else np.log(nat["rv_hat"])
    np.testing.assert_allclose(a.forecast, served, rtol=1e-4, atol=1e-8)  # a bare network: its part is all of it


def test_explanation_states_the_served_forecast_its_parts_and_units(trained):
    fc, test = trained
    w = test.windows(np.array([7]))
    out = explain_forecasts(fc, w, top=5)[0]
    served = Forecaster.from_net(fc).predict(w)
    for t, col in (("ret", "ret_60m_pred"), ("vol", "rv_10m_pred")):
        s = out[t]
        assert s["forecast"] == served[col].iloc[0] and s["column"] == col
        assert s["unit"] == COLUMN_UNITS[col] and s["explained_unit"] == EXPLAINED[t][1]
        assert sum(s["parts"].values()) == pytest.approx(s["value"], rel=1e-12, abs=1e-12)
        assert s["network_share"] == 1.0
        assert len(s["by_minute"]) == 30 and len(s["top"]) == 5
        assert sum(s["by_group"].values()) == pytest.approx(s["total"], rel=1e-9, abs=1e-12)
        assert sum(s["by_minute"]) == pytest.approx(s["total"], rel=1e-9, abs=1e-12)
        gap = s["parts"]["network"] - s["reference"]
        assert abs(s["total"] - gap) <= 0.02 * abs(gap) + 1e-6
        assert all(-29 <= c["minute"] <= 0 for c in s["top"])
    assert out["vol"]["value"] == pytest.approx(np.log(out["vol"]["forecast"]), rel=1e-12)
    assert out["ret"]["parts"]["centring"] == -fc.calibrator.ret_offset
    assert summarize(np.eye(30, 8), fc.feature_names, top=1)["top"][0]["minute"] == -29


def test_attention_is_a_distribution_and_the_hook_leaves_predictions_unchanged(trained):
    fc, test = trained
    X = fc.scaler.transform(test.windows(np.arange(40)))
    plain = fc.predict_raw(X)
    att = attention_weights(fc, X)
    assert att.shape == (40, 30) and np.allclose(att.sum(axis=1), 1.0, atol=1e-5)
    with kept_attention(fc.net):
        hooked = fc.predict_raw(X)
    np.testing.assert_allclose(hooked, plain, rtol=1e-5, atol=1e-6)
    assert all(not m.keep_attention for m in fc.net.modules() if hasattr(m, "keep_attention"))
    by_tod = attention_by_time_of_day(fc, test)
    assert list(by_tod.columns) == list(range(-29, 1)) and np.allclose(by_tod.sum(axis=1), 1.0, atol=1e-5)


def test_attention_needs_an_attention_architecture():
    from types import SimpleNamespace

    from hfcast.models import build_model

    tcn = SimpleNamespace(net=build_model("tcn", 8))
    with pytest.raises(ValueError, match="no attention layers"):
        attention_weights(tcn, np.zeros((1, 30, 8), np.float32))

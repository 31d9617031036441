"""Every feature against the slow pandas reference in _feature_reference.py, plus registry checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _feature_reference import make_bars, reference_daily, reference_features, reference_history
from hfcast.data import schema
from hfcast.features.engine import HarState, featurize_frame
from hfcast.features.catalog import BY_NAME, FEATURES, GROUPS, feature_names, unavailable_features

DAYS = ("2024-03-04", "2024-03-05")


def _compare(quotes: bool):
    b1 = make_bars(6, DAYS[0], seed=3, quotes=quotes)
    b2 = make_bars(7, DAYS[1], seed=4, quotes=quotes)  # one symbol has no history
    _, state = featurize_frame(b1, DAYS[0])
    eng, _ = featurize_frame(b2, DAYS[1], state)
    har_prev = reference_history([reference_daily(b1, DAYS[0])])
    ref = reference_features(b2, DAYS[1], feature_names(quotes), har_prev)
    return eng, ref


@pytest.fixture(scope="module")
def pair_quotes():
    return _compare(True)


@pytest.fixture(scope="module")
def pair_ohlcv():
    return _compare(False)


def _check(pair, name: str) -> None:
    eng, ref = pair
    assert list(eng["symbol"]) == list(ref["symbol"]) and (eng["ts"].to_numpy() == ref["ts"].to_numpy()).all()
    a, b = eng[name].to_numpy(np.float64), ref[name].to_numpy(np.float64)
    assert eng[name].dtype == np.float32
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN pattern differs from reference")
    ok = ~np.isnan(b)
    assert ok.sum() > 0, f"{name}: reference is all NaN on the sample; the check would be vacuous"
    np.testing.assert_allclose(a[ok], b[ok], rtol=2e-5, atol=1e-6 * max(1.0, np.abs(b[ok]).max()),
                               err_msg=f"{name} differs from the reference implementation")


@pytest.mark.parametrize("name", feature_names(True))
def test_feature_matches_reference(pair_quotes, name):
    _check(pair_quotes, name)


@pytest.mark.parametrize("name", feature_names(False))
def test_feature_matches_reference_ohlcv(pair_ohlcv, name):
    _check(pair_ohlcv, name)


def test_registry_shape():
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names)) == len(BY_NAME) == 61
    assert len(GROUPS) >= 12
    allowed = set(schema.BAR_COLUMNS)
    for f in FEATURES:
        assert f.formula and f.inputs and set(f.inputs) <= allowed, f.name
        assert isinstance(f.lookback, int) and f.lookback >= 1 or f.lookback in ("1d", "5d", "22d"), f.name
        quote_inputs = set(f.inputs) & {"bid_size", "ask_size"} or (
            {"bid", "ask"} <= set(f.inputs) and "last" not in f.inputs and f.group != "returns")
        assert bool(quote_inputs) == f.needs_quotes or f.name == "last_mid_dist_bps", f.name
    forbidden = set(schema.LABEL_COLUMNS) | set(schema.TRUTH_COLUMNS)
    assert not forbidden & set(names), "labels / truth must never be features"


def test_ohlcv_feature_set_declares_quote_features_unavailable():
    q, o = feature_names(True), feature_names(False)
    assert o == [n for n in q if not BY_NAME[n].needs_quotes]
    assert set(unavailable_features(False)) == set(q) - set(o) and "spread_bps" in unavailable_features(False)
    assert unavailable_features(True) == []


def test_ohlcv_frame_has_no_quote_columns(pair_ohlcv):
    eng, _ = pair_ohlcv
    assert not set(unavailable_features(False)) & set(eng.columns)


def test_quote_features_refused_without_quotes():
    with pytest.raises(ValueError, match="needs quotes"):
        featurize_frame(make_bars(2, DAYS[0], quotes=False), DAYS[0], quotes_available=True)


def test_har_state_keeps_the_last_22_days():
    st = HarState()
    for k in range(25):
        st = st.update(np.array(["A", "B"], dtype=object), np.array([float(k + 1), np.nan]),
                       np.array([np.nan if k == 24 else -0.01 * k, 0.3]))
    assert st.rv["A"] == tuple(float(v) for v in range(4, 26)) and "B" not in st.rv and "B" not in st.ac1
    h = st.previous(np.array(["A", "B"], dtype=object))
    assert h.rv_d[0] == 25.0 and h.rv_w[0] == 23.0 and h.rv_m[0] == 14.5
    assert np.isclose(h.ac1_m[0], -0.01 * np.mean(range(3, 24)))  # today's NaN autocorrelation skipped
    assert all(np.isnan(getattr(h, f)[1]) for f in ("rv_d", "rv_w", "rv_m", "ac1_m"))


def test_daily_state_features_match_the_reference_over_many_days():
    """Weekly and monthly levels and the noise signature after 7 days: the engine's state against
    daily sums recomputed by the reference (a symbol missing a day skips it, not counts it)."""
    days = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-03-04", periods=8)]
    state, daily = HarState(), []
    for k, d in enumerate(days[:-1]):
        bars = make_bars(3, d, seed=20 + k, quotes=False)
        if k == 3:
            bars = bars[bars["symbol"] != bars["symbol"].iloc[0]]
        _, state = featurize_frame(bars, d, state)
        daily.append(reference_daily(bars, d))
    eng, _ = featurize_frame(make_bars(3, days[-1], seed=40, quotes=False), days[-1], state)
    ref = reference_history(daily)
    for sym, (rv_d, rv_w, rv_m, ac1_m) in ref.items():
        row = eng[eng["symbol"] == sym].iloc[0]
        assert np.allclose([row["har_rv_d"], row["har_rv_w"], row["har_rv_m"]], np.sqrt([rv_d, rv_w, rv_m]), rtol=1e-6)
        assert np.isclose(row["noise_ac1_m"], ac1_m, rtol=1e-5, atol=1e-7)
    assert not np.isclose(ref[sorted(ref)[1]][1], ref[sorted(ref)[1]][2])  # the week and the month differ



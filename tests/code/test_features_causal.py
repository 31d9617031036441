"""Look-ahead test: perturbing every bar after minute t leaves every feature at minutes <= t unchanged.

The perturbation changes prices, quotes, sizes, volumes, trades and vwap of ALL symbols after t,
and deletes some future bars (so the grid filling is exercised too). Comparison is exact
(bit for bit, NaN == NaN). A feature that did not react to the future at all would pass
vacuously, so a second test checks that each data-driven feature does change after t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _feature_reference import make_bars
from hfcast.data import schema
from hfcast.features.engine import featurize_frame
from hfcast.features.catalog import FEATURES, feature_names

DAY1, DAY2 = "2024-03-04", "2024-03-05"
CUTS = (0, 1, 7, 29, 61, 200, 388)
#: features that by definition do not depend on today's bars (clock, or yesterday's state)
DATA_FREE = {"tod_sin", "tod_cos", "minutes_to_close", "har_rv_d", "har_rv_w", "har_rv_m", "noise_ac1_m"}


def _perturb(bars: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = bars.copy()
    after = schema.minute_of_session(out["ts"]) > t
    n = int(after.sum())
    jump = np.exp(rng.normal(0, 0.02, n))
    for c in ("bid", "ask", "last", "vwap", "mid_high", "mid_low"):
        out.loc[after, c] = out.loc[after, c].to_numpy() * jump
    out.loc[after, "ask"] = out.loc[after, "ask"].to_numpy() + 0.01 * rng.integers(0, 3, n)
    for c in ("bid_size", "ask_size", "volume", "trades"):
        out.loc[after, c] = rng.integers(1, 5000, n).astype(float)
    drop = after & (rng.random(len(out)) < 0.1)
    return out[~drop].reset_index(drop=True)


def _run(quotes: bool) -> dict[int, tuple[pd.DataFrame, pd.DataFrame, np.ndarray]]:
    b1 = make_bars(5, DAY1, seed=11, quotes=quotes)
    b2 = make_bars(5, DAY2, seed=12, quotes=quotes)
    _, state = featurize_frame(b1, DAY1)
    base, _ = featurize_frame(b2, DAY2, state)
    minute = schema.minute_of_session(base["ts"])
    return {t: (base, featurize_frame(_perturb(b2, t, seed=t), DAY2, state)[0], minute) for t in CUTS}


@pytest.fixture(scope="module")
def runs_quotes():
    return _run(True)


@pytest.fixture(scope="module")
def runs_ohlcv():
    return _run(False)


def _assert_past_unchanged(runs, name: str) -> None:
    for t, (base, pert, minute) in runs.items():
        past = minute <= t
        np.testing.assert_array_equal(
            pert.loc[past, name].to_numpy(), base.loc[past, name].to_numpy(),
            err_msg=f"feature {name!r} at minutes <= {t} moved when bars after {t} were perturbed (look-ahead)")


@pytest.mark.parametrize("name", feature_names(True))
def test_feature_is_causal(runs_quotes, name):
    _assert_past_unchanged(runs_quotes, name)


@pytest.mark.parametrize("name", feature_names(False))
def test_feature_is_causal_ohlcv(runs_ohlcv, name):
    _assert_past_unchanged(runs_ohlcv, name)


@pytest.mark.parametrize("name", [f.name for f in FEATURES if f.name not in DATA_FREE])
def test_perturbation_reaches_feature(runs_quotes, name):
    """Guards the causal test against passing vacuously: the future part did change."""
    changed = False
    for t, (base, pert, minute) in runs_quotes.items():
        fut = minute > t
        a, b = base.loc[fut, name].to_numpy(), pert.loc[fut, name].to_numpy()
        changed |= not np.array_equal(a, b, equal_nan=True)
    assert changed, f"perturbing the future never changed {name!r}; the look-ahead test would be vacuous"


def test_labels_do_read_the_future(runs_quotes):
    base, pert, minute = runs_quotes[200]
    rows = minute == 200
    assert not np.allclose(base.loc[rows, "ret_60m"], pert.loc[rows, "ret_60m"], equal_nan=True)

"""What the monitor records per live date beyond QLIKE and IC: the floor (har_tod) fitted on earlier
dates only, interval coverage, and whether the confidence ranks errors (1.0 when it is a constant)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hfcast.monitoring.reference import floor_scores, live_scores
from hfcast.storage import Lake

DATES = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]


def _labels(date: str, symbols: int = 6, seed: int = 0) -> pd.DataFrame:
    """A features partition: simulated returns with a U-shaped day and per-symbol levels, the labels
    and the window features the floor reads (hfcast.features.windows.synthetic_feature_frame)."""
    from hfcast.features.windows import synthetic_feature_frame

    return synthetic_feature_frame(n_symbols=symbols, n_days=1, n_features=2, seed=seed + int(date[-2:]), start=date)


@pytest.fixture
def lake(tmp_path) -> Lake:
    lk = Lake((tmp_path / "lake").as_uri())
    for d in DATES:
        lk.write("features", d, _labels(d))
    return lk


def _served(frame: pd.DataFrame, rv_hat: np.ndarray, rv_conf: np.ndarray | float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["rv_10m_pred"] = rv_hat
    out["rv_10m_lo"], out["rv_10m_hi"] = rv_hat * 0.7, rv_hat * 1.4
    out["rv_10m_conf"] = rv_conf
    out["ret_60m_pred"] = 0.2 * out["ret_60m"] + rng.normal(0, 1, len(out)) * rv_hat
    out["ret_60m_lo"], out["ret_60m_hi"] = out["ret_60m_pred"] - 3 * rv_hat, out["ret_60m_pred"] + 3 * rv_hat
    out["ret_60m_conf"] = 0.5
    return out


def test_constant_confidence_has_decile_ratio_one_and_one_level(lake):
    f = lake.read("features", DATES[-1])
    s = live_scores(_served(f, f["rv_10m"].to_numpy() * 1.1, 0.6))
    assert s["rv_decile_ratio"] == 1.0 and s["rv_conf_levels"] == 1.0
    assert s["ret_conf_levels"] == 1.0
    g = f[f["rv_10m"].notna()]  # rows whose label matured
    inside = ((g["rv_10m"] >= g["rv_10m"] * 1.1 * 0.7) & (g["rv_10m"] <= g["rv_10m"] * 1.1 * 1.4)).mean()
    assert s["rv_coverage"] == pytest.approx(inside) and 0.0 < s["ret_coverage"] <= 1.0


def test_a_confidence_that_ranks_errors_has_a_ratio_below_one(lake):
    f = lake.read("features", DATES[-1])
    rng = np.random.default_rng(3)
    noise = rng.uniform(0.0, 0.8, len(f))  # the forecast's error size, known to its confidence
    rv_hat = f["rv_10m"].to_numpy() * np.exp(rng.choice([-1, 1], len(f)) * noise)
    s = live_scores(_served(f, rv_hat, 1.0 - noise))
    assert s["rv_decile_ratio"] < 0.3 and s["rv_conf_levels"] > 100


def test_floor_is_fitted_on_earlier_dates_and_compared_on_the_same_rows(lake):
    f = lake.read("features", DATES[-1])
    good = floor_scores(lake, DATES[-1], _served(f, f["rv_10m"].to_numpy(), 0.6))  # the realized value itself
    flat = floor_scores(lake, DATES[-1], _served(f, np.full(len(f), f["rv_10m"].median()), 0.6))
    assert good["vol_qlike_ratio_har_tod"] < 0.05 < 1.0 < flat["vol_qlike_ratio_har_tod"]
    assert good["vol_qlike_har_tod"] == pytest.approx(flat["vol_qlike_har_tod"])  # the same floor, the same rows
    first = lake.read("features", DATES[0])
    assert floor_scores(lake, DATES[0], _served(first, first["rv_10m"].to_numpy(), 0.6)) == {}  # nothing before it

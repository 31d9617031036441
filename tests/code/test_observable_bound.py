"""bench/observable_bound.py: the Bayes filter of CIR + noise's latent variance from what the market
shows, the ceiling the robustness bench compares "room for 0.90x" with. It must track the latent
state far better than the window's own realized variance, and refuse a lake it was not made for."""

from __future__ import annotations

import numpy as np
import pytest

from bench.observable_bound import filter_forecasts
from hfcast.data.dgp import DGPConfig, write_dgp
from hfcast.storage import Lake

PARAMS = {"synth": {"n_symbols": 4, "n_days": 3, "seed": 5}}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lk = Lake(tmp_path_factory.mktemp("cir").as_uri())
    write_dgp(DGPConfig(kind="cir_noise", n_symbols=4, n_days=3, seed=5), lk)
    return lk


def _log_error_sd(forecast, truth, symbol) -> float:
    """sd of log(forecast / truth) within symbols (a per-symbol scale is not what is tested)."""
    e = np.log(forecast / truth)
    ok = np.isfinite(e)
    dev = [e[ok & (symbol == s)] - np.mean(e[ok & (symbol == s)]) for s in np.unique(symbol)]
    return float(np.std(np.concatenate(dev)))


def test_the_filter_tracks_the_latent_variance(lake):
    F = filter_forecasts(lake, PARAMS)  # date by date, symbol-major: the order of the reads below
    truth = np.concatenate([lake.read("truth", d).sort_values(["symbol", "ts"], kind="stable")["true_var_10m"].to_numpy()
                            for d in lake.dates("truth")])
    raw = [lake.read("raw", d).sort_values(["symbol", "ts"], kind="stable") for d in lake.dates("raw")]
    naive = []
    for bars in raw:  # 10 x the mean squared one-minute mid return of the last 30 minutes
        lm = np.log((bars["bid"] + bars["ask"]).to_numpy() / 2).reshape(4, -1)
        r2 = np.concatenate([np.full((4, 1), np.nan), np.diff(lm, axis=1) ** 2], axis=1)
        k = np.ones(30) / 30
        naive.append(np.stack([np.convolve(np.nan_to_num(x), k, mode="full")[:x.size] * 10 for x in r2]).reshape(-1))
    naive = np.concatenate(naive)
    sym = F["symbol"].astype(str).to_numpy()
    both = np.isfinite(F["window_30m"].to_numpy()) & np.isfinite(truth)
    assert both.sum() > 3000
    whole = _log_error_sd(F["history"].to_numpy()[both], truth[both], sym[both])
    window = _log_error_sd(F["window_30m"].to_numpy()[both], truth[both], sym[both])
    raw_rv = _log_error_sd(naive[both], truth[both], sym[both])
    # the state's stationary sd is ~0.25 in log; the 30-minute realized variance misses it by far more
    # measured: 0.126 / 0.129 / 0.40
    assert whole < 0.18 and window < 0.18
    assert whole < 0.5 * raw_rv and window < 0.5 * raw_rv


def test_refuses_a_lake_of_another_market(lake):
    with pytest.raises(ValueError, match="not the cir_noise market"):
        filter_forecasts(lake, {"synth": {**PARAMS["synth"], "seed": 6}})

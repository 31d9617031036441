"""Behaviour: every architecture, trained briefly, finds a planted signal in both targets.

``synthetic_feature_frame`` plants f0 -> ret_60m (f0 alone has an IC of ~0.3) and f1 -> the
volatility of the next minutes; the other features are noise. A model that learnt nothing scores IC ~ 0 and
the log-vol MSE of a constant.
"""

from __future__ import annotations

import numpy as np
import pytest

from hfcast.features.windows import build_windows, synthetic_feature_frame
from hfcast.models import ARCHITECTURES
from hfcast.train import TrainConfig, train_forecaster
from model_configs import small_configs

F = 6
SMALL = small_configs(head_hidden=16)


@pytest.fixture(scope="module")
def spans():
    df = synthetic_feature_frame(n_symbols=4, n_days=4, n_features=F, seed=11)
    wa = build_windows(df, [f"f{j}" for j in range(F)])
    return (wa.subset_dates(["2024-01-02", "2024-01-03"]), wa.subset_dates(["2024-01-04"]),
            wa.subset_dates(["2024-01-05"]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_beats_zero_return_and_constant_vol(arch, spans):
    train, val, test = spans
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, max_train_windows=1500, max_val_windows=500,
                      patience=3, seed=0, num_threads=1)
    fc, hist = train_forecaster(arch, train, val, SMALL[arch], cfg, progress=False)
    pred = fc.predict(test.windows(np.arange(len(test))))
    y = test.labels().astype(np.float64)

    r = np.isfinite(y[:, 0])
    ic = np.corrcoef(pred["ret_60m_pred"].to_numpy()[r], y[r, 0])[0, 1]
    assert ic > 0.15, f"{arch}: return IC {ic:.3f} (zero forecast has none)"

    v = np.isfinite(y[:, 1]) & (y[:, 1] > 0)
    lrv_true = np.log(y[v, 1])
    # log-space forecast: the log median m = log(sqrt(E[rv^2])) - s^2 (rv_10m_pred is mean-corrected)
    nat = fc.natural(fc.predict_raw(fc.scaler.transform(test.windows(np.arange(len(test))))))
    lmu = np.log(nat["rv_hat"]) - nat["lrv_sigma"] ** 2
    np.testing.assert_allclose(pred["rv_10m_pred"].to_numpy(), nat["rv_hat"], rtol=1e-5)
    mse_model = np.mean((lmu[v] - lrv_true) ** 2)
    const = np.log(train.labels()[:, 1][train.labels()[:, 1] > 0]).mean()
    mse_const = np.mean((const - lrv_true) ** 2)
    assert mse_model < 0.7 * mse_const, f"{arch}: log-vol MSE {mse_model:.3f} vs constant {mse_const:.3f}"
    assert hist["calibrated"] and pred["ret_60m_conf"].between(0, 1).all()

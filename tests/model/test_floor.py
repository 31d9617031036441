"""The floor: a floored forecaster never scores worse than har_tod on the validation span.

A deliberately broken network (volatility forecast moving against the signal) must fall
back to the floor; a trained one may blend in, but its validation QLIKE is never above the
floor's. Fast: a small synthetic frame, one brief training run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hfcast import metrics as M
from hfcast.calibration import Calibrator
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.features.windows import build_windows, fit_scaler, synthetic_feature_frame
from hfcast.models.base import ForecastNet, Forecaster
from hfcast.models.baselines import FLOOR, Baseline, baseline_inputs
from hfcast.models.floor import FlooredForecaster, choose_blend, fit_floor, floor_forecaster
from hfcast.train import TrainConfig, train_forecaster

F = 4


class _Broken(ForecastNet):
    """Anti-informative: its log-vol moves AGAINST the planted signal feature f1 (3x as strong), so no
    rescaling can rescue it."""

    # no ``arch``: a named subclass would register itself with ForecastNet and replace the real
    # architecture for every later test in this process

    def __init__(self, n_features: int):
        super().__init__(n_features, None)
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 0.0, 3.0, -1.0]))

    def forward(self, x):
        out = x[:, -1, :1] * 0.0 + self.bias  # an op, so inference mode yields a plain tensor
        return torch.cat([out[:, :2], out[:, 2:3] - 3.0 * x[:, -1, 1:2], out[:, 3:]], dim=1)


@pytest.fixture(scope="module")
def spans():
    df = synthetic_feature_frame(n_symbols=4, n_days=5, n_features=F, seed=3)
    wa = build_windows(df, [f"f{j}" for j in range(F)])
    inputs = baseline_inputs(df)
    tr, va, te = (wa.subset_dates(d) for d in (["2024-01-02", "2024-01-03", "2024-01-04"], ["2024-01-05"],
                                                ["2024-01-08"]))
    floor = Baseline(FLOOR).fit(inputs.loc[tr.ends], inputs.loc[va.ends])
    return tr, va, te, inputs, floor


def _val_qlike(fc, va, inputs):
    out = fc.predict_span(va, inputs)
    return M.qlike(out["rv_10m_pred"].to_numpy() ** 2, va.labels()[:, 1].astype(np.float64) ** 2)


def _floor_val_qlike(floor, va, inputs):
    out = floor.predict(inputs.loc[va.ends])
    return M.qlike(out["rv_10m_pred"].to_numpy() ** 2, va.labels()[:, 1].astype(np.float64) ** 2)


def test_broken_network_falls_back_to_the_floor(spans):
    tr, va, te, inputs, floor = spans
    fc = Forecaster(_Broken(F), fit_scaler(tr), tr.feature_names)
    floored = fit_floor(fc, floor, va, inputs)
    assert floored.choice.fallback and floored.choice.w == 0.0
    assert floored.choice.val_qlike_net > 2 * floored.choice.val_qlike_floor  # it really is broken
    assert _val_qlike(floored, va, inputs) <= _floor_val_qlike(floor, va, inputs) + 1e-9
    out = floored.predict_span(te, inputs)
    assert list(out.columns) == [*PRED_COLUMNS, *INFO_COLUMNS] and np.isfinite(out.to_numpy()).all()
    assert (out["ret_60m_pred"] == 0).all()  # no validated return skill: the zero-return floor
    info = floored.confidence_info()
    assert info["ret_conf_informative"] is False and out["ret_60m_conf_informative"].eq(0.0).all()
    assert fc.confidence_info() == {"ret_conf_informative": False, "ret_conf_slope": 0.0, "rv_conf_informative": False}


def test_save_load_round_trip(spans, tmp_path):
    tr, va, te, inputs, floor = spans
    cfg = TrainConfig(epochs=1, batch_size=64, max_train_windows=500, max_val_windows=2000, seed=0, num_threads=1)
    fc, _ = train_forecaster("lstm", tr, va, {"hidden": 8, "n_layers": 1, "head_hidden": 8}, cfg, progress=False)
    floored = fit_floor(fc, floor, va, inputs)
    floored.save(str(tmp_path / "b"))
    back = FlooredForecaster.load(str(tmp_path / "b"))
    pd.testing.assert_frame_equal(back.predict_span(te, inputs), floored.predict_span(te, inputs))


def test_trained_network_never_worse_than_floor_on_validation(spans):
    tr, va, te, inputs, floor = spans
    cfg = TrainConfig(epochs=2, batch_size=64, max_train_windows=1500, max_val_windows=2000, seed=0, num_threads=1)
    small = {"hidden": 16, "n_layers": 1, "head_hidden": 16}
    fc, _ = train_forecaster("lstm", tr, va, small, cfg, progress=False)
    floored, bare = floor_forecaster(fc, floor, tr, va, te, inputs, residual=True, train_cfg=cfg, model_config=small)
    assert set(bare) == {"net", "resid"} and all(len(v) == len(te) for v in bare.values())
    assert _val_qlike(floored, va, inputs) <= _floor_val_qlike(floor, va, inputs) + 1e-9
    assert floored.choice.w > 0  # the planted f1 -> rv signal is there to learn: the net earns weight
    cal = Calibrator.from_dict(json.loads(json.dumps(floored.calibrator.to_dict())))
    assert cal.q_rv_tod and cal.vol_ctx is not None


@pytest.mark.parametrize("seed", range(5))
def test_blend_choice_is_bounded_by_the_floor(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    latent = rng.normal(-12, 0.5, n)
    y = np.sqrt(np.exp(latent + rng.normal(0, 0.7, n)))
    lv_floor = latent + rng.normal(0, 0.4, n)
    lv_net = latent + rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 2.0), n)
    w, c, q, grid = choose_blend(lv_net, lv_floor, y)
    assert q <= M.qlike(np.exp(lv_floor), y**2) + 1e-12
    assert 0.0 <= w <= 1.0 and c > 0 and len(grid) == 12


def test_calibration_v1_dict_still_loads():
    cal = Calibrator.from_dict({"level": 0.8, "q_ret": 1.2, "q_rv": 1.1, "n_fit": 10,
                                "ret_conf": {"kind": "probit", "score": "z", "a": 0.0},
                                "vol_conf": {"x": [0.1, 0.5], "y": [0.6, 0.3]}})
    assert cal.vol_ctx is None and cal.q_rv_tod == [] and not cal.ret_informative
    out = cal.apply({"ret_mu": np.zeros(3), "ret_sigma": np.ones(3), "rv_hat": np.ones(3),
                     "lrv_sigma": np.full(3, 0.3)}, context={"tod": np.array([0.0, 100.0, 389.0])})
    assert np.allclose(out["rv_10m_hi"], np.exp(1.1 * 0.3))
    assert pd.Series(cal.info_columns(3)["ret_60m_conf_informative"]).eq(0.0).all()

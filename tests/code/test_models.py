"""One harness for every architecture: shapes, batch independence, causality, bundles, losses, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from hfcast.features.windows import Scaler, build_windows, synthetic_feature_frame
from hfcast.losses import BetaNLL, GaussianNLL, TwoTargetLoss
from hfcast.models import ARCHITECTURES, PRED_COLUMNS, RAW_OUTPUTS, build_model
from hfcast.models._modules import CausalConv1d, TemporalConvNet
from hfcast.forecaster import Forecaster as ServedForecaster
from hfcast.models.base import TrainedNet as Forecaster, gaussian_outputs
from hfcast.train import TrainConfig, train_forecaster, warmup_cosine
from model_configs import small_configs

F = 5
#: tiny widths keep the harness fast; defaults are exercised by the shape test
SMALL = small_configs(head_hidden=8)


@pytest.fixture(scope="module")
def windows():
    wa = build_windows(synthetic_feature_frame(n_symbols=2, n_days=3, n_features=F, seed=3), [f"f{j}" for j in range(F)])
    return wa.subset_dates(["2024-01-02", "2024-01-03"]), wa.subset_dates(["2024-01-04"])


def _scaler() -> Scaler:
    return Scaler(mean=np.zeros(F), std=np.ones(F), ret_scale=0.002, lrv_mean=math.log(1e-3), lrv_std=0.5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_model_output_shape_and_range(arch):
    torch.manual_seed(0)
    net = build_model(arch, 59).eval()
    out = net(torch.randn(7, 30, 59))
    assert out.shape == (7, len(RAW_OUTPUTS)) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out[:, [1, 3]].abs().max() < 5.0
    assert net.n_params() < 150_000, "defaults must stay small enough for 2-core CPU training"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rows_do_not_depend_on_the_rest_of_the_batch(arch):
    torch.manual_seed(0)
    net = build_model(arch, F, SMALL[arch]).eval()
    x = torch.randn(9, 30, F)
    with torch.no_grad():
        full = net(x)
        perm = torch.randperm(9)
        torch.testing.assert_close(net(x[perm]), full[perm], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x[4:5]), full[4:5], rtol=1e-5, atol=1e-5)
        x2 = x.clone()
        x2[0] += 10.0  # perturb another row: row 3 must not move
        torch.testing.assert_close(net(x2)[3], full[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradient_reaches_the_last_minute_and_inputs(arch):
    torch.manual_seed(0)
    net = build_model(arch, F, SMALL[arch])
    x = torch.randn(4, 30, F, requires_grad=True)
    net(x).sum().backward()
    assert x.grad[:, -1].abs().sum() > 0 and x.grad[:, 0].abs().sum() > 0  # the whole window is read
    assert all(p.grad is not None for p in net.parameters())


def test_causal_convolutions_never_read_the_future():
    torch.manual_seed(0)
    tcn, conv = TemporalConvNet(F, 8, 3, 3, 0.0).eval(), CausalConv1d(F, 4, 3, 2).eval()
    x = torch.randn(2, 30, F)
    y = x.clone()
    y[:, 20:] = torch.randn(2, 10, F)  # change the "future" after minute 19
    with torch.no_grad():
        torch.testing.assert_close(tcn(x)[:, :20], tcn(y)[:, :20])
        torch.testing.assert_close(conv(x.transpose(1, 2))[..., :20], conv(y.transpose(1, 2))[..., :20])
        assert not torch.allclose(tcn(x)[:, 20:], tcn(y)[:, 20:])


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown architecture 'gru'"):
        build_model("gru", F)
    with pytest.raises(ValueError, match="d_modle"):
        build_model("transformer", F, {"d_modle": 8})


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("calibrated", [False, True])
def test_bundle_roundtrip_gives_identical_predictions(arch, calibrated, tmp_path: Path):
    from hfcast.calibration import Calibrator

    torch.manual_seed(1)
    fc = Forecaster(build_model(arch, F, SMALL[arch]), _scaler(), [f"f{j}" for j in range(F)], meta={"x": np.int64(3)})
    rng = np.random.default_rng(0)
    if calibrated:
        pred = fc.natural(fc.predict_raw(rng.standard_normal((300, 30, F)).astype(np.float32)))
        fc.calibrator = Calibrator().fit(pred, rng.normal(0, 0.002, 300), np.exp(rng.normal(math.log(1e-3), 0.5, 300)))
    fc.save(str(tmp_path / "b"))
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert files == {"model.json", "weights.safetensors", "scaler.json"} | ({"calibration.json"} if calibrated else set())
    served = ServedForecaster.load(str(tmp_path / "b"))  # an older single-network bundle is served as it is
    assert served.choice.vol == "net" and served.arch == f"net:{arch}"
    back = Forecaster.load(str(tmp_path / "b"))
    x = rng.standard_normal((11, 30, F)).astype(np.float32)
    assert back.arch == arch and back.meta == {"x": 3} and back.feature_names == fc.feature_names
    np.testing.assert_array_equal(back.predict_raw(x), fc.predict_raw(x))
    a, b = fc.predict(x), back.predict(x)
    assert list(a.columns) == list(PRED_COLUMNS)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_linear_skip_moves_only_the_log_variance_mean_and_keeps_a_seeds_weights(arch):
    """The skip (last minute's features -> lrv_mu, linear) starts at zero without a draw from the
    RNG: a seed gives the same encoder and heads with or without it, and the same outputs at first."""
    torch.manual_seed(0)
    bare = build_model(arch, F, {**SMALL[arch], "linear_skip": False}).eval()
    torch.manual_seed(0)
    net = build_model(arch, F, SMALL[arch]).eval()
    assert net.skip is not None and bare.skip is None
    sa, sb = net.state_dict(), bare.state_dict()
    assert set(sa) - set(sb) == {"skip"} and all(torch.equal(sa[k], sb[k]) for k in sb)
    x = torch.randn(6, 30, F)
    with torch.no_grad():
        torch.testing.assert_close(net(x), bare(x), rtol=0, atol=0)
        net.skip.copy_(torch.arange(1.0, F + 2).unsqueeze(-1) / 10)
        moved = net(x) - bare(x)
    expect = x[:, -1] @ net.skip[:-1, 0] + net.skip[-1, 0]
    torch.testing.assert_close(moved[:, 2], expect.detach(), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(moved[:, [0, 1, 3]]) == 0


def test_a_bundle_saved_before_the_skip_existed_still_loads(tmp_path: Path):
    import json

    torch.manual_seed(1)
    old = Forecaster(build_model("lstm", F, {**SMALL["lstm"], "linear_skip": False}), _scaler(), [f"f{j}" for j in range(F)])
    old.save(str(tmp_path / "b"))
    model = json.loads((tmp_path / "b" / "model.json").read_text())
    del model["config"]["linear_skip"]  # as written by the versions before it
    (tmp_path / "b" / "model.json").write_text(json.dumps(model))
    back = Forecaster.load(str(tmp_path / "b"))
    assert back.net.skip is None
    x = np.random.default_rng(0).standard_normal((5, 30, F)).astype(np.float32)
    np.testing.assert_array_equal(back.predict_raw(x), old.predict_raw(x))


def test_gaussian_fallback_matches_the_formulas():
    fc = Forecaster(build_model("lstm", F, SMALL["lstm"]), _scaler(), [f"f{j}" for j in range(F)])
    raw = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, math.log(2.0), 2.0, math.log(0.5)]], np.float32)
    nat = fc.natural(raw)
    np.testing.assert_allclose(nat["ret_mu"], [0.0, 0.002])
    np.testing.assert_allclose(nat["ret_sigma"], [0.002, 0.004])
    # sqrt(E[rv^2]) = exp(m + s^2): m = log 1e-3 + {0, 2 * 0.5}, s = {0.5, 0.25}
    np.testing.assert_allclose(nat["rv_hat"], [1e-3 * math.exp(0.25), 1e-3 * math.e * math.exp(0.0625)])
    np.testing.assert_allclose(nat["lrv_sigma"], [0.5, 0.25], rtol=1e-6)
    out = fc.postprocess(raw)
    np.testing.assert_allclose(out["ret_60m_conf"], [0.5, ndtr(0.5)])
    np.testing.assert_allclose(out["ret_60m_hi"] - out["ret_60m_lo"], 2 * 1.2815516 * nat["ret_sigma"], rtol=1e-6)
    ls = nat["lrv_sigma"]
    np.testing.assert_allclose(out["rv_10m_conf"], ndtr(math.log(1.25) / ls) - ndtr(math.log(0.75) / ls))
    # the interval is centred on the log median m = log rv_hat - s^2
    np.testing.assert_allclose(out["rv_10m_lo"], nat["rv_hat"] * np.exp(-ls**2 - 1.2815516 * ls), rtol=1e-6)
    np.testing.assert_allclose(out["rv_10m_hi"], nat["rv_hat"] * np.exp(-ls**2 + 1.2815516 * ls), rtol=1e-6)
    assert set(out) == set(PRED_COLUMNS) and gaussian_outputs(nat)["rv_10m_pred"][1] == nat["rv_hat"][1]


def test_pred_columns_agree_with_the_calibrator():
    from hfcast import calibration

    assert tuple(calibration.PRED_COLUMNS) == PRED_COLUMNS


def test_losses_against_hand_computed_values():
    c = 0.5 * math.log(2 * math.pi)
    mu, ls, y = torch.tensor([0.0, 0.0]), torch.tensor([0.0, math.log(2.0)]), torch.tensor([1.0, 2.0])
    rows = [0.5 + c, math.log(2.0) + 0.5 + c]
    assert GaussianNLL()(mu, ls, y).item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    # beta = 0.5: weight sigma^(2 * 0.5) = sigma -> rows weighted by 1 and 2
    assert BetaNLL(0.5)(mu, ls, y).item() == pytest.approx((rows[0] + 2 * rows[1]) / 2, rel=1e-6)
    # beta = 1: the mean's gradient is the MSE's, whatever sigma is
    m = torch.tensor([0.3], requires_grad=True)
    BetaNLL(1.0)(m, torch.tensor([1.7]), torch.tensor([1.0])).backward()
    assert m.grad.item() == pytest.approx(-(1.0 - 0.3), rel=1e-5)


def test_missing_labels_contribute_nothing_and_give_finite_grads():
    out = torch.tensor([[0.1, 0.0, 0.2, 0.0], [5.0, 1.0, 5.0, 1.0]], requires_grad=True)
    y = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    loss_fn = TwoTargetLoss(beta=0.5, w_ret=2.0, w_vol=3.0)
    total, parts = loss_fn(out, y)
    ret_only = 2.0 * BetaNLL(0.5)(out[:1, 0], out[:1, 1], y[:1, 0])
    assert total.item() == pytest.approx(ret_only.item(), rel=1e-6) and parts["vol"].item() == 0.0
    total.backward()
    assert torch.isfinite(out.grad).all() and out.grad[1].abs().sum() == 0


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.1, 0.05)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.05, abs=1e-3)


def test_train_config_from_params_rejects_unknown_keys():
    from hfcast.config import load_params

    repo_params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")["train"]
    assert TrainConfig.from_params(repo_params) == TrainConfig()  # params.yaml and defaults agree
    assert TrainConfig.from_params({"epochs": 2}).epochs == 2
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_params({"epochz": 2})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_is_deterministic_for_a_seed(arch, windows):
    train, val = windows
    cfg = TrainConfig(epochs=2, batch_size=64, max_train_windows=256, max_val_windows=128, seed=5, num_threads=1)
    runs = [train_forecaster(arch, train, val, SMALL[arch], cfg, calibrate=False, progress=False) for _ in range(2)]
    other, _ = train_forecaster(arch, train, val, SMALL[arch], TrainConfig(**{**cfg.to_dict(), "seed": 6}),
                                calibrate=False, progress=False)
    sa, sb, sc = (f.net.state_dict() for f in (runs[0][0], runs[1][0], other))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    timing = ("seconds", "cpu_seconds", "windows_per_s")
    assert [{k: v for k, v in e.items() if k not in timing} for e in runs[0][1]["epochs"]] == \
        [{k: v for k, v in e.items() if k not in timing} for e in runs[1][1]["epochs"]]


def test_trainer_history_scaler_and_calibration(windows):
    train, val = windows
    seen = []
    fc, hist = train_forecaster("tcn", train, val, SMALL["tcn"],
                                TrainConfig(epochs=3, batch_size=128, max_train_windows=400, patience=1, num_threads=1),
                                progress=False, on_epoch=seen.append)
    assert hist["n_train_windows"] == 400 and len(seen) == len(hist["epochs"]) >= 1
    assert 0 <= hist["best_epoch"] < len(hist["epochs"]) and hist["windows_per_s"] > 0
    assert hist["best_val_loss"] == min(e["val_loss"] for e in hist["epochs"])
    assert hist["calibrated"] and fc.calibrator is not None and fc.meta["train_dates"] == ["2024-01-02", "2024-01-03"]
    assert fc.net.skip.abs().sum() > 0  # the linear path is trained with the rest
    # the scaler saw the training rows only
    rows = train.rows_covered()
    np.testing.assert_allclose(fc.scaler.mean, train.X[rows].astype(np.float64).mean(0), rtol=1e-5)
    out = fc.predict(val.windows(np.arange(20)))
    assert out.notna().all().all() and ((out.ret_60m_conf >= 0) & (out.ret_60m_conf <= 1)).all()
    assert (out.rv_10m_lo <= out.rv_10m_pred).all() and (out.rv_10m_pred <= out.rv_10m_hi).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_onnx_export_with_dynamic_batch(arch, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_model(arch, F, SMALL[arch]).eval()
    path = tmp_path / f"{arch}.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(net, (torch.randn(4, 30, F),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_shapes={"x": {0: batch}}, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 17):
        x = torch.randn(b, 30, F)
        got = sess.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gpu_training_with_amp_and_compile(arch, windows):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    train, val = windows
    fc, hist = train_forecaster(arch, train, val, SMALL[arch], TrainConfig(epochs=2, batch_size=128), progress=False)
    assert hist["device"].startswith("cuda") and hist["amp"] in ("bfloat16", "float16") and hist["compiled"]
    assert next(fc.net.parameters()).device.type == "cpu" and np.isfinite(hist["best_val_loss"])

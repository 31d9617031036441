"""ONNX export parity for every architecture, dynamic batch, runners, TensorRT logic, Triton layout."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from hfcast import export, integrity, runners
from hfcast.models import ARCHITECTURES
from serving_fixtures import cli_settings, register_forecaster, tiny_forecaster

N_FEATURES = 8


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """Dynamo exports cost seconds each: export every architecture once per module."""
    cache = {}

    def get(arch):
        if arch not in cache:
            fc = tiny_forecaster(arch, N_FEATURES)
            cache[arch] = (fc, export.export_onnx(fc, tmp_path_factory.mktemp(arch) / "model.onnx"))
        return cache[arch]

    return get


@pytest.fixture(params=ARCHITECTURES)
def exported(request, onnx_cache):
    return onnx_cache(request.param)


def test_onnx_parity_every_architecture(exported):
    fc, res = exported
    assert res.parity["max_rel_err"] < export.PARITY_TOL_FP32, res.parity
    assert set(res.parity["per_batch"]) == {1, 7, 64}
    # an independent check with fresh windows and the Forecaster's own torch path
    x = np.random.default_rng(5).standard_normal((33, 30, N_FEATURES)).astype(np.float32)
    got = runners.OnnxRuntimeRunner(res.path).run(x)
    assert export.rel_err(got, fc.predict_raw(x)) < export.PARITY_TOL_FP32


def test_onnx_has_dynamic_batch_and_opset(exported):
    _, res = exported
    model = onnx.load(str(res.path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == export.INPUT_NAME
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [30, N_FEATURES]
    runner = runners.OnnxRuntimeRunner(res.path)
    for b in (1, 64):
        assert runner.run(np.zeros((b, 30, N_FEATURES), np.float32)).shape == (b, 4)


def test_exporter_recorded(exported):
    _, res = exported
    assert res.exporter in ("dynamo", "torchscript")
    assert (res.fallback_reason is None) == (res.exporter == "dynamo")


def test_rel_err_definition():
    ref = np.array([[1.0, -2.0, 0.0, 0.001]])
    assert export.rel_err(ref, ref) == 0.0
    assert export.rel_err(ref * (1 + 1e-3), ref) == pytest.approx(1e-3, rel=1e-6)
    # near zero the floor (1e-2) keeps the measure absolute-like instead of exploding
    assert export.rel_err(ref + np.array([[0, 0, 1e-6, 0]]), ref) == pytest.approx(1e-4)
    assert export.rel_err(np.full((1, 4), np.nan), ref) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        export.rel_err(ref[:, :3], ref)


def test_parity_check_catches_a_wrong_export():
    fc = tiny_forecaster("tcn", N_FEATURES)
    ref = runners.TorchRunner(fc).run
    res = export.check_parity(lambda x: ref(x) * 1.01, ref, N_FEATURES)
    assert res["max_rel_err"] > export.PARITY_TOL_FP32


def test_runner_auto_choice_rule():
    assert runners.choose_runner_kind(cuda=True, tensorrt=True) == "tensorrt"
    assert runners.choose_runner_kind(cuda=True, tensorrt=False) == "torch-compiled"
    assert runners.choose_runner_kind(cuda=False, tensorrt=False) == "onnxruntime"
    assert runners.choose_runner_kind(cuda=False, tensorrt=True) == "onnxruntime"  # TensorRT needs a GPU


def test_make_runner_kinds_agree(onnx_cache):
    fc, res = onnx_cache("lstm")
    x = np.random.default_rng(1).standard_normal((5, 30, N_FEATURES)).astype(np.float32)
    ref = fc.predict_raw(x)
    auto = runners.make_runner("auto", fc, onnx_path=res.path)
    assert auto.kind == "onnxruntime" and auto.device == "cpu"  # this machine: no GPU
    for kind in ("torch", "onnxruntime"):
        r = runners.make_runner(kind, fc, onnx_path=res.path)
        assert r.kind == kind
        assert export.rel_err(r.run(x), ref) < export.PARITY_TOL_FP32, kind
    with pytest.raises(ValueError, match="unknown runner kind"):
        runners.make_runner("tflite", fc)


@pytest.mark.skipif(runners.tensorrt_available(), reason="checks the TensorRT-absent path")
def test_tensorrt_absent_says_so_plainly(tmp_path):
    fc = tiny_forecaster("tcn", N_FEATURES)
    with pytest.raises(RuntimeError, match="TensorRT is not available"):
        export.runner_for("tensorrt", fc)
    report = export.export_all(fc, tmp_path / "out", max_batch=256)
    assert report.tensorrt == runners.TENSORRT_ABSENT
    assert any("exported ONNX only" in n for n in report.notes)
    assert (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "out" / "model.plan").exists()
    cfg = (tmp_path / "out" / "triton" / "hfcast" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "KIND_CPU" in cfg
    assert (tmp_path / "out" / "triton" / "hfcast" / "1" / "model.onnx").exists()
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["onnx"]["parity"]["max_rel_err"] < export.PARITY_TOL_FP32


def test_trt_profile_shapes():
    p = export.trt_profile(59, max_batch=2048, opt_batch=64)
    assert p == {"min": (1, 30, 59), "opt": (64, 30, 59), "max": (2048, 30, 59)}
    with pytest.raises(ValueError):
        export.trt_profile(59, max_batch=32, opt_batch=64)


@pytest.mark.parametrize("name,kind,fp32", [
    ("/encoder/layers.0/norm1/LayerNormalization", "NORMALIZATION", True),
    ("ReduceMean_12", "REDUCE", True),
    ("/blocks.1/ln/Pow", "ELEMENTWISE", False),
    ("/head/layer_norm/Sqrt", "UNARY", True),
    ("/blocks.0/bn/BatchNormalization", "SCALE", True),
    ("/head/fc/MatMul", "MATRIX_MULTIPLY", False),
    ("/tcn/conv/Conv", "CONVOLUTION", False),
    ("/attn/Softmax", "SOFTMAX", False),
])
def test_which_layers_keep_fp32(name, kind, fp32):
    assert export.keep_fp32(name, kind) is fp32


def test_triton_config_content():
    cfg = export.triton_config(59, max_batch=1024)
    assert 'name: "hfcast"' in cfg and 'platform: "tensorrt_plan"' in cfg
    assert "max_batch_size: 1024" in cfg
    assert "dims: [ 30, 59 ]" in cfg and "dims: [ 4 ]" in cfg  # batch is Triton's implicit dim
    assert 'name: "window"' in cfg and 'name: "raw"' in cfg and cfg.count("TYPE_FP32") == 2
    assert "dynamic_batching {" in cfg and "preferred_batch_size: [ 64, 256 ]" in cfg
    assert "max_queue_delay_microseconds: 500" in cfg and "kind: KIND_GPU" in cfg
    assert cfg.count("{") == cfg.count("}") and cfg.count("[") == cfg.count("]")
    assert "preferred_batch_size: [ 64 ]" in export.triton_config(59, max_batch=100)


def test_triton_repo_layout_for_a_plan(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not-a-real-engine")
    d = export.write_triton_repo(tmp_path / "repo", plan, 59, version=3)
    assert (d / "3" / "model.plan").read_bytes() == b"not-a-real-engine"
    assert 'platform: "tensorrt_plan"' in (d / "config.pbtxt").read_text()


def test_cli_export_logs_artifacts_to_the_same_model_version(tmp_path, monkeypatch):
    """`hfcast export --model hfcast/1` with a real (sqlite) MLflow registry."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from hfcast import registry
    from hfcast.cli import app

    settings = cli_settings(tmp_path, monkeypatch)
    run_id, version = register_forecaster(settings, tiny_forecaster("tcn", N_FEATURES), tmp_path / "bundle")
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", "--model", f"hfcast/{version}", "--out", str(out), "--max-batch", "256"])
    assert res.exit_code == 0, res.output
    if not runners.tensorrt_available():
        assert "TensorRT is not available on this machine" in res.output and "exported ONNX only" in res.output
    assert "max relative error" in res.output
    client = MlflowClient(registry.tracking_uri(settings))
    logged = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {"export/model.onnx", "export/export.json", "export/triton"} <= logged
    mv = client.get_model_version("hfcast", str(version))
    assert mv.run_id == run_id and mv.tags["export.tensorrt"] in ("absent", "built")
    assert float(mv.tags["export.onnx_max_rel_err"]) < export.PARITY_TOL_FP32
    assert json.loads((out / "export.json").read_text())["logged_to_mlflow"] is True
    path, files = integrity.expected_export(mv.tags)
    # a version with no stored export gets this one: what its servers load
    assert path == f"export/serving/v{version}" and files["model.onnx"] == integrity.file_sha256(out / "model.onnx")


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_the_export_keeps_the_terminal_quiet(arch, tmp_path, capfd, caplog):
    """The dynamo exporter printed an INFO line per deduplicated initializer, "torchvision is not
    installed" per vision op, FutureWarnings of its internals and, for an LSTM, torch's UserWarning
    that nn.LSTM's flat weights "were assigned during export" into `hfcast train`; the export's own
    parity line stays, and the loggers are as they were after it."""
    import logging
    import warnings

    caplog.set_level(logging.INFO)
    before = {n: logging.getLogger(n).level for n in export._EXPORTER_LOGGERS}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = export.export_onnx(tiny_forecaster(arch, N_FEATURES), tmp_path / "model.onnx")
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
    assert not [w for w in seen if "were assigned during export" in str(w.message)], [str(w.message) for w in seen]
    out = capfd.readouterr()
    text = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)
    assert res.exporter == "dynamo" and "parity" in text
    for noise in ("Replaced initializer", "torchvision is not installed", "FutureWarning"):
        assert noise not in text, noise
    assert {n: logging.getLogger(n).level for n in export._EXPORTER_LOGGERS} == before

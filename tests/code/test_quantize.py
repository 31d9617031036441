"""The int8 runner: bounded error against fp32 (random and real windows), the guard, the choice."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import onnx
import pytest

from hfcast import export, quantize, runners
from hfcast.features.windows import build_windows, synthetic_feature_frame
from serving_fixtures import cli_settings, register_forecaster, tiny_forecaster

N_FEATURES = 8


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The default-size transformer exported and quantized once for the module."""
    fc = tiny_forecaster("transformer", N_FEATURES, small=False)
    folder = tmp_path_factory.mktemp("int8")
    res = export.export_onnx(fc, folder / "model.onnx")
    int8 = quantize.quantize_onnx(res.path, folder / quantize.INT8_FILE)
    return fc, res.path, int8


def _copy_model(src, folder):
    """model.onnx and its external weights (the dynamo exporter writes model.onnx.data)."""
    for f in src.parent.glob(src.name + "*"):
        if f.name != quantize.INT8_FILE:
            (folder / f.name).write_bytes(f.read_bytes())
    return folder / src.name


def _runners(quantized):
    fc, fp32_path, int8_path = quantized
    return fc, runners.OnnxRuntimeRunner(fp32_path, threads=1), runners.Int8Runner(int8_path, threads=1)


def test_int8_model_is_quantized(quantized):
    ops = {n.op_type for n in onnx.load(str(quantized[2])).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    assert runners.Int8Runner.kind == "onnxruntime-int8" == quantize.INT8_KIND


def test_int8_parity_random_windows(quantized):
    fc, fp32, int8 = _runners(quantized)
    x = np.random.default_rng(1).standard_normal((300, 30, N_FEATURES)).astype(np.float32)
    p = quantize.int8_parity(fp32.run, int8.run, x)
    assert 0 < p["max_abs_err"] < quantize.INT8_ABS_TOL, p  # lossy, but boundedly so
    assert p["mean_abs_err"] < quantize.INT8_ABS_TOL / 5, p


def test_int8_parity_real_windows(quantized):
    fc, fp32, int8 = _runners(quantized)
    df = synthetic_feature_frame(n_symbols=3, n_days=1, n_features=N_FEATURES, seed=5)
    wa = quantize.forecaster_scaled(fc, build_windows(df, fc.feature_names))
    x = np.ascontiguousarray(wa.windows(slice(0, 500)))
    p = quantize.int8_parity(fp32.run, int8.run, x)
    assert p["max_abs_err"] < quantize.INT8_ABS_TOL, p
    # and the natural-unit forecasts stay close: the int8 path changes numbers, not meaning
    a, b = fc.postprocess(int8.run(x), None), fc.postprocess(fp32.run(x), None)
    assert np.corrcoef(a["ret_60m_pred"], b["ret_60m_pred"])[0, 1] > 0.99


def test_guard_passes_identical_and_fails_perturbed(quantized):
    fc, fp32, _ = _runners(quantized)
    df = synthetic_feature_frame(n_symbols=3, n_days=1, n_features=N_FEATURES, seed=6)
    same = quantize.guard(fc, fp32.run, fp32.run, df, max_windows=600)
    assert same["passed"] and max(same["rel_change"].values()) == 0.0
    assert same["windows"] == 600 and set(same["rel_change"]) == {"vol_qlike", "ret_ic"}

    def shifted(x):  # a runner whose volatility forecast is 20% off
        out = fp32.run(x).copy()
        out[:, 2] += 0.5
        return out

    bad = quantize.guard(fc, fp32.run, shifted, df, max_windows=600)
    assert not bad["passed"] and bad["rel_change"]["vol_qlike"] > quantize.GUARD_REL_TOL


def test_guard_needs_labels(quantized):
    fc, fp32, _ = _runners(quantized)
    df = synthetic_feature_frame(n_symbols=1, n_days=1, n_features=N_FEATURES).drop(columns=["ret_60m", "rv_10m"])
    with pytest.raises(ValueError, match="no labels"):
        quantize.guard(fc, fp32.run, fp32.run, df)


def test_report_decides_the_auto_choice(quantized, tmp_path):
    fc, fp32_path, _ = quantized
    onnx_path = _copy_model(fp32_path, tmp_path)
    df = synthetic_feature_frame(n_symbols=2, n_days=1, n_features=N_FEATURES, seed=7)
    report = quantize.quantize_and_guard(fc, onnx_path, df, ["2024-01-02"], threads=1)
    stored = json.loads((tmp_path / quantize.REPORT_FILE).read_text())
    assert stored["use_int8"] == report["use_int8"] == report["guard"]["passed"]
    assert stored["parity_random"]["max_abs_err"] < quantize.INT8_ABS_TOL
    for verdict, kind, name in ((True, "onnxruntime-int8", quantize.INT8_FILE), (False, "onnxruntime", "model.onnx")):
        quantize.write_report(tmp_path, {**stored, "use_int8": verdict})
        assert quantize.cpu_choice(tmp_path, onnx_path) == (kind, str(tmp_path / name))
    tags = quantize.mlflow_tags(stored)
    assert set(tags) == {"export.int8", "export.int8_vol_qlike_rel_change", "export.int8_ret_ic_rel_change"}


def test_without_a_validation_span_int8_is_not_used(quantized, tmp_path):
    fc, fp32_path, _ = quantized
    onnx_path = _copy_model(fp32_path, tmp_path)
    report = quantize.quantize_and_guard(fc, onnx_path, None, threads=1)
    assert report["use_int8"] is False and "no validation span" in report["guard"]["reason"]
    assert quantize.cpu_choice(tmp_path, onnx_path)[0] == "onnxruntime"
    assert quantize.mlflow_tags(report)["export.int8"].startswith("not used")


def test_runner_for_int8(quantized, tmp_path):
    fc, fp32_path, int8_path = quantized
    r = export.runner_for("onnxruntime-int8", fc, onnx_path=_copy_model(fp32_path, tmp_path))
    assert r.kind == "onnxruntime-int8" and (tmp_path / quantize.INT8_FILE).exists()  # quantized beside it
    assert r.run(np.zeros((3, 30, N_FEATURES), np.float32)).shape == (3, 4)
    r = runners.make_runner("onnxruntime-int8", fc, onnx_path=int8_path)  # over the existing int8 file
    assert r.kind == "onnxruntime-int8" and "onnxruntime-int8" in runners.RUNNER_KINDS
    with pytest.raises(ValueError, match="int8 model"):
        runners.make_runner("onnxruntime-int8", fc)


def test_threads_per_worker():
    n = runners.cores()
    assert runners.threads_per_worker(1) == n
    assert runners.threads_per_worker(n + 5) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_streamed_runner_matches_one_call(quantized, threads):
    fc, fp32_path, int8_path = quantized
    x = np.random.default_rng(2).standard_normal((300, 30, N_FEATURES)).astype(np.float32)  # 2 full chunks + a rest
    one = runners.OnnxRuntimeRunner(fp32_path, threads=1).run(x)
    streamed = runners.StreamedRunner(fp32_path, threads=threads, chunk=128)
    assert streamed.streams == threads
    np.testing.assert_allclose(streamed.run(x), one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.run(x[:5]), one[:5], rtol=1e-5, atol=1e-6)  # small batch: one call
    # int8 activations are quantized per call (one scale per tensor), so results depend on the
    # chunking, not on the number of streams: same chunks -> identical outputs, run after run
    int8 = runners.Int8Runner(int8_path, threads=threads, chunk=128)
    np.testing.assert_array_equal(int8.run(x), runners.Int8Runner(int8_path, threads=1, chunk=128).run(x))


def test_cli_export_stores_the_verdict_and_registry_show_lists_it(tmp_path, monkeypatch):
    """`hfcast export` guards int8 on the version's validation day in the lake; `registry show` lists it."""
    from typer.testing import CliRunner

    from hfcast.cli import app
    from hfcast.storage import Lake

    settings = cli_settings(tmp_path, monkeypatch)
    df = synthetic_feature_frame(n_symbols=2, n_days=1, n_features=N_FEATURES, seed=9)
    Lake.from_settings(settings).write("features", "2024-01-02", df)
    fc = tiny_forecaster("transformer", N_FEATURES)
    fc.meta["val_dates"] = ["2024-01-02"]
    _, version = register_forecaster(settings, fc, tmp_path / "bundle")
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", "--model", f"hfcast/{version}", "--out", str(out), "--max-batch", "64"])
    assert res.exit_code == 0, res.output
    assert "int8 model:" in res.output
    report = json.loads((out / quantize.REPORT_FILE).read_text())
    assert report["guard"]["dates"] == ["2024-01-02"] and report["guard"]["windows"] > 0
    assert json.loads((out / "export.json").read_text())["quantization"]["use_int8"] == report["use_int8"]
    shown = CliRunner().invoke(app, ["registry", "show", f"hfcast/{version}"])
    assert shown.exit_code == 0, shown.output
    assert "export.int8" in shown.output and "export.int8_vol_qlike_rel_change" in shown.output


def test_predict_auto_computes_the_verdict_once_and_follows_it(tmp_path):
    from hfcast.predict import choose_runner
    from hfcast.storage import Lake

    lake = Lake((tmp_path / "lake").as_uri())
    lake.write("features", "2024-01-02", synthetic_feature_frame(n_symbols=2, n_days=1, n_features=N_FEATURES, seed=4))
    fc = tiny_forecaster("transformer", N_FEATURES)
    bundle = tmp_path / "bundle"
    fc.meta["val_dates"] = ["2024-01-01"]  # not in the lake: fp32, nothing cached
    fc.save(str(bundle))
    kind, path = choose_runner(str(bundle), "auto", lake)
    export_dir = Path(path).parent  # the export cache keyed by the bundle's checksum (hfcast.integrity)
    assert (kind, Path(path).name) == ("onnxruntime", "model.onnx") and export_dir.parent.name == "exports"
    assert quantize.read_report(export_dir) is None
    fc.meta["val_dates"] = ["2024-01-02"]
    fc.save(str(bundle))  # new bundle bytes: a new export folder
    kind, path = choose_runner(str(bundle), "auto", lake)
    export_dir = Path(path).parent
    report = quantize.read_report(export_dir)
    assert report["guard"]["dates"] == ["2024-01-02"]
    expected = ("onnxruntime-int8", quantize.INT8_FILE) if report["use_int8"] else ("onnxruntime", "model.onnx")
    assert (kind, path) == (expected[0], str(export_dir / expected[1]))
    stamp = (export_dir / quantize.REPORT_FILE).stat().st_mtime_ns
    assert choose_runner(str(bundle), "auto", lake) == (kind, path)
    assert (export_dir / quantize.REPORT_FILE).stat().st_mtime_ns == stamp  # read, not recomputed


def test_batch_prediction_with_the_int8_runner(tmp_path, settings):
    """`hfcast predict --runner onnxruntime-int8`: same rows as fp32, forecasts close to them."""
    import pandas as pd

    from hfcast.predict import run_predict
    from hfcast.storage import Lake

    lake = Lake((tmp_path / "lake").as_uri())
    lake.write("features", "2024-01-02", synthetic_feature_frame(n_symbols=2, n_days=1, n_features=N_FEATURES, seed=8))
    settings = settings.with_(lake_url=lake.url)
    bundle = tmp_path / "bundle"
    tiny_forecaster("transformer", N_FEATURES, small=False).save(str(bundle))
    frames = {}
    for runner in ("onnxruntime", "onnxruntime-int8"):
        s = run_predict(settings, "2024-01-02", bundle_dir=str(bundle), runner=runner, progress=False,
                        out=(tmp_path / runner).as_uri())
        assert not s.failed and s.rows == 2 * 390, s.as_dict()
        csv_url = Lake((tmp_path / runner).as_uri()).predictions("hfcast", s.model_version, "2024-01-02")
        frames[runner] = pd.read_csv(csv_url)
    a, b = frames["onnxruntime-int8"], frames["onnxruntime"]
    assert a["ret_60m_pred"].notna().sum() == b["ret_60m_pred"].notna().sum() > 0
    assert np.corrcoef(a["rv_10m_pred"].dropna(), b["rv_10m_pred"].dropna())[0, 1] > 0.99


def test_quantizing_keeps_the_terminal_quiet(quantized, tmp_path, caplog):
    """onnxruntime's quantizer logs a pre-processing hint and a line per float tensor through the
    root logger; under `hfcast train` (INFO) that was dozens of lines nobody can act on."""
    import logging

    caplog.set_level(logging.INFO)
    quantize.quantize_onnx(quantized[1], tmp_path / quantize.INT8_FILE)
    assert (tmp_path / quantize.INT8_FILE).exists()
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    logging.getLogger().info("after")  # the filter is gone: the root logger speaks again
    assert caplog.records and caplog.records[-1].getMessage() == "after"
    assert not logging.getLogger().filters


def test_the_guard_is_logged_in_words():
    g = {"passed": True, "tolerance_rel": 0.005, "rel_change": {"vol_qlike": 5.2e-05, "ret_ic": float("inf")},
         "windows": 4096}
    assert quantize.guard_summary(g) == ("relative change int8 vs fp32: vol_qlike 0.005%, ret_ic not finite; "
                                         "tolerance 0.5% on 4096 windows")
    assert quantize.guard_summary({"passed": False, "reason": "no validation span"}) == "no validation span"

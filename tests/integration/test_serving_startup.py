"""A registered version's server starts from the export stored with it, quietly.

Registration exports the forecaster once (ONNX, int8 model, int8 guard verdict) and records the
checksum of each file as a tag of the version; a server (and a batch job) of the version fetches
those files, verifies them and never calls the exporter. A version registered before exports were
stored is exported on its first demand and stored then. Tampering is done where it would happen:
bytes changed in the stored ONNX in the artifact store, and in the local cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from hfcast import export, integrity, registry
from hfcast.config import get_settings
from hfcast.testing.servers import free_port
from serving_fixtures import feast_repo, start_serve, stop_serve, tiny_forecaster

pytestmark = pytest.mark.integration
F = 8
SERVED = ("model.onnx", "model.int8.onnx", "quantization.json")


def _log_run(settings, fc, bundle: Path) -> str:
    fc.save(str(bundle))
    return registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch=fc.arch, params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=fc.feature_names))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A feature store, and a tiny forecaster registered the platform's way (with its export)."""
    from hfcast.lifecycle import register_version

    tmp = tmp_path_factory.mktemp("startup")
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    settings = get_settings(env=env, cwd=tmp)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_uri
    windows = feast_repo(settings, F, n_symbols=2)
    fc = tiny_forecaster("tcn", F)
    run_id = _log_run(settings, fc, tmp / "bundle")
    return {"tmp": tmp, "env": env, "settings": settings, "run_id": run_id, "fc": fc, "windows": windows,
            "version": register_version(settings, run_id)}


def _stored_file(settings, run_id: str, tags, name: str) -> Path:
    from mlflow import MlflowClient

    uri = MlflowClient(tracking_uri=registry.tracking_uri(settings)).get_run(run_id).info.artifact_uri
    return Path(urlparse(uri).path) / integrity.expected_export(tags)[0] / name


def _no_exporter(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the exporter was called")
    monkeypatch.setattr(export, "export_onnx", refuse)


def test_registration_stores_the_export_with_its_checksums(project):
    settings = project["settings"]
    tags = registry.resolve(settings, f"hfcast/{project['version']}").tags
    path, want = integrity.expected_export(tags)
    assert path == f"export/serving/v{project['version']}" and sorted(want) == sorted(SERVED)
    for name in SERVED:  # the stored bytes are the recorded ones
        assert integrity.file_sha256(_stored_file(settings, project["run_id"], tags, name)) == want[name]


def test_a_registered_version_loads_its_stored_export_without_exporting(project, monkeypatch, tmp_path):
    from hfcast.predict import choose_runner, prepare_bundle

    settings = project["settings"]
    ref = f"hfcast/{project['version']}"
    _no_exporter(monkeypatch)
    fc = registry.load_forecaster(settings, ref)
    runner = export.serving_runner("onnxruntime", fc, settings)
    x = np.random.default_rng(1).standard_normal((4, 30, F)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), fc.predict_raw(x), rtol=1e-4, atol=1e-5)
    bundle_dir, _, _ = prepare_bundle(settings, ref, None)  # batch prediction finds the same verified files
    kind, onnx = choose_runner(bundle_dir, "onnxruntime")
    want = integrity.expected_export(registry.resolve(settings, ref).tags)[1]
    assert kind == "onnxruntime" and integrity.file_sha256(onnx) == want["model.onnx"]


def test_the_server_starts_quietly_from_the_stored_export_and_answers(project):
    tmp, env = project["tmp"], project["env"]
    log = tmp / "quiet.log"
    proc, base, _ = start_serve(["--model", f"hfcast/{project['version']}", "--max-staleness-s", "-1"], env, tmp, log)
    try:
        r = httpx.post(f"{base}/v2/models/hfcast/infer", timeout=30, json={
            "inputs": [{"name": "symbol", "datatype": "BYTES", "shape": [1], "data": ["S000"]}]})
        assert r.status_code == 200, r.text
        lines = log.read_text().splitlines()
    finally:
        stop_serve(proc)
    assert len(lines) < 10, "\n".join(lines)
    text = "\n".join(lines)
    assert "parity" not in text and "Warning" not in text and "torchvision" not in text  # no exporter ran
    assert f"version {project['version']}" in text and "(gRPC)" in text  # what it serves, and where

    verbose = tmp / "verbose.log"
    proc, _, _ = start_serve(["-v", "--model", f"hfcast/{project['version']}", "--max-staleness-s", "-1"], env, tmp,
                             verbose)
    stop_serve(proc)
    assert "Registering model" in verbose.read_text()  # -v shows the libraries' lines


def test_a_changed_stored_onnx_is_refused_at_start_in_one_line(project, tmp_path):
    from hfcast.lifecycle import register_version

    settings, env = project["settings"], {**project["env"], "HFCAST_HOME": str(project["tmp"] / ".hfcast")}
    run_id = _log_run(settings, tiny_forecaster("tcn", F, seed=5), tmp_path / "bundle")
    version = register_version(settings, run_id)
    tags = registry.resolve(settings, f"hfcast/{version}").tags
    stored = _stored_file(settings, run_id, tags, "model.onnx")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    res = subprocess.run([sys.executable, "-c", "from hfcast.cli import main; main()", "serve", "--model",
                          f"hfcast/{version}", "--no-feature-store", "--port", str(free_port()),
                          "--grpc-port", str(free_port())],
                         cwd=project["tmp"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "checksum mismatch in the stored export" in errors[0] and "model.onnx" in errors[0]
    assert "Traceback" not in res.stderr


def test_a_changed_local_copy_is_replaced_by_the_verified_stored_one(project):
    settings = project["settings"]
    ref = f"hfcast/{project['version']}"
    mv = registry.resolve(settings, ref)
    folder = registry.fetch_export(settings, mv, registry.download_bundle(settings, ref))
    want = integrity.expected_export(mv.tags)[1]
    (folder / "model.onnx").write_bytes(b"not the registered graph")
    again = registry.fetch_export(settings, mv, registry.download_bundle(settings, ref))
    assert again == folder and integrity.file_sha256(folder / "model.onnx") == want["model.onnx"]


def test_a_version_registered_before_stored_exports_is_exported_once_on_first_demand(project, monkeypatch):
    settings = project["settings"]
    version = registry.register(settings, project["run_id"])  # the bare registration of older releases
    ref = f"hfcast/{version}"
    assert integrity.expected_export(registry.resolve(settings, ref).tags) is None
    calls = []
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a) or real(*a, **k))
    fc = registry.load_forecaster(settings, ref)
    export.serving_runner("auto", fc, settings)
    assert len(calls) == 1 and integrity.expected_export(registry.resolve(settings, ref).tags) is not None
    export.serving_runner("auto", registry.load_forecaster(settings, ref), settings)
    assert len(calls) == 1  # stored: the next start fetches it


def test_a_forecaster_without_a_network_stores_nothing_and_needs_no_runner(project, tmp_path):
    from hfcast.lifecycle import register_version
    from serving_fixtures import tiny_composite

    settings = project["settings"]
    fc = tiny_composite("har_tod")
    version = register_version(settings, _log_run(settings, fc, tmp_path / "baseline"))
    assert integrity.expected_export(registry.resolve(settings, f"hfcast/{version}").tags) is None
    assert export.serving_runner("auto", registry.load_forecaster(settings, f"hfcast/{version}"), settings) is None


def test_a_failed_int8_quantization_stores_and_serves_fp32(project, monkeypatch, tmp_path):
    from hfcast import quantize
    from hfcast.lifecycle import register_version

    def broken(*_a, **_k):
        raise RuntimeError("no int8 kernel for this graph")
    monkeypatch.setattr(quantize, "quantize_onnx", broken)
    settings = project["settings"]
    version = register_version(settings, _log_run(settings, tiny_forecaster("tcn", F, seed=7), tmp_path / "b"))
    ref = f"hfcast/{version}"
    _, files = integrity.expected_export(registry.resolve(settings, ref).tags)
    assert sorted(files) == ["model.onnx", "quantization.json"]  # int8 is an option, not a condition
    runner = export.serving_runner("auto", registry.load_forecaster(settings, ref), settings)
    assert runner.kind == "onnxruntime"
    report = quantize.read_report(registry.fetch_export(settings, registry.resolve(settings, ref),
                                                        registry.download_bundle(settings, ref)))
    assert not report["use_int8"] and "no int8 kernel" in report["guard"]["reason"]


def test_a_fetched_version_serves_as_the_registry_loads_it_without_asking_again(project, monkeypatch):
    """What ``hfcast serve`` fetches in a child process crosses the process boundary whole and
    starts the runner with no further registry call and no export."""
    import pickle

    settings = project["settings"]
    ref = f"hfcast/{project['version']}"
    fetched = pickle.loads(pickle.dumps(registry.fetch_version(settings, ref)))
    assert fetched.export is not None and fetched.export_problem is None
    direct = registry.load_forecaster(settings, ref)

    def no_registry(*_a, **_k):
        raise AssertionError("the registry was asked again")
    monkeypatch.setattr(registry, "resolve", no_registry)
    _no_exporter(monkeypatch)
    fc = registry.load_fetched(fetched)
    assert {k: fc.meta[k] for k in ("model_name", "model_version", "run_id", "bundle_sha256")} == \
        {k: direct.meta[k] for k in ("model_name", "model_version", "run_id", "bundle_sha256")}
    x = np.random.default_rng(2).standard_normal((4, 30, F)).astype(np.float32)
    np.testing.assert_array_equal(fc.predict_raw(x), direct.predict_raw(x))
    runner = export.serving_runner("onnxruntime", fc, settings, fetched=fetched)
    np.testing.assert_allclose(runner.run(x), fc.predict_raw(x), rtol=1e-4, atol=1e-5)


def test_user_errors_cross_the_process_boundary_whole():
    import pickle

    for exc in (registry.RegistryError("model 'hfcast' has no version 9", "list the versions"),
                integrity.IntegrityError("checksum mismatch in the stored export", "register it again")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and back.lines() == exc.lines() and back.fix == exc.fix


def test_an_unfetchable_stored_export_is_named_and_the_verified_bundle_is_served(project, monkeypatch):
    settings = project["settings"]

    def refused(*_a, **_k):
        raise registry.RegistryError("cannot download export/serving/v1/model.onnx: 403 Forbidden", "let it read")
    monkeypatch.setattr(registry, "fetch_export", refused)
    fetched = registry.fetch_version(settings, f"hfcast/{project['version']}")
    assert fetched.export is None and "403 Forbidden" in fetched.export_problem
    runner = export.serving_runner("auto", registry.load_fetched(fetched), settings, fetched=fetched)
    assert runner.kind == "onnxruntime"  # the fp32 export of the verified bundle


def test_the_server_process_does_not_import_mlflow(project):
    """The registry work of a start happens in the forked child (serving.cli.prefetch); the server
    process loads the fetched files (why: bench/bench_startup.py)."""
    code = ("import sys\n"
            "from hfcast.config import get_settings\n"
            "from serving.cli import prefetch\n"
            "settings = get_settings()\n"
            f"fetching = prefetch(settings, 'hfcast/{project['version']}')\n"
            "from serving.core import Limits\n"
            "from serving.predictor import HfcastPredictor\n"
            "p = HfcastPredictor('hfcast', ref='unused', settings=settings, prefetch=fetching, limits=Limits())\n"
            "p.load()\n"
            "print(p.service.model_version, p.runner.kind, 'mlflow' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=project["tmp"], env=project["env"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-3:] == [str(project["version"]), "onnxruntime", "False"], res.stdout


def test_the_image_entry_point_fetches_in_a_child_and_serves_the_version(project):
    """``python -m serving --model_ref`` (the InferenceServices' command) starts the same way: the
    version fetched in the forked child, the server process without MLflow, its answers that version's."""
    code = ("import sys\n"
            "import serving.predictor as P\n"
            "def loaded(model, *_a):\n"
            "    model.load()\n"
            "    print(model.service.model_version, model.runner.kind, model.prefetch is not None, 'mlflow' in sys.modules)\n"
            "P.serve = loaded\n"
            "from serving.__main__ import main\n"
            "main()\n")
    argv = ["--model_ref", f"hfcast/{project['version']}", "--no_feature_store"]
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=project["tmp"], env=project["env"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-4:] == [str(project["version"]), "onnxruntime", "True", "False"], res.stdout

    tmp = project["tmp"]
    proc, base, _ = start_serve(["--model_ref", f"hfcast/{project['version']}", "--max_staleness_s", "-1"],
                                project["env"], tmp, tmp / "image-entry.log", image_entry=True)
    try:
        r = httpx.post(f"{base}/v2/models/hfcast/infer", timeout=30, json={
            "inputs": [{"name": "symbol", "datatype": "BYTES", "shape": [1], "data": ["S000"]}]})
        assert r.status_code == 200, r.text
        assert str(project["version"]) in r.text
    finally:
        stop_serve(proc)


def test_the_image_entry_point_names_a_missing_version_and_exits(project):
    res = subprocess.run([sys.executable, "-m", "serving", "--model_ref", "hfcast/999", "--no_feature_store",
                          "--http_port", str(free_port()), "--grpc_port", str(free_port())],
                         cwd=project["tmp"], env=project["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no version 999" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr

"""Every command error a user can fix is one or two lines naming the problem and the next step:
no traceback without ``-v``, a non-zero exit. Each case runs the real ``hfcast`` command."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving_fixtures import tiny_bundle

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
F = 8


def hfcast(tmp: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    pypath = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    full_env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast"), "PYTHONPATH": pypath, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hfcast.cli", *args], cwd=tmp, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_short_error(res: subprocess.CompletedProcess, *needles: str, max_lines: int = 6) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out and "─ Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip() and "mlflow.store.db.utils" not in ln]
    assert len(lines) <= max_lines, out
    for n in needles:
        assert n in out, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return hfcast(tmp, "serve", "--port", str(free_port()), "--grpc-port", str(free_port()), "--no-feature-store",
                  *args)


def test_serve_without_a_champion(tmp_path):
    res = serve(tmp_path)
    assert_short_error(res, "has no alias 'champion'", "hfcast registry list")
    assert res.returncode == 2
    verbose = hfcast(tmp_path, "-v", "serve", "--port", str(free_port()), "--grpc-port", str(free_port()),
                     "--no-feature-store")
    assert verbose.returncode != 0 and "Traceback" in verbose.stdout + verbose.stderr


def test_serve_a_missing_bundle(tmp_path):
    res = serve(tmp_path, "--bundle", str(tmp_path / "nope"))
    assert_short_error(res, "--bundle", "is missing, not a bundle folder", "fix:")
    assert res.returncode == 2


def test_serve_a_pickle_in_place_of_weights(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    (bundle / "members" / "tcn" / "weights.safetensors").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    assert_short_error(serve(tmp_path, "--bundle", str(bundle)), "checksum mismatch in bundle", "fix:")
    (bundle / "checksums.json").unlink()  # no manifest to catch it: the loader still never unpickles
    assert_short_error(serve(tmp_path, "--bundle", str(bundle)), "not in the safetensors format", "never loads pickles")


def test_serve_on_a_port_in_use(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        res = hfcast(tmp_path, "serve", "--bundle", str(bundle), "--port", str(port), "--grpc-port", str(free_port()))
    assert_short_error(res, f"port {port} is already in use", "--port")


@pytest.mark.parametrize("option", ["--max-batch=-5", "--max-batch=0", "--port=0", "--port=70000", "--max-body-mb=0"])
def test_serve_option_ranges(tmp_path, option):
    res = hfcast(tmp_path, "serve", option)
    assert res.returncode == 2 and option.split("=")[0] in res.stdout + res.stderr and "Traceback" not in res.stderr


def test_registered_model_whose_artifacts_were_deleted(tmp_path):
    from hfcast import registry
    from hfcast.config import get_settings

    settings = get_settings(env={"HFCAST_HOME": str(tmp_path / ".hfcast")}, cwd=tmp_path)
    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="tcn", params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=[f"f{j}" for j in range(F)]))
    version = registry.register(settings, run_id)
    from mlflow import MlflowClient

    uri = MlflowClient(tracking_uri=registry.tracking_uri(settings)).get_run(run_id).info.artifact_uri
    store = Path(uri.removeprefix("file://")).parents[1]  # <store>/<run>/artifacts: the run's bundle and the
    assert (store / "models").is_dir()                     # MLflow model the version points at both live here
    shutil.rmtree(store)
    res = serve(tmp_path, "--model", f"hfcast/{version}")
    assert_short_error(res, f"cannot download model 'hfcast' version {version}", "fix:")


def test_predict_a_date_without_features_names_the_dates_that_exist(tmp_path):
    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.features.engine import run_featurize
    from hfcast.storage import Lake

    lake = Lake((tmp_path / "lake").as_uri())
    write_synth(SimConfig(n_symbols=2, n_days=2, seed=1, start_date="2024-01-02"), lake, progress=False)
    run_featurize(lake, progress=False)
    bundle = tiny_bundle(tmp_path / "b", "tcn", F)
    res = hfcast(tmp_path, "predict", "--dates", "2030-01-02", "--bundle", str(bundle), "--runner", "onnxruntime",
                 env={"HFCAST_LAKE": lake.url})
    assert_short_error(res, "no features for 2030-01-02", "2024-01-02, 2024-01-03", "hfcast featurize --dates 2030-01-02")
    assert "onnx" not in (res.stdout + res.stderr).lower()  # refused before any export


def test_wrong_s3_signature_and_endpoint(tmp_path, s3, s3_bucket):
    env = {**s3.env(), "HFCAST_LAKE": f"{s3_bucket}/lake"}
    bundle = str(tiny_bundle(tmp_path / "b", "tcn", F))
    bad_secret = hfcast(tmp_path, "predict", "--dates", "2024-01-02", "--bundle", bundle,
                        env={**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret", "HFCAST_S3_SECRET": "wrong-secret"})
    assert_short_error(bad_secret, "S3 refused the credentials", "AWS_SECRET_ACCESS_KEY")
    dead = f"http://127.0.0.1:{free_port()}"
    bad_endpoint = hfcast(tmp_path, "predict", "--dates", "2024-01-02", "--bundle", bundle,
                          env={**env, "HFCAST_S3_ENDPOINT": dead, "AWS_ENDPOINT_URL": dead})
    assert_short_error(bad_endpoint, "cannot reach the S3 endpoint", "HFCAST_S3_ENDPOINT")


def _the_listed_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """The failures #30 listed (tracebacks or exit 1 before), each with the text that must name it."""
    a_file = tmp / "a-file"
    a_file.write_text("not a bundle")
    no_arch = tiny_bundle(tmp / "no-arch", "tcn", F)
    meta = json.loads((no_arch / "model.json").read_text())
    (no_arch / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("arch", "choice")}))
    bars = tmp / "bars.csv"
    bars.write_text("symbol,ts,bid,ask,bid_size,ask_size\nAAA,2024-01-02T14:30:00Z,1,1.01,5,5\n")
    port = free_port()
    return [
        (["serve", "--bundle", str(a_file)], "--bundle"),
        (["serve", "--bundle", str(no_arch)], "lacks arch"),
        (["serve", "--runner", "bogus"], "--runner"),
        (["serve", "--port", str(port), "--grpc-port", str(port)], "--grpc-port"),
        (["ingest", str(bars), "-f", "bbo", "--lake", "gopher://x"], "--lake"),
        (["ingest", str(bars), "-f", "bbo", "--calendar", "NOPE"], "--calendar"),
        (["predict", "--dates", "2024-01-02", "--out", "ftp://x/y"], "--out"),
    ]


def test_the_listed_failures_are_two_lines_exit_2(tmp_path):
    for args, needle in _the_listed_cases(tmp_path):
        res = hfcast(tmp_path, *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "mlflow.store.db.utils" not in ln]
        assert res.returncode == 2, (args, res.stderr)
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  fix: "), (args, res.stderr)
        assert needle in lines[0] and "Traceback" not in res.stdout + res.stderr, (args, res.stderr)

"""The manifests' containers run for real: command, args and environment exactly as deployed.

Each container spec the project deploys is taken from manifests/ and started as a local process:
its ``command`` + ``args``, its ``env`` and ``envFrom`` resolved against the ConfigMap (base plus
the dev overlay's patch) and test Secrets. Only what a cluster provides is mapped: the image is
this tree (the venv's ``mlflow``/``python``/``hfcast`` on PATH, PYTHONPATH = the tree), Service DNS
names become 127.0.0.1 ports, mounted volumes become temp folders, and the ports KServe passes
(``--http_port``) and injects (``--predictor_host``) are added. The services behind them are real:
PostgreSQL, SeaweedFS (S3) and Redis on 127.0.0.1. "This tree" is installed as the images install it
(``pip install .``, not editable), so what only the source tree has (the Feast template) is caught.

- the MLflow Deployment (dev overlay) serves a Postgres backend store and S3 artifacts; a training
  run is logged and registered through it (the registry's own logging path, a tiny real bundle);
- the dev buckets Job creates the buckets and exits 0;
- the CPU InferenceService's predictor answers /v2/health/ready and a V1 request by symbol, its
  Feast repository rendered at start-up into the emptyDir and its windows read from Redis;
- the GPU InferenceService's transformer fetches a window from Redis for a symbol and sends it, scaled,
  to its predictor (Triton stands in as a stub that runs the same model's raw forward);
- the recurring-run Job submits the monitoring pipeline to a stub of the KFP API and exits 0.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from hfcast.testing.servers import SeaweedFS, free_port, wait_http
from _servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
DEV = MANIFESTS / "overlays" / "dev"
F = 8
SYMBOLS = ["S000", "S001", "S002"]


# --- manifests -> local processes ----------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _patched(doc: dict, patch_file: Path) -> dict:
    """A JSON 6902 ``replace`` patch of the dev overlay applied to ``doc``."""
    out = copy.deepcopy(doc)
    for op in yaml.safe_load(patch_file.read_text()):
        *parents, last = op["path"].strip("/").split("/")
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = op["value"]
    return out


def _configmap() -> dict[str, str]:
    base = _docs(MANIFESTS / "base" / "config.yaml")[0]["data"]
    return {**base, **_docs(DEV / "config-dev.yaml")[0]["data"]}  # the dev overlay's strategic merge


def _env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env entries."""
    cm, out = _configmap(), {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            out.update(cm)
        else:
            out.update(secrets[src["secretRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            out[e["name"]] = cm[e["valueFrom"]["configMapKeyRef"]["key"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secrets[ref["name"]][ref["key"]]
    return out


class Cluster:
    """What the cluster would provide: endpoints behind Service names, volumes, Secrets."""

    def __init__(self, tmp: Path, s3: SeaweedFS, pg: PostgresServer, redis: RedisServer, mlflow_port: int):
        self.tmp, self.s3 = tmp, s3
        self.secrets = {
            "hfcast-s3": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
            "hfcast-postgres": {"POSTGRES_USER": pg.user, "POSTGRES_PASSWORD": pg.password},
        }
        self.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        self.kfp_stub = KfpStub().start()
        self.replace = [  # cluster address -> local address (longest first)
            ("http://minio.hfcast.svc.cluster.local:9000", s3.endpoint),
            ("http://mlflow.hfcast.svc.cluster.local:5000", self.mlflow_uri),
            ("redis://redis.hfcast.svc.cluster.local:6379", redis.url),
            ("http://ml-pipeline.kubeflow.svc.cluster.local:8888", self.kfp_stub.url),
            ("@postgres:5432/", f"@127.0.0.1:{pg.port}/"),
            ("--host 0.0.0.0", "--host 127.0.0.1"),
            ("--port 5000", f"--port {mlflow_port}"),
        ]
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.image = _install_tree(tmp / "image")

    def _map(self, text: str, volumes: dict[str, Path]) -> str:
        for a, b in self.replace + [(k, str(v)) for k, v in volumes.items()]:
            text = text.replace(a, b)
        return text

    def spawn(self, name: str, container: dict, extra_args: list[str] = (), volumes: dict[str, Path] | None = None):
        """Start ``container`` as stated (image = this tree); returns the process."""
        volumes = volumes or {}
        for path in volumes.values():
            path.mkdir(parents=True, exist_ok=True)
        cmd = [self._map(c, volumes) for c in container["command"] + container.get("args", [])] + list(extra_args)
        env = {k: self._map(v, volumes) for k, v in _env(container, self.secrets).items()}
        venv_bin = str(Path(sys.executable).parent)  # mlflow's console script
        env.pop("PYTHONPATH", None)
        env.update(PATH=f"{self.image / 'bin'}:{venv_bin}:{os.environ['PATH']}", HOME=str(self.tmp),
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION=env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"))
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((proc, log))
        return proc, log

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.kfp_stub.stop()


def _install_tree(dest: Path) -> Path:
    """What the Dockerfiles' `pip install .` makes of this tree: a non-editable install (package data,
    data files, console scripts) in a venv of its own; the dependencies are this venv's."""
    import sysconfig

    wheels = dest.parent / "wheels"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip must not see the source tree as installed
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--ignore-installed",
                    "--prefix", str(dest), *map(str, wheels.glob("hfcast-*.whl"))], check=True, capture_output=True, env=env)
    for script in (dest / "bin").iterdir():  # pip wrote this venv's interpreter into the console scripts
        text = script.read_text(errors="replace") if script.is_file() and not script.is_symlink() else ""
        if text.startswith(f"#!{sys.executable}"):
            script.write_text(text.replace(sys.executable, str(dest / "bin" / "python"), 1))
    site = next(dest.glob("lib/python*/site-packages"))
    assert (site / "hfcast" / "feature_store.py").exists() and (dest / "bin" / "hfcast").exists(), "install failed"
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return dest


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    try:
        wait_http(url, timeout, proc)
    except Exception as exc:
        raise AssertionError(f"{url} not ready ({exc}); log:\n{_tail(log)}") from None


def _run_to_end(proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"did not finish in {timeout} s; log:\n{_tail(log)}") from None
    assert rc == 0, f"exit {rc}; log:\n{_tail(log)}"


# --- stubs for what has no local server: the KFP API and Triton ------------------------------------------

class _Stub:
    """A JSON HTTP server on 127.0.0.1 that records requests and answers with ``self.answer``."""

    def __init__(self):
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"null") if n else None
                stub.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "headers": dict(self.headers)})
                code, doc = stub.answer(self.command, self.path, body)
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KfpStub(_Stub):
    """The KFP v2beta1 API calls `hfcast pipeline submit --recurring-cron` makes."""

    def answer(self, method, path, body):
        if method == "GET" and path.startswith("/apis/v2beta1/experiments"):
            return 200, {}  # none yet: the client creates it
        if method == "POST" and path == "/apis/v2beta1/experiments":
            return 200, {**body, "experiment_id": "exp-1"}
        if method == "POST" and path == "/apis/v2beta1/recurringruns":
            return 200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"}
        if path.startswith("/apis/v2beta1/healthz"):
            return 200, {"multi_user": True}
        return 404, {"error": f"stub has no {method} {path}"}


class TritonStub(_Stub):
    """Triton's V2 infer endpoint for the TensorRT plan: window [B,30,F] in, raw [B,4] out."""

    def __init__(self, forecaster):
        super().__init__()
        self.forecaster = forecaster

    def answer(self, method, path, body):
        from hfcast.runners import INPUT_NAME, OUTPUT_NAME

        if method == "GET":
            return 200, {}
        tensor = next(t for t in body["inputs"] if t["name"] == INPUT_NAME)
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        raw = np.asarray(self.forecaster.predict_raw(x), dtype=np.float32)
        return 200, {"model_name": body.get("model_name", "hfcast"), "id": body.get("id", "1"),
                     "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(raw.shape),
                                  "data": raw.ravel().tolist()}]}


# --- the platform, once --------------------------------------------------------------------------------

def _recent_features(names: list[str], seed: int = 0) -> tuple[str, pd.DataFrame]:
    """35 consecutive minutes per symbol ending a minute ago (staleness limit 600 s), one UTC date."""
    end = pd.Timestamp.now(tz="UTC").floor("min") - pd.Timedelta(minutes=1)
    end = max(end, end.normalize() + pd.Timedelta(minutes=35))  # never across midnight
    ts = pd.date_range(end=end, periods=35, freq="min").astype("datetime64[us, UTC]")
    rng = np.random.default_rng(seed)
    frames = [pd.DataFrame({"symbol": pd.array([s] * len(ts), dtype="string"), "ts": ts,
                            **{n: rng.standard_normal(len(ts)).astype(np.float32) for n in names}}) for s in SYMBOLS]
    return str(end.date()), pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    with SeaweedFS() as s3, PostgresServer() as pg, RedisServer() as redis:
        cluster = Cluster(tmp, s3, pg, redis, mlflow_port=free_port())
        try:
            yield cluster, s3, pg, redis
        finally:
            cluster.stop()


def _container(path: Path, kind: str, name: str) -> dict:
    doc = next(d for d in _docs(path) if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc


@pytest.fixture(scope="module")
def buckets(platform):
    cluster, s3, _, _ = platform
    job = _container(DEV / "buckets-job.yaml", "Job", "hfcast-buckets")
    proc, log = cluster.spawn("buckets-job", job["spec"]["template"]["spec"]["containers"][0])
    _run_to_end(proc, log, 120)
    return {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


@pytest.fixture(scope="module")
def mlflow_server(platform, buckets):
    cluster, *_ = platform
    deployment = _patched(_container(MANIFESTS / "base" / "mlflow.yaml", "Deployment", "mlflow"), DEV / "mlflow-dev.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    proc, log = cluster.spawn("mlflow", container)
    probe = container["readinessProbe"]["httpGet"]
    _wait_ready(f"{cluster.mlflow_uri}{probe['path']}", proc, log, 180)
    return cluster.mlflow_uri, proc


def _client_settings(cluster: Cluster, s3: SeaweedFS, redis: RedisServer, home: Path):
    from hfcast.config import get_settings

    cm = _configmap()
    env = {"HFCAST_HOME": str(home), "HFCAST_LAKE": cm["HFCAST_LAKE"], "MLFLOW_TRACKING_URI": cluster.mlflow_uri,
           "HFCAST_FEAST_ONLINE": redis.url, **s3.env()}
    return get_settings(env=env, cwd=home)


@pytest.fixture(scope="module")
def registered(platform, mlflow_server):
    """A training run logged and registered through the cluster's MLflow, promoted to champion."""
    from mlflow import MlflowClient

    from hfcast import registry
    from serving_fixtures import tiny_bundle

    cluster, s3, _, redis = platform
    settings = _client_settings(cluster, s3, redis, cluster.tmp / "train")
    bundle = tiny_bundle(cluster.tmp / "bundle", "tcn", F)
    spans = [("2024-02-01", "2024-02-05")]
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="tcn", params={"seed": 0}, epoch_metrics=[{"epoch": 0, "train_loss": 1.0}],
        fold_metrics=[{"fold": 0, "vol_qlike": 0.3, "ret_ic": 0.02}], aggregate_metrics={"vol_qlike": 0.3, "ret_ic": 0.02},
        test_spans=spans, dataset_version="md5:" + "0" * 32, feature_names=[f"f{j}" for j in range(F)]))
    version = registry.register(settings, run_id)
    MlflowClient(tracking_uri=cluster.mlflow_uri).set_registered_model_alias(settings.model_name, "champion", version)
    return settings, run_id, version


@pytest.fixture(scope="module")
def materialized(platform, registered):
    """The materialize step: recent features in the S3 lake, windows in Redis."""
    from hfcast import feature_store, storage
    from hfcast.storage import Lake

    cluster, s3, _, redis = platform
    settings = _client_settings(cluster, s3, redis, cluster.tmp / "materialize")
    names = [f"f{j}" for j in range(F)]
    day, df = _recent_features(names)
    lake = Lake.from_settings(settings)
    lake.write("features", day, df)
    storage.write_text(storage.join(lake.table("features"), "_feature_set.json"),
                       json.dumps({"features": names, "quotes_available": True}), lake.storage_options)
    feature_store.apply(settings)
    return feature_store.materialize_windows(settings, day)


# --- the tests -----------------------------------------------------------------------------------------

def test_buckets_job_creates_the_buckets(buckets):
    assert {"hfcast-lake", "hfcast-mlflow", "hfcast-models"} <= buckets


def test_mlflow_deployment_stores_runs_in_postgres_and_artifacts_in_s3(platform, registered):
    import psycopg2

    _, s3, pg, _ = platform
    settings, run_id, version = registered
    with psycopg2.connect(pg.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT version FROM model_versions WHERE name = %s", (settings.model_name,))
        assert version in {r[0] for r in cur.fetchall()}
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="hfcast-mlflow", Prefix="artifacts/").get("Contents", [])]
    assert any(k.endswith("model.json") for k in keys), keys[:20]  # the bundle went through --serve-artifacts


def _isvc_container(file: str, part: str) -> tuple[dict, dict]:
    isvc = _docs(MANIFESTS / "serving" / file)[0]
    comp = isvc["spec"][part]
    return comp, comp["containers"][0]


def _volumes(comp: dict, container: dict, root: Path) -> dict[str, Path]:
    """Each emptyDir mount of the container -> a fresh temp folder."""
    empty = {v["name"] for v in comp.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"]: root / m["name"] for m in container.get("volumeMounts", []) if m["name"] in empty}


def test_cpu_predictor_starts_as_deployed_and_serves_a_symbol_from_redis(platform, registered, materialized):
    cluster, *_ = platform
    _, _, version = registered
    comp, container = _isvc_container("isvc-cpu.yaml", "predictor")
    port = free_port()
    volumes = _volumes(comp, container, cluster.tmp / "predictor-pod")
    assert volumes, "the predictor needs a writable volume for the Feast repository"
    proc, log = cluster.spawn("predictor", container, ["--http_port", str(port), "--grpc_port", str(free_port())],
                              volumes)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(f"{base}/v2/health/ready", proc, log)
    r = httpx.post(f"{base}/v1/models/hfcast:predict", json={"instances": [{"symbol": s} for s in SYMBOLS]}, timeout=60)
    assert r.status_code == 200, (r.text, _tail(log))
    rows = r.json()["predictions"]
    assert [row["model_version"] for row in rows] == [str(version)] * len(SYMBOLS)
    want = {row.symbol: row.event_timestamp.isoformat() for row in materialized.itertuples()}
    assert [row["feature_ts"] for row in rows] == [want[s] for s in SYMBOLS]
    rendered = next(iter(volumes.values())) / "feature_repo" / "feature_store.yaml"
    assert yaml.safe_load(rendered.read_text())["online_store"]["type"] == "redis"


def test_gpu_transformer_fetches_a_window_from_redis_for_its_predictor(platform, registered, materialized):
    from hfcast.runners import INPUT_NAME
    from hfcast.forecaster import Forecaster

    cluster, *_ = platform
    fc = Forecaster.load(str(cluster.tmp / "bundle"))
    triton = TritonStub(fc).start()
    try:
        comp, container = _isvc_container("isvc-gpu-triton.yaml", "transformer")
        port = free_port()
        host = triton.url.removeprefix("http://")
        proc, log = cluster.spawn("transformer", container, ["--predictor_host", host, "--http_port", str(port),
                                                             "--grpc_port", str(free_port())],
                                  _volumes(comp, container, cluster.tmp / "transformer-pod"))
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/health/ready", proc, log)
        r = httpx.post(f"{base}/v1/models/hfcast:predict", json={"instances": [{"symbol": "S001"}]}, timeout=60)
        assert r.status_code == 200, (r.text, _tail(log))
        sent = [q for q in triton.requests if q["method"] == "POST"]
        assert len(sent) == 1, triton.requests
        tensor = next(t for t in sent[0]["body"]["inputs"] if t["name"] == INPUT_NAME)
        assert tensor["shape"] == [1, 30, F]
        stored = np.asarray(materialized.set_index("symbol").loc["S001", "window"], dtype=np.float32).reshape(1, 30, F)
        np.testing.assert_allclose(np.asarray(tensor["data"], dtype=np.float32).reshape(1, 30, F),
                                   fc.scaler.transform(stored), rtol=1e-5, atol=1e-6)
        row = r.json()["predictions"][0]
        assert row["feature_ts"] == materialized.set_index("symbol").loc["S001", "event_timestamp"].isoformat()
    finally:
        triton.stop()


def test_recurring_run_job_submits_the_monitoring_pipeline(platform):
    cluster, *_ = platform
    job = _container(DEV / "monitoring-recurring-run-job.yaml", "Job", "hfcast-monitoring-schedule")
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    token_mount = next(m["mountPath"] for m in container["volumeMounts"])
    token_dir = cluster.tmp / "kfp-token"
    token_dir.mkdir()
    (token_dir / "token").write_text("projected-token")
    proc, log = cluster.spawn("recurring-run-job", container, volumes={token_mount: token_dir})
    _run_to_end(proc, log, 180)
    created = [q["body"] for q in cluster.kfp_stub.requests if q["path"] == "/apis/v2beta1/recurringruns"]
    assert len(created) == 1, cluster.kfp_stub.requests
    rr = created[0]
    cmd = container["command"]
    assert rr["trigger"]["cron_schedule"]["cron"] == cmd[cmd.index("--recurring-cron") + 1]
    assert rr["service_account"] == spec["serviceAccountName"] == "hfcast-pipeline"
    assert rr["pipeline_spec"]["pipelineInfo"]["name"] == "hfcast-monitoring"
    inputs = _docs(ROOT / "pipelines" / "compiled" / "monitoring.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    assert set(rr["runtime_config"]["parameters"]) <= set(inputs)  # undeclared parameters are refused or ignored by KFP
    assert rr["runtime_config"]["parameters"]["kfp_host"] == cluster.kfp_stub.url

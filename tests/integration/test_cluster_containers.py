"""The manifests' containers run for real: command, args, environment and security context as deployed.

Each container spec the project deploys is taken from the rendered dev overlay (``kubectl
kustomize``, patches applied) or from manifests/serving/ and started as a local process: its
``command`` + ``args``, its ``env`` and ``envFrom`` resolved against the rendered ConfigMap and
test Secrets, its Secret and ConfigMap volumes as files. What is emulated of the pod:
- the user: the process runs as the manifest's ``runAsUser`` (setpriv: that uid and gid, no
  supplementary groups, no_new_privs, every capability dropped from the bounding and inheritable sets);
- the read-only root filesystem: in a private mount namespace (unshare) the root is remounted
  read-only and only the manifest's emptyDirs are writable (a mounted path that exists here, /tmp,
  is bound over; the others become folders the command and env are pointed at), so a write anywhere
  else fails as it would in the pod. Not emulated: seccomp, the network namespace (the services are
  on 127.0.0.1) and the image itself (this tree installed as the Dockerfiles install it:
  ``pip install .``, not editable, so what only the source tree has is caught). The interpreter
  lives under /root here: the namespace makes just that folder traversable (an image's Python is).
Only what a cluster provides is mapped: Service DNS names become 127.0.0.1 ports, and the ports
KServe passes (``--http_port``) and injects (``--predictor_host``). The services behind them are
real and authenticated as on the cluster: PostgreSQL, SeaweedFS (S3, with the dev overlay's
least-privilege identities) and Redis (the ACL of its Secret template) on 127.0.0.1.

- the MLflow Deployment (dev overlay) serves MLflow's basic-auth app on Postgres and S3; the users
  Job creates the pipeline and serving users; a training run is logged and registered through it as
  the pipeline user (the registry's own logging path, a tiny real bundle); no credentials, no access;
- the dev buckets Job creates the buckets (the admin S3 identity, from files) and exits 0;
- the CPU InferenceService's predictor answers /v2/health/ready and a V1 request by symbol, its
  Feast repository rendered at start-up into the emptyDir, its windows read from Redis with the
  password, its model read from MLflow as the serving user and its lake with the read-only identity;
- the GPU InferenceService's transformer fetches a window from Redis for a symbol and sends it, scaled,
  to its predictor (Triton stands in as a stub that runs the same model's raw forward);
- the recurring-run Job submits the monitoring pipeline to a stub of the KFP API and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from hfcast.testing.servers import S3Identity, SeaweedFS, free_port, wait_http
from _cluster import find, render
from _servers import PostgresServer, RedisServer, redis_acl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SECRET_TEMPLATES = MANIFESTS / "secrets"
F = 8
SYMBOLS = ["S000", "S001", "S002"]
SANDBOX_DIR = Path("/var/tmp")  # not under /tmp: /tmp itself is bound to each pod's emptyDir


# --- manifests -> local processes ----------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _identities() -> dict[str, S3Identity]:
    """The dev overlay's SeaweedFS identities (its Secret template) with fresh keys."""
    template = _docs(SECRET_TEMPLATES / "hfcast-seaweedfs.template.yaml")[0]["stringData"]["s3.json"]
    doc = json.loads(re.sub(r'"<[^">]*>"', '"x"', template))
    return {i["name"]: S3Identity(i["name"], f"{i['name']}-{secrets.token_hex(4)}", secrets.token_hex(12),
                                  tuple(i["actions"])) for i in doc["identities"]}


def _s3_secret(identity: S3Identity) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": identity.access_key, "AWS_SECRET_ACCESS_KEY": identity.secret_key}


class Cluster:
    """What the cluster would provide: endpoints behind Service names, volumes, Secrets, the pod sandbox."""

    def __init__(self, s3: SeaweedFS, ids: dict[str, S3Identity], pg: PostgresServer, redis: RedisServer,
                 mlflow_port: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="hfcast-cluster-", dir=SANDBOX_DIR))
        self.tmp.chmod(0o755)  # the pods' users (non-root) traverse it to reach their folders and the image
        self.s3, self.objects = s3, render("dev")
        self.configmap = find(self.objects, "ConfigMap", "hfcast-config")["data"]
        self.configmaps = {o["metadata"]["name"]: o["data"] for o in self.objects if o["kind"] == "ConfigMap"}
        mlflow_user = lambda who: {"MLFLOW_TRACKING_USERNAME": f"hfcast-{who}", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12)}
        self.secrets = {
            "hfcast-s3-pipeline": _s3_secret(ids["pipeline"]), "hfcast-s3-serving": _s3_secret(ids["serving"]),
            "hfcast-s3-mlflow": _s3_secret(ids["mlflow"]), "hfcast-s3-admin": _s3_secret(ids["admin"]),
            "hfcast-postgres": {"POSTGRES_USER": pg.user, "POSTGRES_PASSWORD": pg.password},
            "hfcast-mlflow-admin": {"username": "admin", "password": secrets.token_hex(12),
                                    "flask-secret-key": secrets.token_hex(16)},
            "hfcast-mlflow-pipeline": mlflow_user("pipeline"), "hfcast-mlflow-serving": mlflow_user("serving"),
            "hfcast-redis": {"REDIS_PASSWORD": redis.password, "users.acl": redis_acl(redis.password)},
        }
        self.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        self.kfp_stub = KfpStub().start()
        self.replace = {  # cluster address -> local address, applied in one pass (longest first)
            "http://minio.hfcast.svc.cluster.local:9000": s3.endpoint,
            "http://mlflow.hfcast.svc.cluster.local:5000": self.mlflow_uri,
            "redis.hfcast.svc.cluster.local:6379": f"127.0.0.1:{redis.port}",
            "http://ml-pipeline.kubeflow.svc.cluster.local:8888": self.kfp_stub.url,
            "//postgres:5432/": f"//127.0.0.1:{pg.port}/",
            "--host 0.0.0.0": "--host 127.0.0.1",
            "--port 5000": f"--port {mlflow_port}",
        }
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.image = _install_tree(self.tmp / "image")

    @staticmethod
    def _mapper(pairs: dict[str, str]):
        keys = sorted(pairs, key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, keys))) if keys else None
        return (lambda text: pattern.sub(lambda m: pairs[m.group(0)], text)) if pattern else (lambda text: text)

    def _env(self, container: dict) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom first, then env entries."""
        out = {}
        for src in container.get("envFrom", []):
            out.update(self.configmap if "configMapRef" in src else self.secrets[src["secretRef"]["name"]])
        for e in container.get("env", []):
            if "value" in e:
                out[e["name"]] = e["value"]
            elif "configMapKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["configMapKeyRef"]
                out[e["name"]] = self.configmaps[ref["name"]][ref["key"]]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                out[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        return out

    def _volumes(self, pod: dict, container: dict, pod_dir: Path, uid: int | None):
        """Each mounted volume as a local folder: (path mapping, binds, writable folders)."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mapping, binds, writable = {}, [], []
        for mount in container.get("volumeMounts", []):
            target = mount["mountPath"]
            local = pod_dir / "root" / target.lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            files: dict[str, str] = {}
            if "emptyDir" in volume:
                writable.append(local)
            elif "secret" in volume:
                data = self.secrets[volume["secret"]["secretName"]]
                items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
                files = {i["path"]: data[i["key"]] for i in items}
            elif "configMap" in volume:
                files = {k: self._mapper(self.replace)(v) for k, v in self.configmaps[volume["configMap"]["name"]].items()}
            elif "projected" in volume:  # the KFP API token (the stub does not check it)
                files = {s["serviceAccountToken"]["path"]: "projected-token" for s in volume["projected"]["sources"]}
            else:
                raise AssertionError(f"no local stand-in for volume {volume}")
            for name, text in files.items():
                (local / name).write_text(text)
                (local / name).chmod(0o400)
            if uid is not None:
                for path in (local, *local.iterdir()):
                    os.chown(path, uid, uid)
            if Path(target).exists():
                binds.append((local, target))  # e.g. /tmp: bound over in the pod's mount namespace
            else:  # the first folder that does not exist here stands for the pod's (and every mount below it)
                missing = Path(target)
                while not missing.parent.exists():
                    missing = missing.parent
                mapping[str(missing)] = str(pod_dir / "root" / str(missing).lstrip("/"))
        return mapping, binds, writable

    def spawn(self, name: str, pod: dict, container: dict, extra_args: list[str] = ()):
        """Start ``container`` of pod spec ``pod`` as stated (image = this tree, security context emulated)."""
        pod_dir = self.tmp / name
        pod_dir.mkdir()
        pod_dir.chmod(0o755)
        security = {**(pod.get("securityContext") or {}), **(container.get("securityContext") or {})}
        uid = security.get("runAsUser") if security.get("runAsNonRoot") else None
        mapping, binds, writable = self._volumes(pod, container, pod_dir, uid)
        to_local = self._mapper({**self.replace, **mapping})
        cmd = [to_local(c) for c in container.get("command", []) + container.get("args", [])] + list(extra_args)
        env = {k: to_local(v) for k, v in self._env(container).items()}
        venv_bin = str(Path(sys.executable).parent)  # mlflow's console script
        env.pop("PYTHONPATH", None)
        env["PATH"] = f"{self.image / 'bin'}:{venv_bin}:{os.environ['PATH']}"
        if security.get("readOnlyRootFilesystem") or uid is not None:
            cmd = _sandbox(cmd, uid, writable, binds, self.tmp)
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
        shutil.rmtree(self.tmp, ignore_errors=True)


def _sandbox(cmd: list[str], uid: int | None, writable: list[Path], binds: list[tuple[Path, str]],
             scratch: Path) -> list[str]:
    """``cmd`` in a private mount namespace with a read-only root where only ``writable`` folders (and
    the ``binds`` targets) can be written, run as ``uid`` without privileges (see the module docstring)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        raise AssertionError("emulating the pods' security context needs root, unshare and setpriv (util-linux), "
                             "as in CI (.ci/run runs as root)")
    q = shlex.quote
    interpreter = Path(os.path.realpath(sys.executable)).parents[3]  # e.g. /root/.pyenv (pyenv's tree)
    stage = scratch / "interpreter"
    stage.mkdir(exist_ok=True)
    script = ["set -e"]
    if interpreter.parent == Path("/root"):  # make only the interpreter's tree traversable for a non-root user
        script += [f"mount --bind {q(str(interpreter))} {q(str(stage))}", "mount -t tmpfs -o mode=0711,size=1m tmpfs /root",
                   f"mkdir {q(str(interpreter))}", f"mount --bind {q(str(stage))} {q(str(interpreter))}"]
    script += [f"mount --bind {q(str(d))} {q(str(d))}" for d in writable]
    script += [f"mount --bind {q(str(src))} {q(dst)}" for src, dst in binds]
    script += ["mount -o remount,bind,ro /", 'exec "$@"']
    user = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                                   "--inh-caps=-all", "--bounding-set=-all", "--"]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "pod", *user, *cmd]


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
def platform():
    ids = _identities()
    with SeaweedFS(identities=tuple(ids.values())) as s3, PostgresServer() as pg, \
            RedisServer(password=secrets.token_hex(16)) as redis:
        cluster = Cluster(s3, ids, pg, redis, mlflow_port=free_port())
        try:
            yield cluster, s3, ids, pg, redis
        finally:
            cluster.stop()


def _pod(cluster: Cluster, kind: str, name: str) -> dict:
    """The pod spec of a rendered workload."""
    return find(cluster.objects, kind, name)["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def buckets(platform):
    cluster, s3, *_ = platform
    pod = _pod(cluster, "Job", "hfcast-buckets")
    proc, log = cluster.spawn("buckets-job", pod, pod["containers"][0])
    _run_to_end(proc, log, 120)
    return {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


@pytest.fixture(scope="module")
def mlflow_server(platform, buckets):
    """The MLflow Deployment, then the users Job that creates the pipeline and serving users."""
    cluster, *_ = platform
    pod = _pod(cluster, "Deployment", "mlflow")
    container = pod["containers"][0]
    proc, log = cluster.spawn("mlflow", pod, container)
    _wait_ready(f"{cluster.mlflow_uri}{container['readinessProbe']['httpGet']['path']}", proc, log, 240)
    assert httpx.get(f"{cluster.mlflow_uri}{container['livenessProbe']['httpGet']['path']}").status_code == 200
    users_pod = _pod(cluster, "Job", "hfcast-mlflow-users")
    job, job_log = cluster.spawn("mlflow-users-job", users_pod, users_pod["containers"][0])
    _run_to_end(job, job_log, 180)
    return cluster.mlflow_uri, proc


@pytest.fixture(scope="module")
def pipeline_identity(platform):
    """This process as a pipeline step: the MLflow user and Redis password the PodDefault injects
    (MLflow's client and Feast read them from the environment)."""
    cluster, *_ = platform
    names = {**cluster.secrets["hfcast-mlflow-pipeline"], "REDIS_PASSWORD": cluster.secrets["hfcast-redis"]["REDIS_PASSWORD"]}
    before = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _client_settings(cluster: Cluster, ids: dict[str, S3Identity], home: Path):
    from hfcast.config import get_settings

    cm = cluster.configmap
    online = cm["HFCAST_FEAST_ONLINE"].replace("redis.hfcast.svc.cluster.local:6379",
                                               cluster.replace["redis.hfcast.svc.cluster.local:6379"])
    env = {"HFCAST_HOME": str(home), "HFCAST_LAKE": cm["HFCAST_LAKE"], "MLFLOW_TRACKING_URI": cluster.mlflow_uri,
           "HFCAST_FEAST_ONLINE": online, **ids["pipeline"].env(cluster.s3.endpoint)}
    return get_settings(env=env, cwd=home)


@pytest.fixture(scope="module")
def registered(platform, mlflow_server, pipeline_identity):
    """A training run logged and registered through the cluster's MLflow as the pipeline user, champion."""
    from mlflow import MlflowClient

    from hfcast import registry
    from serving_fixtures import tiny_bundle

    cluster, s3, ids, _, _ = platform
    settings = _client_settings(cluster, ids, cluster.tmp / "train")
    bundle = tiny_bundle(cluster.tmp / "bundle", "tcn", F)
    spans = [("2024-02-01", "2024-02-05")]
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="tcn", params={"seed": 0}, epoch_metrics=[{"epoch": 0, "train_loss": 1.0}],
        fold_metrics=[{"fold": 0, "vol_qlike": 0.3, "ret_ic": 0.02}], aggregate_metrics={"vol_qlike": 0.3, "ret_ic": 0.02},
        test_spans=spans, dataset_version="md5:" + "0" * 32, feature_names=[f"f{j}" for j in range(F)]))
    version = registry.register(settings, run_id)
    MlflowClient(tracking_uri=cluster.mlflow_uri).set_registered_model_alias(settings.model_name, "champion", version)
    (cluster.tmp / "bundle").chmod(0o755)
    return settings, run_id, version


@pytest.fixture(scope="module")
def materialized(platform, registered):
    """The materialize step, as the pipeline identity: recent features in the S3 lake, windows in Redis."""
    from hfcast import feature_store, storage
    from hfcast.storage import Lake

    cluster, s3, ids, _, _ = platform
    settings = _client_settings(cluster, ids, cluster.tmp / "materialize")
    names = [f"f{j}" for j in range(F)]
    day, df = _recent_features(names)
    lake = Lake.from_settings(settings)
    lake.write("features", day, df)
    storage.write_text(storage.join(lake.table("features"), "_feature_set.json"),
                       json.dumps({"features": names, "quotes_available": True}), lake.storage_options)
    feature_store.apply(settings)
    return feature_store.materialize_windows(settings, day)


# --- the tests -----------------------------------------------------------------------------------------

def test_the_pods_run_as_their_user_on_a_read_only_root(platform):
    """The emulation bites: a Job's pod, its command swapped for a probe, may write its emptyDir (/tmp,
    HOME) and nowhere else, as its non-root user without privileges."""
    cluster, *_ = platform
    pod = _pod(cluster, "Job", "hfcast-mlflow-users")
    probe = ("import os, pathlib, sys\n"
             "print('uid', os.getuid(), os.getgid(), os.getgroups())\n"
             "for path in ('/tmp/ok', os.environ['HOME'] + '/ok', '/var/tmp/no', sys.prefix + '/no', '/etc/no'):\n"
             "    try:\n        pathlib.Path(path).write_text('x'); print('wrote', path)\n"
             "    except OSError as exc:\n        print('refused', path, exc.strerror)\n")
    container = {**pod["containers"][0], "command": ["python", "-c", probe], "args": []}
    proc, log = cluster.spawn("probe", pod, container)
    _run_to_end(proc, log, 120)
    out = log.read_text()
    uid = pod["securityContext"]["runAsUser"]
    assert f"uid {uid} {uid} []" in out, out
    assert out.count("wrote /tmp/ok") == 2, out  # /tmp and HOME (/tmp in the manifest): its emptyDir
    assert out.count("refused") == 3 and "refused /var/tmp/no Read-only file system" in out, out
    assert (cluster.tmp / "probe" / "root" / "tmp" / "ok").exists()  # the emptyDir, not the machine's /tmp


def test_buckets_job_creates_the_buckets(buckets):
    assert {"hfcast-lake", "hfcast-mlflow", "hfcast-models"} <= buckets


def test_mlflow_deployment_stores_runs_in_postgres_and_artifacts_in_s3(platform, registered):
    import psycopg2

    _, s3, _, pg, _ = platform
    settings, run_id, version = registered
    with psycopg2.connect(pg.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT version FROM model_versions WHERE name = %s", (settings.model_name,))
        assert version in {r[0] for r in cur.fetchall()}
        cur.execute("SELECT username FROM users")  # MLflow's user store, in the same database
        assert {r[0] for r in cur.fetchall()} == {"admin", "hfcast-pipeline", "hfcast-serving"}
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="hfcast-mlflow", Prefix="artifacts/").get("Contents", [])]
    assert any(k.endswith("model.json") for k in keys), keys[:20]  # the bundle went through --serve-artifacts


def test_mlflow_refuses_anonymous_calls_and_serves_its_service_name(platform, mlflow_server):
    """Basic auth on every API call, and the Host a client in the cluster sends (the Service's DNS name,
    which MLflow 3.17 refuses unless allowed) is served; any other host is refused."""
    cluster, *_ = platform
    search = f"{cluster.mlflow_uri}/api/2.0/mlflow/experiments/search"
    user = cluster.secrets["hfcast-mlflow-serving"]
    auth = (user["MLFLOW_TRACKING_USERNAME"], user["MLFLOW_TRACKING_PASSWORD"])
    assert httpx.get(search, params={"max_results": 5}).status_code == 401
    assert httpx.get(search, params={"max_results": 5}, auth=auth).status_code == 200
    service = {"Host": "mlflow.hfcast.svc.cluster.local:5000"}
    assert httpx.get(search, params={"max_results": 5}, auth=auth, headers=service).status_code == 200
    assert httpx.get(search, params={"max_results": 5}, auth=auth, headers={"Host": "evil.example:5000"}).status_code in (400, 403)


def _isvc(file: str, part: str) -> tuple[dict, dict]:
    """(the component spec as a pod spec, its first container) of a generated InferenceService."""
    comp = _docs(MANIFESTS / "serving" / file)[0]["spec"][part]
    return comp, comp["containers"][0]


def test_cpu_predictor_starts_as_deployed_and_serves_a_symbol_from_redis(platform, registered, materialized):
    cluster, *_ = platform
    _, _, version = registered
    comp, container = _isvc("isvc-cpu.yaml", "predictor")
    port = free_port()
    proc, log = cluster.spawn("predictor", comp, container, ["--http_port", str(port), "--grpc_port", str(free_port())])
    base = f"http://127.0.0.1:{port}"
    _wait_ready(f"{base}{container['readinessProbe']['httpGet']['path']}", proc, log)
    assert httpx.get(f"{base}{container['livenessProbe']['httpGet']['path']}").status_code == 200
    r = httpx.post(f"{base}/v1/models/hfcast:predict", json={"instances": [{"symbol": s} for s in SYMBOLS]}, timeout=60)
    assert r.status_code == 200, (r.text, _tail(log))
    rows = r.json()["predictions"]
    assert [row["model_version"] for row in rows] == [str(version)] * len(SYMBOLS)
    want = {row.symbol: row.event_timestamp.isoformat() for row in materialized.itertuples()}
    assert [row["feature_ts"] for row in rows] == [want[s] for s in SYMBOLS]
    rendered = cluster.tmp / "predictor" / "root" / "var" / "lib" / "hfcast" / "feature_repo" / "feature_store.yaml"
    store = yaml.safe_load(rendered.read_text())["online_store"]
    assert store["type"] == "redis" and store["connection_string"].endswith("password=${REDIS_PASSWORD}")


def test_gpu_transformer_fetches_a_window_from_redis_for_its_predictor(platform, registered, materialized):
    from hfcast.runners import INPUT_NAME
    from hfcast.forecaster import Forecaster

    cluster, *_ = platform
    fc = Forecaster.load(str(cluster.tmp / "bundle"))
    triton = TritonStub(fc).start()
    try:
        comp, container = _isvc("isvc-gpu-triton.yaml", "transformer")
        port = free_port()
        host = triton.url.removeprefix("http://")
        proc, log = cluster.spawn("transformer", comp, container, ["--predictor_host", host, "--http_port", str(port),
                                                                   "--grpc_port", str(free_port())])
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}{container['readinessProbe']['httpGet']['path']}", proc, log)
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
    pod = _pod(cluster, "Job", "hfcast-monitoring-schedule")
    container = pod["containers"][0]
    proc, log = cluster.spawn("recurring-run-job", pod, container)
    _run_to_end(proc, log, 180)
    created = [q["body"] for q in cluster.kfp_stub.requests if q["path"] == "/apis/v2beta1/recurringruns"]
    assert len(created) == 1, cluster.kfp_stub.requests
    rr = created[0]
    cmd = container["command"]
    assert rr["trigger"]["cron_schedule"]["cron"] == cmd[cmd.index("--recurring-cron") + 1]
    assert rr["service_account"] == pod["serviceAccountName"] == "hfcast-pipeline"
    assert rr["pipeline_spec"]["pipelineInfo"]["name"] == "hfcast-monitoring"
    inputs = _docs(ROOT / "pipelines" / "compiled" / "monitoring.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    assert set(rr["runtime_config"]["parameters"]) <= set(inputs)  # undeclared parameters are refused or ignored by KFP
    assert rr["runtime_config"]["parameters"]["kfp_host"] == cluster.kfp_stub.url
    experiments = [q for q in cluster.kfp_stub.requests if q["path"].startswith("/apis/v2beta1/experiments")]
    assert experiments and all("namespace=hfcast" in q["path"] or (q["body"] or {}).get("namespace") == "hfcast"
                               for q in experiments)  # the profile namespace, with no API token to read it from
    sent = [{k.lower(): v for k, v in q["headers"].items()} for q in cluster.kfp_stub.requests]
    assert all(h.get("authorization") == "Bearer projected-token" for h in sent)  # the projected KFP token

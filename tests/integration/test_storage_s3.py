"""Storage against a real S3 server (SeaweedFS) and local folders: round trips, atomicity, redaction.

The interrupted-write tests kill a real writer process with SIGKILL in the middle of a write:
locally while the bytes sit in the temp file, on S3 while the body is still being uploaded
(through a throttling TCP relay, so that the kill lands mid-upload every time).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcast import storage
from hfcast.storage import Lake, StorageError

pytestmark = pytest.mark.integration


def _frame(n: int = 50) -> pd.DataFrame:
    ts = pd.date_range("2024-01-02 14:30", periods=n, freq="min", tz="UTC").astype("datetime64[us, UTC]")
    return pd.DataFrame({"symbol": pd.array(["AAA"] * n, dtype="string"), "ts": ts,
                         "x": np.arange(n, dtype=np.float32)})


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path, s3_bucket, s3):
    """A base URL and its storage options, for each backend."""
    if request.param == "file":
        return (tmp_path / "store").as_uri(), None
    return f"{s3_bucket}/store", s3.storage_options


def test_bytes_text_roundtrip_list_exists_remove(base):
    url, opts = base
    a, b = storage.join(url, "dir", "a.bin"), storage.join(url, "dir", "b.txt")
    assert not storage.exists(a, opts)
    assert storage.listdir(storage.join(url, "dir"), opts) == []
    storage.write_bytes(a, b"\x00\x01payload", opts)
    storage.write_text(b, "héllo", opts)
    assert storage.read_bytes(a, opts) == b"\x00\x01payload"
    assert storage.read_text(b, opts) == "héllo"
    assert storage.exists(a, opts)
    assert storage.listdir(storage.join(url, "dir"), opts) == ["a.bin", "b.txt"]
    storage.write_bytes(a, b"v2", opts)  # overwrite
    assert storage.read_bytes(a, opts) == b"v2"
    storage.remove(a, opts)
    assert not storage.exists(a, opts)
    assert storage.listdir(storage.join(url, "dir"), opts) == ["b.txt"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(a, opts)


def test_parquet_and_lake_partitions_roundtrip(base):
    url, opts = base
    lake = Lake(storage.join(url, "lake"), opts)
    df1, df2 = _frame(10), _frame(20)
    u = lake.write("features", "2024-01-03", df2)
    lake.write("features", "2024-01-02", df1)
    assert u.endswith("features/date=2024-01-03/part-0.parquet")
    assert lake.dates("features") == ["2024-01-02", "2024-01-03"]
    assert lake.dates("raw") == []
    assert lake.exists("features", "2024-01-02") and not lake.exists("features", "2024-01-04")
    back = lake.read("features", "2024-01-03")
    pd.testing.assert_frame_equal(back, df2)
    assert str(back["ts"].dtype) == "datetime64[us, UTC]"
    assert list(lake.read("features", "2024-01-02", columns=["x"]).columns) == ["x"]
    assert [d for d in lake.dates("features") if len(lake.read("features", d))] == ["2024-01-02", "2024-01-03"]


def test_lake_from_settings_on_s3(s3_settings):
    lake = Lake.from_settings(s3_settings)
    assert lake.url.startswith("s3://") and lake.storage_options["secret"] == s3_settings.s3_secret.reveal()
    lake.write("raw", "2024-01-02", _frame(5))
    assert lake.dates("raw") == ["2024-01-02"]


def test_exception_while_producing_data_leaves_nothing(base):
    url, opts = base
    target = storage.join(url, "t", "bad.parquet")
    bad = pd.DataFrame({"x": [1, "a", object()]})  # pyarrow cannot convert: raises mid-production
    with pytest.raises(Exception):
        storage.write_parquet(bad, target, opts)
    assert not storage.exists(target, opts)
    assert storage.listdir(storage.join(url, "t"), opts) == []
    lake = Lake(storage.join(url, "lake"), opts)
    with pytest.raises(Exception):
        lake.write("features", "2024-01-02", bad)
    assert lake.dates("features") == [] and not lake.exists("features", "2024-01-02")


def test_failed_overwrite_keeps_old_content(base):
    url, opts = base
    target = storage.join(url, "keep.parquet")
    storage.write_parquet(_frame(3), target, opts)
    with pytest.raises(Exception):
        storage.write_parquet(pd.DataFrame({"x": [1, "a", object()]}), target, opts)
    pd.testing.assert_frame_equal(storage.read_parquet(target, opts), _frame(3))


_WRITER = textwrap.dedent("""
    import os, sys, time
    from hfcast import storage
    url, size = sys.argv[1], int(sys.argv[2])
    opts = None
    if len(sys.argv) > 3:
        opts = {"key": os.environ["K"], "secret": os.environ["S"], "client_kwargs": {"endpoint_url": sys.argv[3]}}
    else:
        real = os.fsync
        def slow_fsync(fd):  # bytes are in the temp file now: announce, then wait to be killed
            print("IN_WRITE", flush=True)
            time.sleep(60)
            real(fd)
        os.fsync = slow_fsync
    print("START", flush=True)
    storage.write_bytes(url, os.urandom(size), opts)
    print("DONE", flush=True)
""")


def _writer(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_sigkill_mid_local_write_leaves_no_file(tmp_path: Path):
    folder = tmp_path / "lake" / "features" / "date=2024-01-02"
    target = folder / "part-0.parquet"
    proc = _writer([target.as_uri(), str(4 << 20)])
    try:
        assert proc.stdout.readline().strip() == "START"
        assert proc.stdout.readline().strip() == "IN_WRITE"
        hidden = [p for p in folder.iterdir() if p.name.startswith(".")]
        assert hidden and hidden[0].stat().st_size == 4 << 20  # the bytes were written: truly mid-way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    assert storage.listdir(folder.as_uri()) == []
    assert Lake((tmp_path / "lake").as_uri()).exists("features", "2024-01-02") is False


class _SlowRelay:
    """A TCP relay to the S3 server that forwards the client's bytes slowly and counts them."""

    def __init__(self, target_port: int, bytes_per_sec: int = 2 << 20):
        self.target_port, self.rate = target_port, bytes_per_sec
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.upstream_bytes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while chunk := src.recv(64 << 10):
                dst.sendall(chunk)
                if up:
                    self.upstream_bytes += len(chunk)
                    time.sleep(len(chunk) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_sigkill_mid_s3_upload_leaves_no_object(s3, s3_bucket):
    size = 16 << 20
    relay = _SlowRelay(s3.port)
    target = f"{s3_bucket}/lake/features/date=2024-01-02/part-0.parquet"
    proc = _writer([target, str(size), f"http://127.0.0.1:{relay.port}"],
                   env={"K": s3.access_key, "S": s3.secret_key})
    try:
        assert proc.stdout.readline().strip() == "START"
        deadline = time.monotonic() + 30
        while relay.upstream_bytes < 2 << 20:  # a few MB of the body are on their way
            assert time.monotonic() < deadline, "upload never started"
            assert proc.poll() is None, "writer ended before it could be killed"
            time.sleep(0.05)
        assert relay.upstream_bytes < size  # mid-way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.5)  # let the server notice the dropped connection
        relay.close()
    assert proc.returncode == -signal.SIGKILL
    opts = s3.storage_options
    assert not storage.exists(target, opts)
    assert storage.listdir(f"{s3_bucket}/lake/features", opts) == []
    keys = s3.client().list_objects_v2(Bucket=s3_bucket[len("s3://"):]).get("KeyCount", 0)
    assert keys == 0


def test_wrong_secret_message_never_contains_it(s3, s3_bucket):
    wrong = "WRONG-secret-9f8e7d6c5b4a"
    opts = {"key": s3.access_key, "secret": wrong, "client_kwargs": {"endpoint_url": s3.endpoint}}
    url = f"{s3_bucket}/x.bin"
    for call in (lambda: storage.write_bytes(url, b"data", opts), lambda: storage.read_bytes(url, opts),
                 lambda: storage.listdir(f"{s3_bucket}/", opts), lambda: storage.exists(url, opts)):
        with pytest.raises(StorageError) as info:
            call()
        msg = str(info.value)
        assert wrong not in msg and s3.secret_key not in msg
        assert url.split("/")[2] in msg  # names the bucket so the user knows what failed
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained raw error


def test_redact_removes_known_values_and_key_value_patterns(tmp_path: Path):
    from hfcast.config import get_settings

    s = get_settings(env={"AWS_ACCESS_KEY_ID": "AKIDREDACT", "AWS_SECRET_ACCESS_KEY": "plainsecretvalue"}, cwd=tmp_path)
    msg = "failed with AKIDREDACT / plainsecretvalue and aws_secret_access_key=zzz123 token: 'tok456'"
    out = storage.redact(msg, s)
    for leaked in ("AKIDREDACT", "plainsecretvalue", "zzz123", "tok456"):
        assert leaked not in out

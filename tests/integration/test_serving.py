"""The real KServe model server (`hfcast serve`) on 127.0.0.1 with a real Feast repository.

Answers are checked against calling the Forecaster directly; every malformed request must get a
4xx naming the problem and leave the server correct; a bounded load test must see zero errors.
"""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from hfcast.config import get_settings
from hfcast.contracts import INFO_COLUMNS
from hfcast.models import PRED_COLUMNS
from serving_fixtures import feast_repo, tiny_bundle

pytestmark = pytest.mark.integration
F, MAX_BATCH = 8, 128
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, env: dict, args: list[str]):
    """`hfcast serve ARGS` in a subprocess; returns (process, base URL, log file) once ready."""
    port, grpc = free_port(), free_port()
    cmd = [sys.executable, "-m", "hfcast.cli", "serve", "--port", str(port), "--grpc-port", str(grpc), *args]
    log = open(tmp / f"server-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {Path(log.name).read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server not ready in 180 s")


def stop_server(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    settings = get_settings(env=env, cwd=tmp)
    windows = feast_repo(settings, F, n_symbols=3, lag_minutes={"S002": 60})  # S002 ends an hour earlier
    newest = windows["event_timestamp"].max()
    limit = (pd.Timestamp.now(tz="UTC") - newest).total_seconds() + 1800  # S000/S001 fresh, S002 stale
    bundle = tiny_bundle(tmp / "bundle", "tcn", F)
    proc, base, log = start_server(tmp, env, ["--bundle", str(bundle), "--max-batch", str(MAX_BATCH),
                                              "--max-staleness-s", str(limit)])
    from hfcast.feature_store import OnlineWindows
    from hfcast.models.base import Forecaster

    try:
        yield {"base": base, "fc": Forecaster.load(str(bundle)), "online": OnlineWindows(settings), "proc": proc,
               "settings": settings}
    finally:
        stop_server(proc, log)


def v1(server, body, client=httpx):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"{server['base']}/v1/models/hfcast:predict", content=data,
                       headers={"content-type": "application/json"}, timeout=30)


def v2(server, body, client=httpx):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"{server['base']}/v2/models/hfcast/infer", content=data,
                       headers={"content-type": "application/json"}, timeout=30)


def v2_window(x, **params):
    return {"inputs": [{"name": "window", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **({"parameters": params} if params else {})}


def v2_symbols(symbols):
    return {"inputs": [{"name": "symbol", "datatype": "BYTES", "shape": [len(symbols)], "data": symbols}]}


def v2_columns(resp) -> dict:
    return {o["name"]: o["data"] for o in resp.json()["outputs"]}


def assert_matches(got: dict, ref: pd.DataFrame):
    for c in PRED_COLUMNS:
        np.testing.assert_allclose(np.asarray(got[c], dtype=np.float64), ref[c].to_numpy(), rtol=2e-4, atol=1e-7,
                                   err_msg=c)


def windows(b, seed=0):
    return np.random.default_rng(seed).standard_normal((b, 30, F)).astype(np.float32)


def test_health_and_version(server):
    base = server["base"]
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v1/models/hfcast").json()["ready"] is True
    meta = httpx.get(f"{base}/v2/models/hfcast").json()
    assert meta["versions"] == ["tiny-tcn"] and meta["inputs"][0]["shape"] == [-1, 30, F]


def test_v1_window_matches_direct_call(server):
    x = windows(5)
    r = v1(server, {"instances": [{"window": w} for w in x.tolist()]})
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert_matches({c: [row[c] for row in rows] for c in PRED_COLUMNS}, server["fc"].predict(x))
    assert {row["model_version"] for row in rows} == {"tiny-tcn"} and rows[0]["feature_ts"] == ""
    want = server["fc"].info_columns(1)  # whether this version's confidences are informative
    assert all(row[c] == want[c][0] for row in rows for c in INFO_COLUMNS)


def test_v2_window_raw_and_scaled_agree_with_direct_call(server):
    fc, x = server["fc"], windows(4, seed=1)
    raw = v2(server, v2_window(x))
    scaled = v2(server, v2_window(fc.scaler.transform(x), scaled=True))
    assert raw.status_code == 200 and scaled.status_code == 200, raw.text + scaled.text
    assert_matches(v2_columns(raw), fc.predict(x))
    assert_matches(v2_columns(scaled), fc.predict(x))
    assert raw.json()["model_version"] == "tiny-tcn"
    cols, want = v2_columns(raw), fc.info_columns(4)
    assert all(list(cols[c]) == want[c].tolist() for c in INFO_COLUMNS)


def test_symbols_come_from_feast(server):
    fc, symbols = server["fc"], ["S000", "S001"]
    online, ts, _ = server["online"](symbols)
    ref = fc.predict(online)
    r2 = v2(server, v2_symbols(symbols))
    assert r2.status_code == 200, r2.text
    cols = v2_columns(r2)
    assert_matches(cols, ref)
    assert cols["feature_ts"] == ["2024-01-02T20:59:00+00:00"] * 2
    r1 = v1(server, {"instances": [{"symbol": s} for s in symbols]})
    assert r1.status_code == 200, r1.text
    assert_matches({c: [row[c] for row in r1.json()["predictions"]] for c in PRED_COLUMNS}, ref)


def _binary(x, cut=0):
    header = json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes()[:x.nbytes - cut], {"content-type": "application/octet-stream",
                                                   "inference-header-content-length": str(len(header))}


def test_v2_binary_tensor_data(server):
    x, url = windows(3, seed=4), f"{server['base']}/v2/models/hfcast/infer"
    body, headers = _binary(x)
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert_matches(v2_columns(r), server["fc"].predict(x))
    body, headers = _binary(x, cut=100)  # shorter than the declared [3, 30, F]
    bad = httpx.post(url, content=body, headers=headers)
    assert bad.status_code == 400 and re.search(r"declares \d+ binary bytes, the body holds", bad.text), bad.text
    assert httpx.post(url, content=_binary(x)[0], headers=headers).status_code == 200


def _bad_window_v2(dtype="FP32", shape=(1, 30, F), data=None):
    return {"inputs": [{"name": "window", "datatype": dtype, "shape": list(shape),
                        "data": data if data is not None else [0.1] * int(np.prod(shape))}]}


GOOD = windows(1, seed=9)
MALFORMED = [
    ("v1", {"instances": [{"window": [[0.0] * F] * 29}]}, 400, "wrong window shape"),
    ("v2", _bad_window_v2(shape=(1, 30, F + 2)), 400, "wrong feature count"),
    ("v2", _bad_window_v2(dtype="FP64"), 400, "wrong datatype"),
    ("v2", _bad_window_v2(dtype="INT32", data=[1] * 30 * F), 400, "wrong datatype"),
    ("v1", {"instances": [{"window": [["0.5"] * F] * 30}]}, 400, "must be numbers"),
    ("v2", _bad_window_v2(data=["x"] * 30 * F), 400, "must be numbers"),
    # JSON has no NaN: KServe refuses the literal while decoding and names its position
    ("v1", b'{"instances": [{"window": ' + json.dumps([[0.0] * F] * 29 + [[float("nan")] * F]).encode() + b"}]}",
     400, r"Unrecognized request format: unexpected character, expected a JSON value: line 1 column \d+"),
    ("v1", {"instances": [{"window": [[0.0] * F] * 29 + [[1e39] * F]}]}, 400, "NaN or inf"),  # overflows float32
    ("v2", json.dumps(_bad_window_v2(data=[0.0] * (30 * F - 1) + [float("inf")])), 400, "NaN or inf"),
    ("v1", {"instances": []}, 400, "empty batch"),
    ("v2", _bad_window_v2(shape=(0, 30, F), data=[]), 400, "empty batch"),
    ("v2", _bad_window_v2(shape=(MAX_BATCH + 1, 30, F)), 400, f"exceeds the maximum batch size of {MAX_BATCH}"),
    ("v1", {"instances": [{"symbol": "NOPE"}]}, 400, "unknown symbol"),
    ("v2", v2_symbols(["S000", "NOPE"]), 400, "unknown symbol"),
    ("v2", v2_symbols(["S002"]), 400, "stale features"),
    ("v1", b'{"instances": [{"window": [[1, 2', 400, "Unrecognized request format"),
    ("v2", b'{"inputs": [{"name": "window"', 422, "JSON decode error"),
    ("v2", {"outputs": []}, 422, "inputs"),
]


@pytest.mark.parametrize("protocol,body,status,match", MALFORMED,
                         ids=[f"{p}-{m.split()[0]}-{i}" for i, (p, _, _, m) in enumerate(MALFORMED)])
def test_malformed_input_gets_4xx_and_server_stays_correct(server, protocol, body, status, match):
    r = (v1 if protocol == "v1" else v2)(server, body)
    assert r.status_code == status, r.text
    assert re.search(match, r.text), r.text
    ok = v2(server, v2_window(GOOD))
    assert ok.status_code == 200, ok.text
    assert_matches(v2_columns(ok), server["fc"].predict(GOOD))


def _load(server, make_body, send, seconds=3.0, clients=4) -> dict:
    lat, errors, lock = [], [], threading.Lock()
    stop = time.perf_counter() + seconds

    def worker():
        with httpx.Client() as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = send(server, make_body(), c)
                dt = time.perf_counter() - t0
                with lock:
                    (lat if r.status_code == 200 else errors).append(dt if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


@pytest.mark.parametrize("kind,batch", [("window", 1), ("window", 64), ("symbol", 1), ("symbol", 64)])
def test_bounded_load_has_zero_errors(server, kind, batch):
    if kind == "window":
        body = json.dumps(v2_window(windows(batch, seed=3)))
    else:
        body = json.dumps(v2_symbols([("S000", "S001")[i % 2] for i in range(batch)]))
    res = _load(server, lambda: body, v2, seconds=3.0, clients=4)
    print(f"\nload {kind} batch {batch}: {res['requests']} requests, {res['rps']:.1f} req/s "
          f"({res['rps'] * batch:.0f} rows/s), p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    assert res["errors"] == [] and res["requests"] > 0
    assert server["proc"].poll() is None


def test_serves_a_registered_version_from_mlflow(tmp_path):
    """`hfcast serve --model NAME@ALIAS` loads weights, scaler and calibration from the registry."""
    from hfcast import registry
    from hfcast.models.base import Forecaster

    env = {**os.environ, "HFCAST_HOME": str(tmp_path / ".hfcast")}
    settings = get_settings(env=env, cwd=tmp_path)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_uri
    bundle = tiny_bundle(tmp_path / "bundle", "lstm", F, seed=3)
    run_id = registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="lstm", params={}, epoch_metrics=None, fold_metrics=[],
        aggregate_metrics={"vol_qlike": 0.3}, test_spans=[("2024-01-02", "2024-01-02")], dataset_version=None,
        feature_names=[f"f{j}" for j in range(F)]))
    version = registry.register(settings, run_id)  # alias: challenger
    proc, base, log = start_server(tmp_path, env, ["--model", "hfcast@challenger", "--no-feature-store"])
    try:
        assert httpx.get(f"{base}/v2/models/hfcast").json()["versions"] == [str(version)]
        x = windows(3, seed=7)
        r = httpx.post(f"{base}/v2/models/hfcast/infer", json=v2_window(x), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == str(version)
        assert_matches(v2_columns(r), Forecaster.load(str(bundle)).predict(x))
    finally:
        stop_server(proc, log)

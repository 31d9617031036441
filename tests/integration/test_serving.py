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
F, MAX_BATCH, MAX_BODY_MB = 8, 128, 60
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
    # ages count session seconds only, as the server does (closed hours do not age features):
    # S000/S001 are fresh, S002 (an hour older, inside the session) is stale
    age = float(settings.market.trading_age_s(pd.DatetimeIndex([newest]), pd.Timestamp.now(tz="UTC"))[0])
    limit = age + 1800
    bundle = tiny_bundle(tmp / "bundle", "tcn", F)
    proc, base, log = start_server(tmp, env, ["--bundle", str(bundle), "--max-batch", str(MAX_BATCH),
                                              "--max-staleness-s", str(limit), "--max-body-mb", str(MAX_BODY_MB)])
    from hfcast.feature_store import OnlineWindows
    from hfcast.forecaster import Forecaster

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
    assert {row["model_version"] for row in rows} == {"tiny-tcn"} and rows[0]["feature_ts"] is None
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


# --- malformed requests: every one a 4xx naming the problem, the same connection still serving -----

GOOD = windows(1, seed=9)
H_JSON = {"content-type": "application/json"}
V1_PATH, V2_PATH = "/v1/models/hfcast:predict", "/v2/models/hfcast/infer"


def _w(rows=30, feats=F, value=0.1):
    return [[value] * feats for _ in range(rows)]


def _v2in(name="window", datatype="FP32", shape=(1, 30, F), data="auto", **extra):
    inp = {"name": name, "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape}
    if data == "auto":
        data = [0.1] * int(np.prod(shape))
    if data is not None:
        inp["data"] = data
    return {**inp, **extra}


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _binary_raw(spec: dict, payload: bytes, doc_extra: dict | None = None, header_len=None, tail=b""):
    header = json.dumps({"inputs": [spec], **(doc_extra or {})}).encode()
    hl = str(len(header)) if header_len is None else str(header_len)
    return header + payload + tail, {"content-type": "application/octet-stream",
                                     "inference-header-content-length": hl}


def _bin_window(x=None, size=None, shape=None, **kw):
    x = GOOD if x is None else x
    raw = x.astype("<f4").tobytes()
    spec = {"name": "window", "datatype": "FP32", "shape": list(x.shape) if shape is None else shape,
            "parameters": {"binary_data_size": len(raw) if size is None else size}}
    return _binary_raw(spec, raw, **kw)


def _bytes_elems(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


def _bin_symbol(raw: bytes, shape=(1,), size=None):
    spec = {"name": "symbol", "datatype": "BYTES", "shape": list(shape),
            "parameters": {"binary_data_size": len(raw) if size is None else size}}
    return _binary_raw(spec, raw)


def _big_v1() -> dict:
    return {"instances": [{"window": _w()} for _ in range(MAX_BATCH + 1)]}


V1_CASES = [
    (b'{"instances": [{"window": [[1, 2', "malformed JSON"),
    (b'{"instances": [{"window": [[NaN]]}]}', "malformed JSON"),
    (b"", "malformed JSON"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
    (b'{"instances": [1e999999]}', "malformed JSON|NaN or inf|wrong window shape"),
    (_j([1, 2, 3]), '"instances"'),
    (_j("abc"), '"instances"'),
    (_j({"foo": 1}), '"instances"'),
    (_j({"inputs": [_v2in()]}), "V2"),
    (_j({"instances": "abc"}), '"instances" must be a list'),
    (_j({"instances": {"window": _w()}}), '"instances" must be a list'),
    (_j({"instances": []}), "empty batch"),
    (_j({"instances": [{"window": _w(29)}]}), "wrong window shape"),
    (_j({"instances": [{"window": _w(31)}]}), "wrong window shape"),
    (_j({"instances": [{"window": _w(30, 5)}]}), "wrong feature count"),
    (_j({"instances": [{"window": [["0.5"] * F] * 30}]}), "string values"),
    (_j({"instances": [{"window": [[None] * F] * 30}]}), "null, object or mixed-type"),
    (_j({"instances": [{"window": [[True] * F] * 30}]}), "boolean"),
    (_j({"instances": [{"window": _w(29) + [[0.1] * (F - 1)]}]}), "must be numbers"),
    (_j({"instances": [{"window": _w(29) + [[1e39] * F]}]}), "NaN or inf"),
    (_j({"instances": [{"window": _w(29) + [[1e30] * F]}]}), "out of range"),
    (_j({"instances": [{"window": _w(29) + [[-1e30] * F]}]}), "out of range"),
    (_j({"instances": [{"window": "abc"}]}), "wrong window shape|must be numbers"),
    (_j({"instances": [{"window": {"a": 1}}]}), "must be numbers"),
    (_j({"instances": [{"window": 5}]}), "wrong window shape"),
    (_j({"instances": [[1, 2, 3]]}), "wrong window shape"),
    (_j({"instances": [{"window": [_w()]}]}), "wrong window shape"),
    (_j({"instances": [{"window": _w(value=10 ** 30)}]}), "out of range|must be numbers"),
    (_j({"instances": [{"symbol": ""}]}), "non-empty string"),
    (_j({"instances": [{"symbol": "   "}]}), "non-empty string"),
    (_j({"instances": [{"symbol": 123}]}), "non-empty string"),
    (_j({"instances": [{"symbol": None}]}), "non-empty string"),
    (_j({"instances": [{"symbol": ["S000"]}]}), "non-empty string"),
    (_j({"instances": [{"symbol": "S0\u0000B"}]}), "not a valid symbol"),
    (_j({"instances": [{"symbol": "S\nB"}]}), "not a valid symbol"),
    (_j({"instances": [{"symbol": "X" * 65}]}), "not a valid symbol"),
    (_j({"instances": [{"symbol": "NOPE"}]}), "unknown symbol"),
    (_j({"instances": [{"symbol": "S002"}]}), "stale features"),
    (_j({"instances": [{"symbol": "S000"}, {"window": _w()}]}), "mix symbols and windows"),
    (_j({"instances": [{"x": 1}]}), 'neither "window" nor "symbol"'),
    (_j({"instances": [{"window": _w()}], "parameters": {"scaled": "yes"}}), "must be a boolean"),
    (_j({"instances": [{"window": _w()}], "parameters": {"scaled": 1}}), "must be a boolean"),
    (_j({"instances": [{"window": _w()}], "parameters": [1]}), "parameters must be an object"),
    (_j(_big_v1()), f"exceeds the maximum batch size of {MAX_BATCH}"),
]

V2_JSON_CASES = [
    (b'{"inputs": [{"name": "window"', "malformed JSON"),
    (b'{"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 30, 8], "data": [NaN]}]}', "malformed JSON"),
    (b"", "malformed JSON"),
    (_j([1, 2]), "must be a JSON object"),
    (_j({"outputs": []}), '"inputs"'),
    (_j({"inputs": []}), '"inputs"'),
    (_j({"inputs": "window"}), '"inputs"'),
    (_j({"inputs": [_v2in(), _v2in()]}), "exactly one input"),
    (_j({"inputs": ["window"]}), "each input must be an object"),
    (_j({"inputs": [7]}), "each input must be an object"),
    (_j({"inputs": [{"datatype": "FP32", "shape": [1, 30, F], "data": [0.1] * 30 * F}]}), r"lacks \['name'\]"),
    (_j({"inputs": [{"name": "window", "datatype": "FP32", "data": [0.1] * 30 * F}]}), r"lacks \['shape'\]"),
    (_j({"inputs": [{"name": "window", "shape": [1, 30, F], "data": [0.1] * 30 * F}]}), r"lacks \['datatype'\]"),
    (_j({"inputs": [_v2in(name=5)]}), "name must be a string"),
    (_j({"inputs": [_v2in(name="prices")]}), "unknown input 'prices'"),
    (_j({"inputs": [_v2in(datatype="FP64")]}), "wrong datatype.*FP64, expected FP32"),
    (_j({"inputs": [_v2in(datatype="INT32", data=[1] * 30 * F)]}), "wrong datatype"),
    (_j({"inputs": [_v2in(datatype="BYTES")]}), "wrong datatype"),
    (_j({"inputs": [_v2in(datatype=7)]}), "wrong datatype"),
    (_j({"inputs": [_v2in(shape=30, data=[0.1] * 30)]}), "shape must be a list of integers"),
    (_j({"inputs": [_v2in(shape="1,30,8", data=[0.1])]}), "shape must be a list of integers"),
    (_j({"inputs": [_v2in(shape=[1.5, 30, F], data=[0.1])]}), "shape must be a list of integers"),
    (_j({"inputs": [_v2in(shape=[True, 30, F], data=[0.1])]}), "shape must be a list of integers"),
    (_j({"inputs": [_v2in(shape=[None, 30, F], data=[0.1])]}), "shape must be a list of integers"),
    (_j({"inputs": [_v2in(shape=[-2, 30, F], data=[0.1] * 60 * F)]}), "positive dimensions"),
    (_j({"inputs": [_v2in(shape=[1, -30, F], data=[0.1])]}), "positive dimensions"),
    (_j({"inputs": [_v2in(shape=[1, 30, 0], data=[])]}), "positive dimensions"),
    (_j({"inputs": [_v2in(shape=(0, 30, F), data=[])]}), "empty batch"),
    (_j({"inputs": [_v2in(shape=(1, 30), data=[0.1] * 30)]}), "wrong window shape"),
    (_j({"inputs": [_v2in(shape=(1, 29, F))]}), "wrong window shape"),
    (_j({"inputs": [_v2in(shape=(1, 30, F, 1))]}), "wrong window shape"),
    (_j({"inputs": [_v2in(shape=(1, 30, F + 2))]}), "wrong feature count"),
    (_j({"inputs": [_v2in(shape=(MAX_BATCH + 1, 30, F))]}), f"exceeds the maximum batch size of {MAX_BATCH}"),
    (_j({"inputs": [_v2in(shape=[10 ** 12, 30, F], data=[0.1])]}), "exceeds the maximum batch size"),
    (_j({"inputs": [_v2in(data=None)]}), 'has no "data"'),
    (_j({"inputs": [_v2in(data="abc")]}), "data must be a list of numbers"),
    (_j({"inputs": [_v2in(data={"a": 1})]}), "data must be a list of numbers"),
    (_j({"inputs": [_v2in(data=5.0)]}), "data must be a list of numbers"),
    (_j({"inputs": [_v2in(data=[0.1] * (30 * F - 1))]}), "does not hold matching data"),
    (_j({"inputs": [_v2in(data=[0.1] * (30 * F + 1))]}), "does not hold matching data"),
    (_j({"inputs": [_v2in(data=["x"] * 30 * F)]}), "string values"),
    (_j({"inputs": [_v2in(data=[None] * 30 * F)]}), "null, object or mixed-type"),
    (_j({"inputs": [_v2in(data=[True] * 30 * F)]}), "boolean"),
    (_j({"inputs": [_v2in(data=[[0.1] * F] * 29 + [[0.1] * (F - 1)])]}), "does not hold matching data"),
    (_j({"inputs": [_v2in(data=[0.0] * (30 * F - 1) + [1e39])]}), "NaN or inf"),
    (_j({"inputs": [_v2in(data=[0.0] * (30 * F - 1) + [1e30])]}), "out of range"),
    (_j({"inputs": [_v2in(data=[0.0] * (30 * F - 1) + [{"a": 1}])]}), "null, object or mixed-type"),
    (_j({"id": 5, "inputs": [_v2in()]}), '"id" must be a string'),
    (_j({"inputs": [_v2in()], "parameters": "x"}), "parameters must be an object"),
    (_j({"inputs": [_v2in()], "parameters": {"scaled": "maybe"}}), "must be a boolean"),
    (_j({"inputs": [_v2in(parameters=[1])]}), "parameters must be an object"),
    (_j({"inputs": [_v2in(parameters={"binary_data_size": 10}, data=None)]}), "inference-header-content-length"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (2, 1), ["S000", "S001"])]}), r"shape \[B\]"),
    (_j({"inputs": [_v2in("symbol", "FP32", (1,), [1.0])]}), "wrong datatype.*expected BYTES"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), [1.5])]}), "non-empty string"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (2,), ["S000"])]}), "holds 1 elements, expected 2"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), "S000")]}), "data must be a list of strings"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), [""])]}), "non-empty string"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), ["A\u0000B"])]}), "not a valid symbol"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), ["A\u007fB"])]}), "not a valid symbol"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (2,), ["S000", "NOPE"])]}), "unknown symbol"),
    (_j({"inputs": [_v2in("symbol", "BYTES", (1,), ["S002"])]}), "stale features"),
]

BINARY_CASES = [
    (_bin_window(header_len="abc"), "must be an integer"),
    (_bin_window(header_len=-5), r"must lie in \[1,"),
    (_bin_window(header_len=0), r"must lie in \[1,"),
    (_bin_window(header_len=10 ** 9), r"must lie in \[1,"),
    ((b"{nope" + _bin_window()[0], _bin_window()[1]), "unreadable JSON header"),
    (_binary_raw(_v2in(), b"")[:1] + ({"content-type": "application/octet-stream",
                                       "inference-header-content-length": "2"},), "unreadable JSON header|object"),
    (_bin_window(size="abc"), "binary_data_size must be a non-negative integer"),
    (_bin_window(size=-1), "binary_data_size must be a non-negative integer"),
    (_bin_window(size=1.5), "binary_data_size must be a non-negative integer"),
    (_bin_window(size=True), "binary_data_size must be a non-negative integer"),
    (_bin_window(size=[1]), "binary_data_size must be a non-negative integer"),
    (_bin_window(size=GOOD.nbytes + 100), r"declares \d+ binary bytes, the body holds"),
    (_bin_window(size=GOOD.nbytes - 4), "bytes after the declared tensors"),
    (_bin_window(tail=b"oops"), "4 bytes after the declared tensors"),
    (_bin_window(shape=[1, 30, F], x=windows(2)), r"needs \d+ bytes of binary data"),
    (_binary_raw("window", b""), "each input must be an object"),
    (_binary_raw({"name": "window", "datatype": "FP32"}, b""), r"lacks \['shape'\]"),
    (_bin_window(shape=30), "shape must be a list of integers"),
    (_bin_window(shape=[-2, 30, F]), "positive dimensions"),
    (_bin_window(shape=[0, 30, F]), "empty batch"),
    (_bin_window(shape=[1, 30, F + 1]), "wrong feature count"),
    (_bin_window(shape=[MAX_BATCH + 1, 30, F]), "exceeds the maximum batch size"),
    (_binary_raw({"name": "window", "datatype": "FP64", "shape": [1, 30, F],
                  "parameters": {"binary_data_size": GOOD.nbytes}}, GOOD.tobytes()), "wrong datatype"),
    (_binary_raw({"name": "window", "datatype": "BYTES", "shape": [1, 30, F],
                  "parameters": {"binary_data_size": GOOD.nbytes}}, GOOD.tobytes()), "wrong datatype"),
    (_binary_raw({"name": "prices", "datatype": "FP32", "shape": [1, 30, F],
                  "parameters": {"binary_data_size": GOOD.nbytes}}, GOOD.tobytes()), "unknown input"),
    (_bin_symbol(np.array([1.5, 2.5], np.float32).tobytes()), "BYTES elements are <uint32 length>"),
    (_bin_symbol(np.array([1e30], np.float64).tobytes()), "BYTES elements are <uint32 length>"),
    (_bin_symbol(_bytes_elems(b"\xff\xfe")), "not UTF-8"),
    (_bin_symbol(b"abc"), "stray bytes"),
    (_bin_symbol(_bytes_elems(b"S000"), shape=(2,)), "holds 1 elements, expected 2"),
    (_bin_symbol(_bytes_elems(b"S0\x00B")), "not a valid symbol"),
    (_bin_symbol(_bytes_elems(b"")), "non-empty string"),
    (_bin_symbol(_bytes_elems(b"NOPE")), "unknown symbol"),
    (_bin_symbol(_bytes_elems(b"S000"), shape=(1, 1)), r"shape \[B\]"),
    (_bin_window(x=np.where(np.arange(30 * F).reshape(1, 30, F) == 5, np.nan, GOOD).astype(np.float32)), "NaN or inf"),
    (_bin_window(x=np.where(np.arange(30 * F).reshape(1, 30, F) == 5, np.inf, GOOD).astype(np.float32)), "NaN or inf"),
    (_bin_window(x=np.full((1, 30, F), 1e30, np.float32)), "out of range"),
    (_binary_raw({**_v2in(data=[0.1] * 30 * F), "parameters": {"binary_data_size": GOOD.nbytes}}, GOOD.tobytes()),
     "both"),
    (_binary_raw(_v2in(data=[0.1] * 30 * F), b"", tail=b"xx"), "declares no binary_data_size"),
    (_bin_window(doc_extra={"id": 7}), '"id" must be a string'),
    (_bin_window(doc_extra={"parameters": {"scaled": "x"}}), "must be a boolean"),
]

CASES = ([("v1", body, H_JSON, m) for body, m in V1_CASES]
         + [("v2", body, H_JSON, m) for body, m in V2_JSON_CASES]
         + [("v2", body, headers, m) for (body, headers), m in BINARY_CASES])


def _post(conn, path, body, headers):
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _good(conn, server):
    status, data = _post(conn, V2_PATH, _j(v2_window(GOOD)), H_JSON)
    assert status == 200, data
    assert_matches({o["name"]: o["data"] for o in json.loads(data)["outputs"]}, server["fc"].predict(GOOD))


@pytest.fixture
def conn(server):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", int(server["base"].rsplit(":", 1)[1]), timeout=60)
    yield c
    c.close()


def test_the_malformed_suite_is_large_and_covers_every_protocol():
    kinds = {p if p == "v1" else ("v2-binary" if "inference-header-content-length" in h else "v2-json")
             for p, _, h, _ in CASES}
    assert len(CASES) >= 100 and kinds == {"v1", "v2-json", "v2-binary"}


@pytest.mark.parametrize("protocol,body,headers,match", CASES,
                         ids=[f"{p}-{i}-{m.split()[0][:20]}" for i, (p, _, _, m) in enumerate(CASES)])
def test_malformed_request_is_4xx_and_the_same_connection_keeps_serving(server, conn, protocol, body, headers,
                                                                        match):
    _good(conn, server)
    sock = conn.sock
    status, text = _post(conn, V1_PATH if protocol == "v1" else V2_PATH, body, headers)
    assert 400 <= status < 500, text
    assert re.search(match, json.loads(text)["error"]), text
    _good(conn, server)
    assert conn.sock is sock, "the server closed the keep-alive connection"


def test_body_over_the_limit_is_413_before_parsing_and_the_connection_survives(server, conn):
    _good(conn, server)
    sock = conn.sock
    t0 = time.perf_counter()
    status, text = _post(conn, V2_PATH, b"{" + b" " * (MAX_BODY_MB * 2**20), H_JSON)  # not JSON: never parsed
    assert status == 413 and b"exceeds the limit" in text and b"--max-body-mb" in text, text
    _good(conn, server)
    assert conn.sock is sock and time.perf_counter() - t0 < 30


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(MAX_BODY_MB + 1):
            yield b" " * 2**20

    with httpx.Client() as c:
        r = c.post(f"{server['base']}{V1_PATH}", content=chunks(), headers=H_JSON, timeout=60)
        assert r.status_code == 413 and "exceeds the limit" in r.text
        assert c.post(f"{server['base']}{V2_PATH}", json=v2_window(GOOD), timeout=30).status_code == 200


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


def _strip_id(text: bytes) -> dict:
    doc = json.loads(text)
    doc.pop("id", None)
    return doc


@pytest.mark.slow
def test_mixed_load_of_valid_and_every_malformed_kind(server):
    """16 clients x 20 s on keep-alive connections, valid requests between every malformed kind:
    no connection error, no 5xx, every valid answer identical to the first and to a direct call."""
    good_body = _j(v2_window(GOOD))
    with httpx.Client() as c:
        ref = _strip_id(c.post(f"{server['base']}{V2_PATH}", content=good_body, headers=H_JSON).content)
    assert_matches({o["name"]: o["data"] for o in ref["outputs"]}, server["fc"].predict(GOOD))
    stats = {"valid": 0, "bad": 0, "conn_errors": [], "wrong": [], "status": []}
    lock, stop = threading.Lock(), time.perf_counter() + 20

    def worker(k):
        i = k
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < stop:
                protocol, body, headers, _ = CASES[i % len(CASES)]
                i += 7
                try:
                    bad = c.post(f"{server['base']}{V1_PATH if protocol == 'v1' else V2_PATH}", content=body,
                                 headers=headers)
                    ok = c.post(f"{server['base']}{V2_PATH}", content=good_body, headers=H_JSON)
                except httpx.HTTPError as exc:
                    with lock:
                        stats["conn_errors"].append(repr(exc))
                    continue
                with lock:
                    stats["bad"] += 1
                    stats["valid"] += 1
                    if not 400 <= bad.status_code < 500:
                        stats["status"].append((bad.status_code, bad.text[:200]))
                    if ok.status_code != 200 or _strip_id(ok.content) != ref:
                        stats["wrong"].append(ok.text[:200])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(f"\nmixed load: {stats['valid']} valid + {stats['bad']} malformed requests in 20 s, 16 clients")
    assert stats["conn_errors"] == [] and stats["status"] == [] and stats["wrong"] == []
    assert stats["valid"] > 16 and server["proc"].poll() is None


@pytest.mark.slow
def test_small_requests_stay_fast_while_a_50mb_body_is_decoded(server):
    """One 50 MB JSON body after another (each parsed off the event loop, then refused for its
    batch size) while 4 clients send batch-1 windows: their p99 stays under 100 ms."""
    n = 50 * 2**20 // (30 * F * 20)  # ~20 bytes per JSON number
    big = _j(v2_window(np.random.default_rng(5).standard_normal((n, 30, F)).astype(np.float32)))
    assert 40 * 2**20 < len(big) < MAX_BODY_MB * 2**20
    tmp = Path(server["settings"].home)
    (tmp / "big.json").write_bytes(big)
    del big
    # a process of its own sends the big bodies, so that its work does not slow this process's clients
    sender = (f"import httpx, pathlib, json\nbody = pathlib.Path({str(tmp / 'big.json')!r}).read_bytes()\n"
              f"out = []\nwith httpx.Client(timeout=120) as c:\n"
              f"    while not pathlib.Path({str(tmp / 'stop')!r}).exists():\n"
              f"        r = c.post({server['base'] + V2_PATH!r}, content=body, headers={H_JSON!r})\n"
              f"        out.append([r.status_code, r.text[:200]])\n"
              f"pathlib.Path({str(tmp / 'big.out')!r}).write_text(json.dumps(out))\n")

    small = lambda: _j(v2_window(GOOD))  # noqa: E731
    base = _load(server, small, v2, seconds=4.0, clients=4)  # the same machine, no big body: reference
    bg = subprocess.Popen([sys.executable, "-c", sender])
    time.sleep(2.0)  # the first big body is on its way
    try:
        res = _load(server, small, v2, seconds=8.0, clients=4)
    finally:
        (tmp / "stop").write_text("")
        bg.wait(timeout=120)
    big_answers = json.loads((tmp / "big.out").read_text())
    print(f"\nbatch-1 requests, 4 clients: alone p50 {base['p50_ms']:.1f} ms p99 {base['p99_ms']:.1f} ms; with 50 MB "
          f"bodies in flight ({len(big_answers)} sent): p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    assert big_answers and all(s == 400 and "exceeds the maximum batch" in t for s, t in big_answers), big_answers
    # the target is 100 ms; on a machine already slower than that without the big body (shared CI
    # cores), the big body may at most double the tail
    assert res["errors"] == [] and res["p99_ms"] < max(100.0, 2 * base["p99_ms"])


def test_serves_a_registered_version_from_mlflow(tmp_path):
    """`hfcast serve --model NAME@ALIAS` loads weights, scaler and calibration from the registry."""
    from hfcast import registry
    from hfcast.forecaster import Forecaster

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

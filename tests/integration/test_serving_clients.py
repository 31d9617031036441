"""The real server (`hfcast serve`) spoken to by clients nobody here wrote.

NVIDIA's ``tritonclient`` (HTTP with JSON tensors, HTTP with binary tensors, gRPC: always
``raw_input_contents``) and KServe's own ``InferenceRESTClient`` / ``InferenceGRPCClient`` (gRPC
with numpy data: raw; with lists: typed ``contents``), by window and by symbol (a real Feast online
store), good and bad requests: answers equal the Forecaster called directly, every refusal reads
the same on every client, and the next request on the same client (connection, channel) is
served. Also: version routing, requested outputs, units in the metadata, V2 explain, ``/metrics``
counted exactly, and server workers that die with a SIGKILLed server.
"""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from hfcast.config import get_settings
from hfcast.contracts import COLUMN_UNITS, TARGET_UNITS
from hfcast.models import PRED_COLUMNS
from serving_clients import CLIENTS, SYMBOL_OUTPUTS, ClientError, connect, text
from serving_fixtures import feast_repo, tiny_bundle
from test_serving import assert_matches, start_server, stop_server  # same folder: pytest puts it on sys.path

pytestmark = pytest.mark.integration
F = 8
FEATURE_TS = "2024-01-02T20:59:00+00:00"  # the last minute the fixture materialized


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    settings = get_settings(env=env, cwd=tmp)
    windows = feast_repo(settings, F, n_symbols=3, lag_minutes={"S002": 60})  # S002: an hour older, stale
    newest = windows["event_timestamp"].max()
    age = float(settings.market.trading_age_s(pd.DatetimeIndex([newest]), pd.Timestamp.now(tz="UTC"))[0])
    bundle = tiny_bundle(tmp / "bundle", "tcn", F)
    proc, base, log = start_server(tmp, env, ["--bundle", str(bundle), "--max-batch", "64",
                                              "--max-staleness-s", str(age + 1800), "--runner", "onnxruntime"])
    grpc_port = int(proc.args[proc.args.index("--grpc-port") + 1])
    from hfcast.feature_store import OnlineWindows
    from hfcast.forecaster import Forecaster

    try:
        yield {"base": base, "grpc": f"127.0.0.1:{grpc_port}", "fc": Forecaster.load(str(bundle)),
               "online": OnlineWindows(settings), "proc": proc}
    finally:
        stop_server(proc, log)


@pytest.fixture(scope="module")
def clients(server):
    made = {name: connect(name, server) for name in CLIENTS}
    yield made
    for c in made.values():
        c.close()


def windows(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 30, F)).astype(np.float32)


def check_windows(server, got: dict, x: np.ndarray) -> None:
    assert_matches({c: got[c] for c in PRED_COLUMNS}, server["fc"].predict(x))
    assert text(got["model_version"]) == ["tiny-tcn"] * len(x)
    assert "feature_ts" not in got and "symbol" not in got  # a window has no feature time


def check_symbols(server, got: dict, symbols: list[str]) -> None:
    online, _, _ = server["online"](symbols)
    assert_matches({c: got[c] for c in PRED_COLUMNS}, server["fc"].predict(online))
    assert text(got["symbol"]) == symbols and text(got["feature_ts"]) == [FEATURE_TS] * len(symbols)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_windows_and_symbols_through_every_client(server, clients, client):
    c = clients[client]
    x = windows(3, seed=len(client))
    check_windows(server, c.infer("window", x), x)
    check_symbols(server, c.infer("symbol", ["S001", "S000"]), ["S001", "S000"])


BAD = {  # name: (input, values, the server's message)
    "feature count": ("window", windows(2)[..., :F - 1],
                      f"wrong feature count: window has {F - 1} features per minute, the model expects {F}"),
    "NaN": ("window", np.where(np.arange(30 * F).reshape(1, 30, F) == 7, np.nan, windows(1)),
            "window contains NaN or inf (batch rows [0])"),
    "batch too large": ("window", np.zeros((65, 30, F), np.float32), "batch of 65 exceeds the maximum batch size of 64"),
    "unknown symbol": ("symbol", ["S000", "NOPE"], "unknown symbol(s)"),
    "stale symbol": ("symbol", ["S002"], "stale features: age in seconds {'S002'"),
    "not a symbol": ("symbol", ["S0\x00B"], "symbol 'S0\\x00B' is not a valid symbol"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_refusal_reads_the_same_on_every_client_and_the_channel_keeps_serving(server, clients, case):
    name, values, message = BAD[case]
    seen = {}
    for client, c in clients.items():
        with pytest.raises(ClientError) as err:
            c.infer(name, values)
        assert err.value.code == ("400" if c.protocol == "http" else "INVALID_ARGUMENT"), (client, err.value)
        assert message in err.value.message or (case, client) == ("NaN", "triton-http-json"), (client, err.value)
        # the stale age is measured at each request: a second may tick between two clients
        seen[client] = re.sub(r"(age in seconds \{'S002': )\d+", r"\1<age>", err.value.message)
        x = windows(1, seed=3)
        check_windows(server, c.infer("window", x), x)  # the same connection / channel answers the next one
    if case == "NaN":  # JSON cannot carry a NaN: a JSON client's body is malformed before any window is read
        assert "NaN and Infinity are not JSON numbers" in seen.pop("triton-http-json")
    assert len(set(seen.values())) == 1, seen
    if case == "stale symbol":  # the refusal says how to serve a replayed past
        assert "--max-staleness-s -1" in seen["triton-grpc"]


def test_an_unknown_version_is_not_found_on_both_protocols(server, clients):
    x = windows(2, seed=5)
    want = "model 'hfcast' has no version '999' here: this server serves version 'tiny-tcn'"
    for client in ("triton-http-binary", "triton-grpc", "kserve-grpc"):
        with pytest.raises(ClientError) as err:
            clients[client].infer("window", x, model_version="999")
        assert err.value.code in ("404", "NOT_FOUND") and err.value.message == want, (client, err.value)
        check_windows(server, clients[client].infer("window", x, model_version="tiny-tcn"), x)
    base = server["base"]
    assert httpx.get(f"{base}/v2/models/hfcast/versions/999").status_code == 404
    assert httpx.get(f"{base}/v2/models/hfcast/versions/999/ready").status_code == 404
    assert httpx.get(f"{base}/v2/models/hfcast/versions/tiny-tcn/ready").json() == {"name": "hfcast", "ready": True}
    assert clients["triton-grpc"].versions() == clients["triton-http-json"].versions() == ["tiny-tcn"]


def test_requested_outputs_come_in_the_form_asked(server, clients):
    x = windows(2, seed=6)
    for client in ("triton-http-json", "triton-http-binary", "triton-grpc", "kserve-grpc", "kserve-grpc-contents"):
        got = clients[client].infer("window", x, outputs=["rv_10m_pred", "model_version"])
        assert list(got) == ["rv_10m_pred", "model_version"], client
        np.testing.assert_allclose(got["rv_10m_pred"], server["fc"].predict(x)["rv_10m_pred"], rtol=2e-4)
    # mixed forms over HTTP: an output's binary_data wins over the request's binary_data_output
    import tritonclient.http as httpclient

    c = clients["triton-http-json"]
    inp = httpclient.InferInput("window", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    res = c.client.infer("hfcast", [inp], outputs=[httpclient.InferRequestedOutput("rv_10m_pred", binary_data=True),
                                                   httpclient.InferRequestedOutput("ret_60m_pred", binary_data=False)])
    outs = {o["name"]: o for o in res.get_response()["outputs"]}
    assert "binary_data_size" in outs["rv_10m_pred"]["parameters"] and "data" in outs["ret_60m_pred"]
    np.testing.assert_allclose(res.as_numpy("ret_60m_pred"), server["fc"].predict(x)["ret_60m_pred"], rtol=2e-4, atol=1e-7)
    for client in ("triton-http-binary", "triton-grpc"):
        with pytest.raises(ClientError, match="answer symbol inputs only"):
            clients[client].infer("window", x, outputs=["feature_ts"])
        with pytest.raises(ClientError, match="unknown output 'nope'"):
            clients[client].infer("window", x, outputs=["nope"])


def test_metadata_names_the_units(server):
    meta = httpx.get(f"{server['base']}/v2/models/hfcast").json()
    assert meta["versions"] == ["tiny-tcn"] and meta["parameters"]["targets"] == TARGET_UNITS
    units = {o["name"]: o["parameters"]["unit"] for o in meta["outputs"]}
    assert all(units[c] == COLUMN_UNITS[c] for c in COLUMN_UNITS) and set(units) == set(SYMBOL_OUTPUTS)
    assert meta["inputs"][0]["parameters"]["features"] == [f"f{j}" for j in range(F)]
    assert httpx.get(f"{server['base']}/v2/models/hfcast/versions/tiny-tcn").json() == meta


def test_v1_answers_null_feature_time_for_windows_and_echoes_symbols(server):
    url = f"{server['base']}/v1/models/hfcast:predict"
    rows = httpx.post(url, json={"instances": [{"window": windows(1).tolist()[0]}]}).json()["predictions"]
    assert rows[0]["feature_ts"] is None and "symbol" not in rows[0]
    rows = httpx.post(url, json={"instances": [{"symbol": "S001"}]}).json()["predictions"]
    assert rows[0]["feature_ts"] == FEATURE_TS and rows[0]["symbol"] == "S001"


def _scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server['base']}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _delta(after: dict, before: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_good_and_bad_requests_exactly(server, clients):
    before = _scrape(server)
    grpc, http_bin, http_json = clients["triton-grpc"], clients["triton-http-binary"], clients["triton-http-json"]
    grpc.infer("window", windows(3))
    grpc.infer("window", windows(5))
    for bad in (lambda: grpc.infer("window", windows(2)[..., :F - 1]), lambda: http_bin.infer("symbol", ["S002"]),
                lambda: http_bin.infer("symbol", ["NOPE"]), lambda: grpc.infer("window", windows(1), model_version="9")):
        with pytest.raises(ClientError):
            bad()
    http_json.infer("symbol", ["S000", "S001"])
    assert httpx.post(f"{server['base']}/v1/models/hfcast:predict", json={"instances": [{"symbol": "S000"}]}).is_success
    after = _scrape(server)

    def requests(protocol, kind, status):
        return _delta(after, before, "hfcast_requests_total", protocol=protocol, verb="infer", kind=kind, status=status)

    assert requests("v2-grpc", "window", "ok") == 2
    assert requests("v2-grpc", "unknown", "invalid_argument") == 1  # refused before its input was read
    assert requests("v2-grpc", "unknown", "not_found") == 1
    assert requests("v2-rest", "symbol", "invalid_argument") == 2  # stale, unknown
    assert requests("v2-rest", "symbol", "ok") == 1 and requests("v1", "symbol", "ok") == 1
    assert _delta(after, before, "hfcast_request_duration_seconds_count", protocol="v2-grpc", verb="infer",
                  kind="window", status="ok") == 2
    assert _delta(after, before, "hfcast_batch_size_count", protocol="v2-grpc", kind="window") == 2
    assert _delta(after, before, "hfcast_batch_size_sum", protocol="v2-grpc", kind="window") == 8
    assert _delta(after, before, "hfcast_batch_size_bucket", protocol="v2-grpc", kind="window", le="4.0") == 1
    assert _delta(after, before, "hfcast_stale_refusals_total", protocol="v2-rest") == 1
    assert after[("hfcast_model_info", (("device", "cpu"), ("model_name", "hfcast"), ("model_version", "tiny-tcn"),
                                        ("runner", "onnxruntime")))] == 1.0


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sigkilled_server_leaves_no_worker_behind(tmp_path):
    env = {**os.environ, "HFCAST_HOME": str(tmp_path / ".hfcast")}
    proc, base, log = start_server(tmp_path, env, ["--bundle", str(tiny_bundle(tmp_path / "b", "tcn", F)),
                                                   "--no-feature-store", "--runner", "onnxruntime"])
    workers: set[int] = set()
    try:
        assert httpx.post(f"{base}/v1/models/hfcast:predict", json={"instances": [windows(1).tolist()[0]]}).is_success
        deadline = time.time() + 30
        while len(workers := _descendants(proc.pid)) < 1 and time.time() < deadline:
            time.sleep(0.2)  # the decoding process starts with the first request
        assert workers, "the server started no worker process: nothing to check"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 5
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "worker processes outlived the SIGKILLed server"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:  # a failed run must not leave them behind either
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()

"""serving.gateway without a server: size limit before parsing, 4xx/5xx always complete, routing."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput

from serving import validation as v
from serving.core import StaleFeatures, VersionNotFound
from serving.gateway import RequestGate, TooLarge, read_body

F = 8


def _receiver(chunks: list[bytes]):
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    it = iter(msgs)
    read = []

    async def receive():
        m = next(it)
        read.append(m)
        return m
    return receive, read


def test_declared_length_over_the_limit_is_refused_before_reading():
    receive, read = _receiver([b"x" * 100] * 3)
    with pytest.raises(TooLarge) as exc:
        asyncio.run(read_body(receive, 300, limit=200))
    assert exc.value.drained and len(read) == 3  # drained (dropped), so the connection can be kept
    receive, read = _receiver([b"x" * 100] * 10)
    with pytest.raises(TooLarge) as exc:
        asyncio.run(read_body(receive, 1000, limit=200))  # far over: not read at all, connection closed
    assert not exc.value.drained and read == []
    assert "--max-body-mb" in str(exc.value)


def test_chunked_body_growing_past_the_limit_is_refused():
    receive, _ = _receiver([b"x" * 150] * 3)
    with pytest.raises(TooLarge, match="exceeds the limit of 200 bytes"):
        asyncio.run(read_body(receive, None, limit=200))
    receive, _ = _receiver([b"ab", b"cd"])
    assert asyncio.run(read_body(receive, None, limit=200)) == [b"ab", b"cd"]


def _call(gate, path: str, body: bytes, method: str = "POST"):
    sent = []
    receive, _ = _receiver([body])

    async def send(m):
        sent.append(m)
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(gate(scope, receive, send))
    return sent


class FakeModel:
    """What RequestGate needs of a model (serving.gateway.GatedModel), answering what it was asked."""

    name, ready, version = "hfcast", True, "3"

    def __init__(self, answer=None, decode=None):
        self._answer = answer or (lambda parsed, verb: {"ok": parsed.proto, "verb": verb})
        self._decode = decode or (lambda p, b, h: SimpleNamespace(proto=p, kind="window", size=2))

    def decoder(self):
        return self._decode

    def answer(self, parsed, verb):
        return orjson.dumps(self._answer(parsed, verb)), {}

    def check_version(self, version):
        if version and version != self.version:
            raise VersionNotFound(f"no version {version}")

    def metadata(self):
        return {"name": self.name, "versions": [self.version]}


def _gate(passed, **kw):
    async def app(scope, receive, send):
        passed.append(scope["path"])
    return RequestGate(app, FakeModel(**kw), max_body_bytes=1 << 20)


@pytest.mark.parametrize("exc,status", [(InvalidInput("bad window"), 400), (RuntimeError("bug"), 500)])
def test_every_failure_is_a_complete_json_response(exc, status):
    def answer(parsed, verb):
        raise exc
    passed = []
    sent = _call(_gate(passed, answer=answer), "/v2/models/hfcast/infer", b"{}")
    assert sent[0]["status"] == status and json.loads(sent[1]["body"])["error"]
    assert (b"connection", b"close") not in sent[0]["headers"] and passed == []


def test_routing_takes_this_models_routes_and_checks_the_version():
    passed = []
    gate = _gate(passed)

    def body(path, method="POST"):
        sent = _call(gate, path, b"{}" if method == "POST" else b"", method)
        return sent[0]["status"], json.loads(sent[1]["body"])

    assert body("/v1/models/hfcast:predict") == (200, {"ok": "v1", "verb": "infer"})
    assert body("/v1/models/hfcast:explain") == (200, {"ok": "v1", "verb": "explain"})
    assert body("/v2/models/hfcast/versions/3/infer") == (200, {"ok": "v2", "verb": "infer"})
    assert body("/v2/models/hfcast/explain") == (200, {"ok": "v2", "verb": "explain"})
    assert body("/v2/models/hfcast/versions/999/infer") == (404, {"error": "no version 999"})
    assert body("/v2/models/hfcast/versions/999/explain") == (404, {"error": "no version 999"})
    assert body("/v2/models/hfcast", "GET") == (200, {"name": "hfcast", "versions": ["3"]})
    assert body("/v2/models/hfcast/versions/999", "GET")[0] == 404
    assert body("/v2/models/hfcast/versions/3/ready", "GET") == (200, {"name": "hfcast", "ready": True})
    _call(gate, "/v2/models/other/infer", b"{}")
    _call(gate, "/v2/health/ready", b"", method="GET")
    _call(gate, "/metrics", b"", method="GET")
    assert passed == ["/v2/models/other/infer", "/v2/health/ready", "/metrics"]


def test_every_counted_request_lands_in_the_metrics_with_its_outcome():
    from prometheus_client import REGISTRY

    def count(**labels):
        return REGISTRY.get_sample_value("hfcast_requests_total", {"verb": "infer", **labels}) or 0.0

    def answer(parsed, verb):
        raise StaleFeatures("stale features: old")
    gate, stale_gate = _gate([]), _gate([], answer=answer)
    before = (count(protocol="v1", kind="window", status="ok"), count(protocol="v2-rest", kind="unknown",
                                                                          status="not_found"),
              count(protocol="v2-rest", kind="window", status="invalid_argument"),
              REGISTRY.get_sample_value("hfcast_stale_refusals_total", {"protocol": "v2-rest"}) or 0.0)
    _call(gate, "/v1/models/hfcast:predict", b"{}")
    _call(gate, "/v2/models/hfcast/versions/9/infer", b"{}")
    _call(stale_gate, "/v2/models/hfcast/infer", b"{}")
    _call(gate, "/v2/models/hfcast", b"", method="GET")  # metadata is not counted
    after = (count(protocol="v1", kind="window", status="ok"), count(protocol="v2-rest", kind="unknown",
                                                                         status="not_found"),
             count(protocol="v2-rest", kind="window", status="invalid_argument"),
             REGISTRY.get_sample_value("hfcast_stale_refusals_total", {"protocol": "v2-rest"}))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1, 1]


def test_binary_windows_are_read_without_a_copy():
    x = np.random.default_rng(0).standard_normal((2, 30, F)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 30, F],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = header + x.tobytes()
    parsed = v.parse_http("v2", body, {v.BINARY_HEADER: str(len(header))}, F, 16)
    assert np.array_equal(parsed.windows, x) and not parsed.windows.flags.owndata
    assert np.shares_memory(parsed.windows, np.frombuffer(body, np.uint8))


def test_limits_refuse_nonsense_at_start_up():
    from serving.core import Limits

    for bad in ({"max_batch": -5}, {"max_batch": 0}, {"max_body_bytes": 10}, {"max_staleness_s": -1.0}):
        with pytest.raises(ValueError):
            Limits(**bad)


def test_large_json_bodies_are_decoded_in_the_decoding_process():
    import functools

    passed = []

    async def app(scope, receive, send):
        passed.append(scope["path"])
    model = FakeModel(answer=lambda parsed, verb: {"shape": list(parsed.windows.shape)},
                      decode=functools.partial(v.parse_http, n_features=F, max_batch=16))
    gate = RequestGate(app, model, max_body_bytes=1 << 20, inline_bytes=10, process_bytes=100)
    x = np.random.default_rng(0).standard_normal((2, 30, F)).astype(np.float32)
    good = json.dumps({"inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 30, F],
                                   "data": x.ravel().tolist()}]}).encode()
    sent = _call(gate, "/v2/models/hfcast/infer", good)
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"shape": [2, 30, F]}
    bad = good.replace(b'"shape": [2, 30, 8]', b'"shape": [-2, 30, 8]')
    sent = _call(gate, "/v2/models/hfcast/infer", bad)
    assert sent[0]["status"] == 400 and "positive dimensions" in json.loads(sent[1]["body"])["error"]
    assert passed == []

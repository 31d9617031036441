"""The predictor's logic without a server: validation, lookups, staleness, outputs, transformer hooks."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from kserve import InferInput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput

from hfcast.models import PRED_COLUMNS
from serving import validation as v
from serving.core import ForecastService, Limits
from serving_fixtures import tiny_forecaster

F = 8
TS = np.datetime64("2024-01-02T20:59:00", "us")
NOW = (TS - np.datetime64("1970-01-01T00:00:00", "us")) / np.timedelta64(1, "s") + 60.0  # one minute later


@pytest.fixture(scope="module")
def fc():
    return tiny_forecaster("tcn", F)


def _lookup(symbols):
    known = {"AAA": TS, "OLD": TS - np.timedelta64(3600, "s")}
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise KeyError(f"no online window for symbol(s) {unknown}: unknown or not materialized")
    x = np.stack([np.full((30, F), i, np.float32) for i, _ in enumerate(symbols)])
    return x, np.array([known[s] for s in symbols]), [f"f{j}" for j in range(F)]


@pytest.fixture
def svc(fc):
    return ForecastService(fc, _lookup, Limits(max_batch=16, max_staleness_s=600), clock=lambda: NOW)


def _v2(name, datatype, shape, data, params=None):
    return InferRequest(model_name="hfcast", request_id="r1", parameters=params,
                        infer_inputs=[InferInput(name=name, shape=shape, datatype=datatype, data=data)])


def windows(b=2):
    return np.random.default_rng(0).standard_normal((b, 30, F)).astype(np.float32)


@pytest.mark.parametrize("payload,match", [
    (b'{"instances": [1, 2', "malformed JSON"),
    ({"foo": 1}, '"instances"'),
    ({"instances": []}, "empty batch"),
    ({"instances": [{"window": [[0.0] * F] * 29}]}, r"wrong window shape \[1, 29, 8\]"),
    ({"instances": [{"window": [[0.0] * 5] * 30}]}, "wrong feature count: window has 5 features"),
    ({"instances": [{"window": [["1.5"] * F] * 30}]}, "must be numbers"),
    ({"instances": [{"window": [[0.0] * F] * 29 + [[0.0] * (F - 1)]}]}, "must be numbers"),
    ({"instances": [{"window": [[float("nan")] * F] * 30}]}, "NaN or inf"),
    ({"instances": [{"window": [[float("inf")] * F] * 30}]}, "NaN or inf"),
    ({"instances": [{"symbol": "AAA"}] * 17}, "exceeds the maximum batch size of 16"),
    ({"instances": [{"symbol": "AAA"}, {"window": []}]}, "mix symbols and windows"),
    ({"instances": [{"symbol": ""}]}, "non-empty string"),
    ({"instances": [{"symbol": "S0\u202eB"}]}, "U\\+202E"),  # the ingest rule (hfcast.data.schema)
    ({"instances": [{"symbol": "S" * 5000}]}, "5000 characters"),
    ({"instances": [{"x": 1}]}, 'neither "window" nor "symbol"'),
    ({"instances": [{"symbol": "AAA"}], "parameters": {"scaled": "yes"}}, "must be a boolean"),
])
def test_v1_refusals_name_the_problem(payload, match):
    with pytest.raises(InvalidInput, match=match):
        v.parse_v1(payload, F, 16)


def test_v1_accepts_windows_bare_lists_and_symbols():
    x = windows(3)
    r = v.parse_v1({"instances": [{"window": w} for w in x.tolist()], "parameters": {"scaled": True}}, F, 16)
    assert r.windows.shape == (3, 30, F) and r.scaled and np.allclose(r.windows, x)
    assert v.parse_v1({"instances": x.tolist()}, F, 16).windows.shape == (3, 30, F)
    assert v.parse_v1(b'{"instances": [{"symbol": "AAA"}]}', F, 16).symbols == ["AAA"]


@pytest.mark.parametrize("req,match", [
    (lambda: _v2("window", "FP64", [1, 30, F], windows(1).ravel().tolist()), "wrong datatype.*FP64, expected FP32"),
    (lambda: _v2("symbol", "FP32", [1], [1.0]), "wrong datatype.*expected BYTES"),
    (lambda: _v2("prices", "FP32", [1], [1.0]), "unknown input 'prices'"),
    (lambda: _v2("window", "FP32", [1, 30, F], ["a"] * 30 * F), "must be numbers"),
    (lambda: _v2("window", "FP32", [1, 30, F], [1.0] * 10), "does not hold matching data"),
    (lambda: _v2("window", "FP32", [0, 30, F], []), "empty batch"),
    (lambda: _v2("window", "FP32", [1, 30, F + 1], [0.0] * 30 * (F + 1)), "wrong feature count"),
    (lambda: _v2("symbol", "BYTES", [2, 1], ["A", "B"]), r"shape \[B\]"),
])
def test_v2_refusals_name_the_problem(req, match):
    with pytest.raises(InvalidInput, match=match):
        v.parse_v2(req(), F, 16)


def test_v2_nan_and_scaled_parameter():
    x = windows(1)
    x[0, 3, 2] = np.nan
    with pytest.raises(InvalidInput, match=r"NaN or inf \(batch rows \[0\]\)"):
        v.parse_v2(_v2("window", "FP32", [1, 30, F], x.ravel().tolist()), F, 16)
    ok = v.parse_v2(_v2("window", "FP32", [1, 30, F], windows(1).ravel().tolist(), {"scaled": True}), F, 16)
    assert ok.scaled and ok.request_id == "r1"


def test_service_scales_raw_windows_and_passes_scaled_ones(svc, fc):
    x = windows(2)
    raw_req = v.ParsedRequest("v1", windows=x)
    scaled, ts = svc.windows(raw_req)
    assert np.allclose(scaled, fc.scaler.transform(x)) and ts == ["", ""]
    same, _ = svc.windows(v.ParsedRequest("v1", windows=x, scaled=True))
    assert np.array_equal(same, x)


def test_symbol_lookup_unknown_stale_and_fresh(svc, fc):
    scaled, ts = svc.windows(v.ParsedRequest("v2", symbols=["AAA"]))
    assert np.allclose(scaled, fc.scaler.transform(np.zeros((1, 30, F), np.float32)))
    assert ts == ["2024-01-02T20:59:00+00:00"]
    with pytest.raises(InvalidInput, match=r"unknown symbol.*'ZZZ'"):
        svc.windows(v.ParsedRequest("v2", symbols=["AAA", "ZZZ"]))
    with pytest.raises(InvalidInput, match=r"stale features.*'OLD': 3660.*limit of 600 s"):
        svc.windows(v.ParsedRequest("v2", symbols=["AAA", "OLD"]))
    no_limit = ForecastService(fc, _lookup, Limits(max_staleness_s=None), clock=lambda: NOW)
    assert no_limit.windows(v.ParsedRequest("v2", symbols=["OLD"]))[1] == ["2024-01-02T19:59:00+00:00"]
    no_store = ForecastService(fc, None)
    with pytest.raises(InvalidInput, match="without one"):
        no_store.windows(v.ParsedRequest("v2", symbols=["AAA"]))


def test_outputs_match_the_forecaster(svc, fc):
    x = windows(3)
    preds = svc.predictions(fc.predict_raw(fc.scaler.transform(x)), fc.side_inputs(x))
    ref = fc.predict(x)
    rows = svc.v1_response(preds, ["t0", "t1", "t2"], ["A", "B", "C"])["predictions"]
    assert [r["feature_ts"] for r in rows] == ["t0", "t1", "t2"] and [r["symbol"] for r in rows] == ["A", "B", "C"]
    assert all(r["model_version"] == "tiny-tcn" and r["model_name"] == "hfcast" for r in rows)
    for c in PRED_COLUMNS:
        assert np.allclose([r[c] for r in rows], ref[c])
    outs = {o["name"]: o for o in svc.v2_outputs(preds, ["t0", "t1", "t2"], ["A", "B", "C"])}
    assert list(outs)[:8] == list(PRED_COLUMNS) and outs["ret_60m_conf"]["datatype"] == "FP32"
    assert outs["feature_ts"]["datatype"] == "BYTES" and outs["model_version"]["data"] == ["tiny-tcn"] * 3
    assert outs["symbol"]["data"] == ["A", "B", "C"]
    assert np.all(ref["ret_60m_lo"] <= ref["ret_60m_hi"])
    # a window has no feature time: null in V1, no feature_ts (nor symbol) tensor in V2 (BYTES holds no null)
    rows = svc.v1_response(preds, ["", "", ""])["predictions"]
    assert [r["feature_ts"] for r in rows] == [None] * 3 and "symbol" not in rows[0]
    assert not {"feature_ts", "symbol"} & {o["name"] for o in svc.v2_outputs(preds, ["", "", ""])}


def test_outputs_carry_whether_the_confidences_are_informative(fc):
    import copy
    import dataclasses

    from hfcast.contracts import INFO_COLUMNS

    raw = fc.predict_raw(fc.scaler.transform(windows(2)))
    bare = copy.copy(fc)
    bare.calibrator = None  # never checked on validation: flagged 0
    sure = copy.copy(fc)  # a return slope of 5 standard errors: informative
    sure.calibrator = dataclasses.replace(fc.calibrator, ret_conf=dataclasses.replace(
        fc.calibrator.ret_conf, a=0.5, a_ml=0.5, se=0.1))
    for f, want in ((bare, [0.0, 0.0]), (sure, [1.0, float(fc.calibrator.rv_informative)])):
        svc = ForecastService(f, None)
        preds = svc.predictions(raw, None)
        rows = svc.v1_response(preds, ["t0", "t1"])["predictions"]
        assert [[r[c] for c in INFO_COLUMNS] for r in rows] == [want, want]
        outs = {o["name"]: o for o in svc.v2_outputs(preds, ["t0", "t1"])}
        assert [list(outs[c]["data"]) for c in INFO_COLUMNS] == [[w, w] for w in want]
        assert all(outs[c]["datatype"] == "FP32" for c in INFO_COLUMNS)
        assert f.confidence_info()["ret_conf_informative"] is bool(want[0])


def test_transformer_pre_and_post_processing(fc):
    from serving.feature_transformer import FeatureTransformer

    t = FeatureTransformer("hfcast", "triton.local", lookup=_lookup,
                           limits=Limits(max_staleness_s=None))
    t.service = ForecastService(fc, _lookup, t.limits)

    async def roundtrip():  # noqa: RUF029 - the ContextVar needs one task, as in KServe
        req = _v2("symbol", "BYTES", [2], ["AAA", "OLD"])
        out_req = t.preprocess(req)  # KServe calls both hooks inside one request task
        x = out_req.inputs[0].as_numpy()
        assert out_req.inputs[0].name == "window" and x.shape == (2, 30, F)
        raw = fc.predict_raw(x)  # what Triton would answer
        resp = InferResponse(response_id="r1", model_name="hfcast",
                             infer_outputs=[InferOutput(name="raw", shape=[2, 4], datatype="FP32", data=raw)])
        return t.postprocess(resp)

    res = asyncio.run(roundtrip())
    got = {o.name: o for o in res.outputs}
    ref = fc.predict(_lookup(["AAA", "OLD"])[0])
    assert np.allclose(got["rv_10m_pred"].as_numpy(), ref["rv_10m_pred"], rtol=1e-5)
    assert list(got["feature_ts"].data) == ["2024-01-02T20:59:00+00:00", "2024-01-02T19:59:00+00:00"]


def _binary_body(x, extra=b""):
    import json

    header = json.dumps({"id": "b1", "inputs": [{"name": "window", "datatype": "FP32", "shape": list(x.shape),
                                                  "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes() + extra, {"inference-header-content-length": str(len(header))}


def test_binary_v2_decodes_without_lists_and_refuses_bad_sizes():
    from serving.dataplane import decode_binary_v2

    x = windows(4)
    body, headers = _binary_body(x)
    req = decode_binary_v2(body, headers, "hfcast")
    assert req.id == "b1" and req.inputs[0].data is None  # raw bytes kept, no Python list built
    parsed = v.parse_v2(req, F, 16)
    assert np.array_equal(parsed.windows, x)
    with pytest.raises(InvalidInput, match="declares 3840 binary bytes, the body holds 3740"):
        decode_binary_v2(body[:-100], headers, "hfcast")
    with pytest.raises(InvalidInput, match="4 bytes after the declared tensors"):
        decode_binary_v2(*_binary_body(x, b"oops"), "hfcast")
    with pytest.raises(InvalidInput, match="unreadable JSON header"):
        decode_binary_v2(b"{nope" + body, headers, "hfcast")


@pytest.mark.parametrize("data, match", [
    (["1.5"] * 4, "string"),                     # would silently become 1.5 through as_numpy
    ([0.5, None, 0.5, 0.5], "null, object or mixed-type"),
    ([True, False, True, False], "boolean"),
    ([0.5, "x", 0.5, 0.5], "string"),
])
def test_json_tensor_fast_path_refuses_what_the_general_path_refuses(data, match):
    with pytest.raises(InvalidInput, match=match):
        v.json_tensor(data, [1, 2, 2], "window")


def test_json_tensor_fast_path_equals_the_general_path():
    x = windows(3).astype(np.float64)
    flat = x.ravel().tolist()
    ints = [int(a) for a in flat[:12]] + flat[12:]  # JSON integers among the floats
    for data in (flat, ints):
        got = v.json_tensor(data, list(x.shape), "window")
        assert got.dtype == np.float32 and np.array_equal(got, np.asarray(data, dtype=np.float32).reshape(x.shape))
    nested = x.tolist()  # nested lists take the general path, same values
    assert np.array_equal(v.json_tensor(nested, list(x.shape), "window"), x.astype(np.float32))
    mixed = [True] + flat[1:]  # a leading boolean among numbers: the general path, as before
    assert v.json_tensor(mixed, list(x.shape), "window").ravel()[0] == 1.0
    with pytest.raises(InvalidInput, match="does not hold matching data"):
        v.json_tensor(flat[:-1], list(x.shape), "window")
    huge = [1e39] + flat[1:]  # overflows float32: inf, which check_windows refuses naming the row
    with pytest.raises(InvalidInput, match=r"NaN or inf \(batch rows \[0\]\)"):
        v.check_windows(v.json_tensor(huge, list(x.shape), "window"), F, 16)


class _FakeCustomObjects:
    """Records what serving.deploy asks of kubernetes' CustomObjectsApi (no cluster here)."""

    def __init__(self, existing=()):
        self.objects, self.calls = {name: {} for name in existing}, []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.rest import ApiException

        self.calls.append(("get", namespace, name))
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[name]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", namespace, body["metadata"]["name"]))
        self.objects[body["metadata"]["name"]] = body

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(("patch", namespace, name))
        self.objects[name] = body


def test_deploy_creates_then_patches_the_inference_service(settings):
    from serving.deploy import deploy

    api = _FakeCustomObjects()
    first = deploy(settings, "3", target="kserve-cpu", namespace="prod", api=api)
    assert first["where"] == "prod/hfcast-cpu" and first["action"] == "created"
    assert [c[0] for c in api.calls] == ["get", "create"]
    body = api.objects["hfcast-cpu"]
    assert body["metadata"]["namespace"] == "prod" and body["metadata"]["annotations"]["hfcast/model-version"] == "3"
    assert "hfcast/3" in body["spec"]["predictor"]["containers"][0]["args"]
    second = deploy(settings, "4", target="kserve-cpu", namespace="prod", api=api)
    assert second["action"] == "patched" and api.calls[-1] == ("patch", "prod", "hfcast-cpu")
    gpu = deploy(settings, "4", target="kserve-gpu", namespace="prod", triton_uri="s3://b/triton", api=api)
    assert gpu["where"] == "prod/hfcast-gpu"
    assert api.objects["hfcast-gpu"]["spec"]["predictor"]["model"]["storageUri"] == "s3://b/triton"


def test_deploy_local_writes_the_marker_and_refuses_unknown_targets(settings, monkeypatch):
    import json

    from serving.deploy import deploy

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    out = deploy(settings, "2")  # auto, outside a pod: the marker file
    marker = settings.home / "serving" / "deployed.json"
    assert out["where"] == str(marker) and json.loads(marker.read_text())["model_ref"] == "hfcast/2"
    with pytest.raises(ValueError, match="deploy target"):
        deploy(settings, "2", target="kserve-tpu")

    class Broken(_FakeCustomObjects):
        def get_namespaced_custom_object(self, *args):
            from kubernetes.client.rest import ApiException

            raise ApiException(status=403, reason="Forbidden")

    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException):  # a refusal is not "absent": never create over it
        deploy(settings, "2", target="kserve-cpu", api=Broken())


# --- gRPC requests as protobuf, and V2 answers in every form -------------------------------------

def _grpc(name="window", datatype="FP32", shape=(1, 30, F), raw=None, contents=None, outputs=(), **kw):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    inp = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    if contents is not None:
        getattr(inp.contents, "bytes_contents" if datatype == "BYTES" else "fp32_contents").extend(contents)
    return pb.ModelInferRequest(model_name="hfcast", inputs=[inp], raw_input_contents=raw or [],
                                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs], **kw)


def test_grpc_raw_and_contents_parse_to_the_same_request():
    x = windows(2)
    raw = v.parse_grpc(_grpc(shape=x.shape, raw=[x.tobytes()], id="r9"), F, 16)
    typed = v.parse_grpc(_grpc(shape=x.shape, contents=x.ravel().tolist()), F, 16)
    assert np.array_equal(raw.windows, x) and np.array_equal(typed.windows, x)
    assert raw.binary_output and not typed.binary_output and raw.request_id == "r9" and typed.request_id is None
    sym = b"".join(len(s).to_bytes(4, "little") + s for s in (b"AAA", b"OLD"))
    assert v.parse_grpc(_grpc("symbol", "BYTES", (2,), raw=[sym]), F, 16).symbols == ["AAA", "OLD"]
    assert v.parse_grpc(_grpc("symbol", "BYTES", (2,), contents=[b"AAA", b"OLD"]), F, 16).symbols == ["AAA", "OLD"]
    asked = _grpc(shape=x.shape, contents=x.ravel().tolist(), parameters={"binary_data_output": _param(bool_param=True)})
    assert v.parse_grpc(asked, F, 16).binary_output  # typed contents in, raw outputs asked


@pytest.mark.parametrize("req,match", [
    (lambda: _grpc(raw=[windows(1).tobytes()[:-4]]), r"needs 960 bytes of binary data, got 956"),
    (lambda: _grpc(contents=[0.5] * 10), "does not hold matching data"),
    (lambda: _grpc(), "does not hold matching data"),  # neither raw nor contents: as JSON "data": []
    (lambda: _grpc(raw=[windows(1).tobytes()], contents=[0.5]), "both contents and raw_input_contents"),
    (lambda: _grpc(raw=[b"", b""]), r"1 input\(s\) but 2 raw_input_contents"),
    (lambda: _grpc(datatype="FP99"), "wrong datatype for input 'window': FP99, expected FP32"),
    (lambda: _grpc("symbol", "BYTES", (1,), contents=[b"\xff\xfe"]), "element 0 is not UTF-8 text"),
    (lambda: _grpc("symbol", "BYTES", (2,), contents=[b"AAA"]), "holds 1 elements, expected 2"),
    (lambda: _grpc(raw=[windows(1).tobytes()], outputs=["nope"]), "unknown output 'nope'"),
    (lambda: _grpc(raw=[windows(1).tobytes()], parameters={"scaled": _param(string_param="maybe")}), "must be a boolean"),
])
def test_grpc_refusals_name_the_problem(req, match):
    with pytest.raises(InvalidInput, match=match):
        v.parse_grpc(req(), F, 16)


def _param(**kw):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    return pb.InferParameter(**kw)


def test_v2_answers_in_the_form_asked(svc, fc):
    from kserve import InferResponse

    from serving import responses

    x = windows(3)
    preds = svc.predictions(fc.predict_raw(fc.scaler.transform(x)), fc.side_inputs(x))
    outs = svc.v2_outputs(preds, ["t"] * 3, ["A", "B", "C"])
    head = {"model_name": "hfcast", "model_version": "tiny-tcn", "id": "r1"}
    binary = v.ParsedRequest("v2", symbols=["A", "B", "C"], binary_output=True)
    body, headers = responses.http_v2(head, outs, binary)  # KServe's own decoder reads it back
    back = InferResponse.from_bytes(body, int(headers[v.BINARY_HEADER]))
    assert np.allclose(back.outputs[4].as_numpy(), preds["rv_10m_pred"]) and back.outputs[4].name == "rv_10m_pred"
    assert list(back.get_output_by_name("symbol").data) == ["A", "B", "C"]
    picked = v.ParsedRequest("v2", symbols=["A"], outputs={"symbol": None, "rv_10m_pred": False}, binary_output=True)
    body, headers = responses.http_v2(head, outs, picked)
    doc = orjson.loads(body[:int(headers[v.BINARY_HEADER])])
    assert [o["name"] for o in doc["outputs"]] == ["symbol", "rv_10m_pred"] and "data" in doc["outputs"][1]
    g = responses.grpc_v2(head, outs, v.ParsedRequest("v2", symbols=["A"]))
    assert not g.raw_output_contents and list(g.outputs[-1].contents.bytes_contents) == [b"A", b"B", b"C"]
    assert np.allclose(list(g.outputs[4].contents.fp32_contents), preds["rv_10m_pred"])
    assert len(responses.grpc_v2(head, outs, binary).raw_output_contents) == len(outs)
    one_binary = v.ParsedRequest("v2", symbols=["A"], outputs={"symbol": None, "rv_10m_pred": True})
    g = responses.grpc_v2(head, outs, one_binary)  # no mix in gRPC: one binary output makes all raw
    assert len(g.raw_output_contents) == 2 and not g.outputs[0].HasField("contents")
    with pytest.raises(InvalidInput, match="answer symbol inputs only"):
        responses.http_v2(head, svc.v2_outputs(preds, [""] * 3), picked)


def _as_http_and_grpc(name, datatype, shape, values, params=None):
    """One V2 request in its four encodings: (JSON body, binary-extension body + header, gRPC with
    typed contents, gRPC with raw_input_contents)."""
    import json

    if datatype == "BYTES":
        raw = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in values)
        contents = [s.encode() for s in values]
    else:
        with np.errstate(over="ignore"):  # 1e39 is inf in FP32, on purpose
            raw = np.asarray(values, "<f4").tobytes()
        contents = list(values)
    spec = {"name": name, "datatype": datatype, "shape": list(shape)}
    doc = {"inputs": [{**spec, "data": list(values)}], **({"parameters": params} if params else {})}
    header = json.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": len(raw)}}],
                         **({"parameters": params} if params else {})}).encode()
    gparams = {k: _param(bool_param=v) if isinstance(v, bool) else _param(string_param=str(v))
               for k, v in (params or {}).items()}
    return (json.dumps(doc).encode(), (header + raw, {v.BINARY_HEADER: str(len(header))}),
            _grpc(name, datatype, shape, contents=contents, parameters=gparams),
            _grpc(name, datatype, shape, raw=[raw], parameters=gparams))


@pytest.mark.parametrize("name,datatype,shape,values,params", [
    ("window", "FP64", (1, 30, F), [0.1] * 30 * F, None),
    ("window", "FP32", (1, 29, F), [0.1] * 29 * F, None),
    ("window", "FP32", (1, 30, F + 1), [0.1] * 30 * (F + 1), None),
    ("window", "FP32", (17, 30, F), [0.1] * 17 * 30 * F, None),
    ("window", "FP32", (0, 30, F), [], None),
    ("window", "FP32", (1, 30, F), [0.1] * (30 * F - 1) + [1e39], None),  # inf in FP32
    ("window", "FP32", (1, 30, F), [0.1] * 30 * F, {"scaled": "maybe"}),
    ("prices", "FP32", (1, 30, F), [0.1] * 30 * F, None),
    ("symbol", "BYTES", (2, 1), ["AAA", "OLD"], None),
    ("symbol", "BYTES", (1,), [""], None),
    ("symbol", "BYTES", (1,), ["A\u0000B"], None),
    ("symbol", "BYTES", (1,), ["X" * 65], None),
    ("symbol", "FP32", (1,), [1.0], None),
])
def test_one_mistake_reads_the_same_over_http_and_grpc(name, datatype, shape, values, params):
    body, (binary, headers), contents, raw = _as_http_and_grpc(name, datatype, shape, values, params)
    msgs = []
    for parse in (lambda: v.parse_http("v2", body, {}, F, 16), lambda: v.parse_grpc(contents, F, 16),
                  lambda: v.parse_http("v2", binary, headers, F, 16), lambda: v.parse_grpc(raw, F, 16)):
        with pytest.raises(InvalidInput) as err:
            parse()
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] and msgs[2] == msgs[3], msgs  # JSON data == gRPC contents; binary == gRPC raw

"""Request validation: every caller mistake becomes ``InvalidInput`` (HTTP 400) naming the problem.

Why a module of its own: the predictor stays short (as KServe's sklearnserver), and each check is
unit-tested without a server. Nothing here runs a model; it turns a V1 dict or a V2
``InferRequest`` into a :class:`ParsedRequest` (windows or symbols) or refuses it.

V1 body: ``{"instances": [{"window": [[..F..] x 30]} | {"symbol": "AAPL"} | [[..F..] x 30], ...],
"parameters": {"scaled": false}}``. V2 request (JSON, binary extension or gRPC): one input,
``window`` FP32 [B, 30, F] or ``symbol`` BYTES [B]; request parameters ``scaled`` (bool, default
false: the window holds raw features) and ``binary_data_output``; optional requested ``outputs``
(each with an optional ``binary_data`` parameter). A V2 request gets the same checks, and the same
message for the same mistake, whether its tensors came as JSON ``data``, binary-extension bytes,
gRPC ``contents`` or gRPC ``raw_input_contents``.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import orjson
from kserve import InferRequest
from kserve.errors import InvalidInput

from hfcast.contracts import INFO_COLUMNS, LOOKBACK, PRED_COLUMNS
from hfcast.data.schema import MAX_SYMBOL_LEN, symbol_problem
BINARY_HEADER = "inference-header-content-length"
NUMBER_OUTPUTS = (*PRED_COLUMNS, *INFO_COLUMNS)  # FP32 [B]
# BYTES [B]; feature_ts and symbol only answer symbol requests (a window has no feature time)
TEXT_OUTPUTS = ("model_name", "model_version", "feature_ts", "symbol")
OUTPUT_NAMES = (*NUMBER_OUTPUTS, *TEXT_OUTPUTS)


@dataclass
class ParsedRequest:
    """A validated request: exactly one of ``windows`` / ``symbols`` is set."""

    protocol: str  # "v1" | "v2"
    windows: np.ndarray | None = None  # [B, 30, F] float32, finite
    symbols: list[str] | None = None
    scaled: bool = False  # windows already standardised by the model's scaler
    request_id: str | None = None
    # V2 only: the outputs asked for, in order, each with its binary_data flag (None: the default);
    # None: all of them. ``binary_output``: the default form of outputs is binary (HTTP
    # ``binary_data_output``, or a gRPC request that sent raw_input_contents)
    outputs: dict[str, bool | None] | None = None
    binary_output: bool = False

    @property
    def size(self) -> int:
        return len(self.symbols) if self.symbols is not None else int(self.windows.shape[0])

    @property
    def kind(self) -> str:
        return "window" if self.symbols is None else "symbol"


def _check_batch(n: int, max_batch: int) -> None:
    if n == 0:
        raise InvalidInput("empty batch: the request holds no windows or symbols")
    if n > max_batch:
        raise InvalidInput(f"batch of {n} exceeds the maximum batch size of {max_batch}")


def check_windows(raw: Any, n_features: int, max_batch: int) -> np.ndarray:
    """Numbers -> float32 [B, 30, F], refusing strings, ragged lists, wrong shape, NaN and inf."""
    try:
        arr = np.asarray(raw)
        if arr.dtype.kind not in "fiu":  # "1.5" would silently become a float with dtype=float32
            raise ValueError(f"found {_kind(arr)} values where numbers belong")
        with np.errstate(over="ignore"):  # 1e39 overflows to inf: refused below, naming the rows
            arr = arr.astype(np.float32, copy=False)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"window must be numbers in a [B, {LOOKBACK}, {n_features}] array: {exc}") from None
    if arr.ndim >= 1:
        _check_batch(arr.shape[0], max_batch)
    if arr.ndim != 3 or arr.shape[1:] != (LOOKBACK, n_features):
        if arr.ndim == 3 and arr.shape[1] == LOOKBACK:
            raise InvalidInput(f"wrong feature count: window has {arr.shape[2]} features per minute, "
                               f"the model expects {n_features}")
        raise InvalidInput(f"wrong window shape {list(arr.shape)}: expected [B, {LOOKBACK}, {n_features}]")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = sorted({int(i) for i in np.nonzero(bad.any(axis=(1, 2)))[0]})[:10]
        raise InvalidInput(f"window contains NaN or inf (batch rows {rows})")
    return np.ascontiguousarray(arr)


def json_tensor(data: list, shape: list[int], name: str) -> np.ndarray:
    """A JSON FP32 tensor -> float32 array of ``shape``, converting once and refusing strings
    (``as_numpy`` would turn "1.5" into 1.5 silently).

    The usual body, a flat list of numbers, goes through ``array.array("d", ...)``: one C loop into
    a double buffer that refuses strings, nulls and nested lists by itself (TypeError), where
    ``np.asarray`` first scans the list to find a dtype (bench: 1.7 ms instead of 3.8 ms for a
    batch of 64 windows of 30 x 59). Anything else takes ``np.asarray``, which names the problem;
    a list starting with a boolean too, so an all-boolean window is still refused.
    """
    try:
        if data and type(data[0]) is not bool:
            try:
                flat = np.frombuffer(array.array("d", data), dtype=np.float64)
            except TypeError:  # a string, null or nested list: the general path below
                flat = None
            if flat is not None:
                with np.errstate(over="ignore"):  # 1e39 -> inf, refused by check_windows
                    return flat.astype(np.float32).reshape(shape)
        arr = np.asarray(data)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"found {_kind(arr)} values: window must be numbers")
        with np.errstate(over="ignore"):
            return arr.astype(np.float32, copy=False).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {name!r} (FP32, shape {list(shape)}) does not hold matching data: {exc}") from None


def _kind(arr: np.ndarray) -> str:
    return {"U": "string", "S": "string", "b": "boolean", "O": "null, object or mixed-type"}.get(
        arr.dtype.kind, arr.dtype.name)


def check_symbols(raw: Any, max_batch: int) -> list[str]:
    """A flat list of non-empty strings (bytes are decoded as UTF-8)."""
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise InvalidInput(f"symbol must be a list of strings, got {type(raw).__name__}")
    out = []
    for s in list(np.asarray(raw, dtype=object).ravel()):
        if isinstance(s, bytes):
            s = s.decode("utf-8", errors="replace")
        if not isinstance(s, str) or not s.strip():
            raise InvalidInput(f"symbol must be a non-empty string, got {s!r}")
        why = symbol_problem(s.strip())  # the rule ingest quarantines by (hfcast.data.schema)
        if why:
            raise InvalidInput(f"symbol {s[:MAX_SYMBOL_LEN]!r} is not a valid symbol: {why}")
        out.append(s.strip())
    _check_batch(len(out), max_batch)
    return out


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for attr in ("bool_param", "string_param"):  # gRPC InferParameter
        if hasattr(value, attr) and value.HasField(attr):
            return _as_bool(getattr(value, attr), name)
    raise InvalidInput(f"parameter {name!r} must be a boolean, got {value!r}")


def _params(obj: Any) -> Mapping[str, Any]:
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        return dict(obj.items())
    raise InvalidInput(f"parameters must be an object, got {type(obj).__name__}")


def decode_body(payload: Any) -> Any:
    """A JSON body (bytes) as Python objects; malformed JSON (NaN literals included) is the caller's 400."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            hint = ""
            if bytes(payload[exc.pos:exc.pos + 9]).lstrip(b"-").startswith((b"NaN", b"Infinity", b"nan", b"inf")):
                # what a client's lenient JSON writer (tritonclient's rapidjson) makes of NaN
                hint = " (NaN and Infinity are not JSON numbers: a window must hold finite numbers)"
            raise InvalidInput(f"malformed JSON body: {exc}{hint}") from None
    return payload


def parse_v1(payload: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """``{"instances": [...], "parameters": {...}}`` -> ParsedRequest."""
    payload = decode_body(payload)
    if isinstance(payload, dict) and "inputs" in payload and "instances" not in payload:
        raise InvalidInput('V1 body uses "instances" (the "inputs" form is V2: POST /v2/models/<name>/infer)')
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('V1 body must be a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list')
    _check_batch(len(instances), max_batch)
    scaled = _as_bool(_params(payload.get("parameters")).get("scaled", False), "scaled")
    kinds = {("symbol" if isinstance(i, dict) and "symbol" in i else "window") for i in instances}
    if len(kinds) > 1:
        raise InvalidInput("instances mix symbols and windows: send one kind per request")
    if kinds == {"symbol"}:
        bad = [i["symbol"] for i in instances if not isinstance(i["symbol"], str)]
        if bad:
            raise InvalidInput(f"symbol must be a non-empty string, got {bad[0]!r}")
        return ParsedRequest("v1", symbols=check_symbols([i["symbol"] for i in instances], max_batch))
    windows = []
    for k, inst in enumerate(instances):
        if isinstance(inst, dict):
            if "window" not in inst:
                raise InvalidInput(f'instance {k} has neither "window" nor "symbol" (keys {sorted(inst)})')
            inst = inst["window"]
        windows.append(inst)
    return ParsedRequest("v1", windows=check_windows(windows, n_features, max_batch), scaled=scaled)




# --- V2: one check of each input, whether it came as JSON, binary or gRPC -----------------------

EXPECTED_TYPES = {"window": "FP32", "symbol": "BYTES"}


@dataclass
class TensorSpec:
    """A V2 input's declaration (name, datatype, shape, parameters), checked before its data."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict = field(default_factory=dict)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_spec(name: Any, datatype: Any, shape: Any, parameters: Any, n_features: int, max_batch: int) -> TensorSpec:
    """Name, datatype and shape of the one V2 input, refused before any data is touched (so a huge
    declared shape never allocates anything)."""
    if not isinstance(name, str):
        raise InvalidInput(f"input name must be a string, got {name!r}")
    if name not in EXPECTED_TYPES:
        raise InvalidInput(f"unknown input {name!r}: expected 'window' (FP32) or 'symbol' (BYTES)")
    if not isinstance(datatype, str) or datatype.upper() != EXPECTED_TYPES[name]:
        raise InvalidInput(f"wrong datatype for input {name!r}: {datatype}, expected {EXPECTED_TYPES[name]}")
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    shape = [int(d) for d in shape]
    if shape and shape[0] == 0:
        raise InvalidInput(f"empty batch: input {name!r} has shape {shape}")
    if any(d <= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} must hold positive dimensions")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise InvalidInput(f"input {name!r}: parameters must be an object, got {type(parameters).__name__}")
    if name == "symbol" and len(shape) != 1:
        raise InvalidInput(f"symbol must have shape [B], got {shape}")
    if name == "window":
        if len(shape) != 3 or shape[1] != LOOKBACK:
            raise InvalidInput(f"wrong window shape {shape}: expected [B, {LOOKBACK}, {n_features}]")
        if shape[2] != n_features:
            raise InvalidInput(f"wrong feature count: window has {shape[2]} features per minute, "
                               f"the model expects {n_features}")
    _check_batch(shape[0], max_batch)
    return TensorSpec(name, datatype.upper(), shape, dict(parameters or {}))


def fp32_from_bytes(chunk: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
    """Binary FP32 data (little-endian) as a read-only view of the body: no copy, no list."""
    want = int(np.prod(spec.shape)) * 4
    if len(chunk) != want:
        raise InvalidInput(f"input {spec.name!r} (FP32, shape {spec.shape}) needs {want} bytes of binary data, "
                           f"got {len(chunk)}")
    return np.frombuffer(chunk, dtype="<f4").reshape(spec.shape)


def bytes_from_binary(chunk: bytes | memoryview, spec: TensorSpec) -> list[str]:
    """Binary BYTES data: each element a 4-byte little-endian length, then that many UTF-8 bytes."""
    raw, out, pos, n = bytes(chunk), [], 0, int(np.prod(spec.shape))
    while pos < len(raw):
        if len(raw) - pos < 4:
            raise InvalidInput(f"input {spec.name!r} (BYTES): {len(raw) - pos} stray bytes where a 4-byte "
                               f"length prefix belongs; BYTES elements are <uint32 length><UTF-8 bytes>")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        if size > len(raw) - pos - 4:
            raise InvalidInput(f"input {spec.name!r} (BYTES): element {len(out)} declares {size} bytes, only "
                               f"{len(raw) - pos - 4} remain; BYTES elements are <uint32 length><UTF-8 bytes>")
        try:
            out.append(raw[pos + 4:pos + 4 + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {spec.name!r} (BYTES): element {len(out)} is not UTF-8 text") from None
        pos += 4 + size
    if len(out) != n:
        raise InvalidInput(f"input {spec.name!r} (BYTES, shape {spec.shape}) holds {len(out)} elements, "
                           f"expected {n}")
    return out


def bytes_from_json(data: Any, spec: TensorSpec) -> list:
    """JSON BYTES data: a (possibly nested) list of ``prod(shape)`` strings."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {spec.name!r} (BYTES): data must be a list of strings, got {type(data).__name__}")
    flat = np.asarray(data, dtype=object).ravel().tolist() if any(isinstance(d, list) for d in data) else data
    if len(flat) != int(np.prod(spec.shape)):
        raise InvalidInput(f"input {spec.name!r} (BYTES, shape {spec.shape}) holds {len(flat)} elements, "
                           f"expected {int(np.prod(spec.shape))}")
    return flat


@dataclass(frozen=True)
class V2Options:
    """What a V2 request says beside its one input: parameters, id and the outputs it asks for."""

    scaled: bool = False
    request_id: str | None = None
    outputs: dict[str, bool | None] | None = None
    binary_output: bool = False


def check_outputs(requested: list[tuple[Any, Any]]) -> dict[str, bool | None] | None:
    """Requested outputs ``[(name, parameters)]`` -> ``{name: binary_data or None}`` (None: none asked)."""
    if not requested:
        return None
    out: dict[str, bool | None] = {}
    for name, params in requested:
        if not isinstance(name, str) or name not in OUTPUT_NAMES:
            raise InvalidInput(f"unknown output {name!r}: this model answers {list(OUTPUT_NAMES)}")
        params = _params(params)
        if "classification" in params:
            raise InvalidInput(f"output {name!r}: the classification extension does not apply (the outputs are "
                               f"forecasts and probabilities, not class scores)")
        binary = params.get("binary_data")
        out[name] = None if binary is None else _as_bool(binary, "binary_data")
    return out


def _options(rid: Any, params: Any, requested: list[tuple[Any, Any]], binary_output: bool | None = None) -> V2Options:
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput(f'request "id" must be a string, got {type(rid).__name__}')
    params = _params(params)
    if binary_output is None:  # the client says (binary_data_output); a gRPC request with raw inputs gets raw outputs
        binary_output = _as_bool(params.get("binary_data_output", False), "binary_data_output")
    return V2Options(_as_bool(params.get("scaled", False), "scaled"), rid or None, check_outputs(requested),
                     binary_output)


def to_parsed(spec: TensorSpec, values: Any, opts: V2Options, n_features: int, max_batch: int) -> ParsedRequest:
    """Checked data of the one input -> ParsedRequest (windows: finite float32; symbols: valid strings)."""
    common = {"request_id": opts.request_id, "outputs": opts.outputs, "binary_output": opts.binary_output}
    if spec.name == "symbol":
        return ParsedRequest("v2", symbols=check_symbols(values, max_batch), **common)
    if isinstance(values, list):
        values = json_tensor(values, spec.shape, spec.name)
    return ParsedRequest("v2", windows=check_windows(values, n_features, max_batch), scaled=opts.scaled, **common)


def _one_input(inputs: Any) -> Any:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('V2 request needs a non-empty "inputs" list')
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input ('window' or 'symbol'), got {len(inputs)}")
    return inputs[0]


def _request_fields(doc: Any) -> tuple[dict, V2Options]:
    """The one input and the options of a V2 JSON document."""
    if not isinstance(doc, dict):
        raise InvalidInput(f"V2 body must be a JSON object, got {type(doc).__name__}")
    inp = _one_input(doc.get("inputs"))
    if not isinstance(inp, dict):
        raise InvalidInput(f"each input must be an object, got {type(inp).__name__}")
    outputs = doc.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)):
        raise InvalidInput('"outputs" must be a list of objects like {"name": "rv_10m_pred"}')
    requested = [(o.get("name"), o.get("parameters")) for o in outputs or []]
    return inp, _options(doc.get("id"), doc.get("parameters"), requested)


def _spec_of(inp: dict, n_features: int, max_batch: int) -> TensorSpec:
    missing = [k for k in ("name", "datatype", "shape") if k not in inp]
    if missing:
        raise InvalidInput(f"input lacks {missing} (each input needs name, datatype, shape)")
    return check_spec(inp["name"], inp["datatype"], inp["shape"], inp.get("parameters"), n_features, max_batch)


def parse_v2_json(body: bytes | Any, n_features: int, max_batch: int) -> ParsedRequest:
    """A V2 JSON body (bytes or already-decoded dict) -> ParsedRequest."""
    inp, opts = _request_fields(decode_body(body))
    spec = _spec_of(inp, n_features, max_batch)
    if "data" not in inp:
        raise InvalidInput(f"input {spec.name!r} has no \"data\" (binary data needs the "
                           f"{BINARY_HEADER} header)")
    data = inp["data"]
    if spec.name == "window" and not isinstance(data, list):
        raise InvalidInput(f"input 'window' (FP32): data must be a list of numbers, got {type(data).__name__}")
    values = bytes_from_json(data, spec) if spec.name == "symbol" else data
    return to_parsed(spec, values, opts, n_features, max_batch)


def _header_length(value: Any, body_len: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{BINARY_HEADER} must be an integer, got {value!r}") from None
    if not 0 < n <= body_len:
        raise InvalidInput(f"{BINARY_HEADER} {n} must lie in [1, {body_len}] (the body size)")
    return n


def from_raw(chunk: bytes | memoryview, spec: TensorSpec) -> Any:
    """Raw tensor bytes (binary extension, gRPC raw_input_contents) -> values of the one input."""
    return bytes_from_binary(chunk, spec) if spec.name == "symbol" else fp32_from_bytes(chunk, spec)


def parse_v2_binary(body: bytes, header_length: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """A binary-extension V2 body (JSON header, then raw tensor bytes) -> ParsedRequest, no copies."""
    n = _header_length(header_length, len(body))
    try:
        doc = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"binary V2 request: unreadable JSON header: {exc}") from None
    inp, opts = _request_fields(doc)
    spec = _spec_of(inp, n_features, max_batch)
    size = spec.parameters.get("binary_data_size")
    if size is None:
        if len(body) != n:
            raise InvalidInput(f"binary V2 request: {len(body) - n} bytes after the JSON header, but input "
                               f"{spec.name!r} declares no binary_data_size")
        return parse_v2_json(doc, n_features, max_batch)
    if not _is_int(size) or size < 0:
        raise InvalidInput(f"input {spec.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if "data" in inp:
        raise InvalidInput(f"input {spec.name!r} has both \"data\" and binary_data_size: send one")
    chunk = memoryview(body)[n:n + size]
    if len(chunk) != size:
        raise InvalidInput(f"input {spec.name!r} declares {size} binary bytes, the body holds {len(chunk)}")
    if n + size != len(body):
        raise InvalidInput(f"binary V2 request: {len(body) - n - size} bytes after the declared tensors")
    return to_parsed(spec, from_raw(chunk, spec), opts, n_features, max_batch)


def parse_http(protocol: str, body: bytes, headers: Mapping[str, str], n_features: int,
               max_batch: int) -> ParsedRequest:
    """The one entry point for HTTP bodies: V1 JSON, V2 JSON or V2 binary -> ParsedRequest or InvalidInput."""
    if protocol == "v1":
        return parse_v1(body, n_features, max_batch)
    if headers.get(BINARY_HEADER) is not None:
        return parse_v2_binary(body, headers[BINARY_HEADER], n_features, max_batch)
    return parse_v2_json(body, n_features, max_batch)


def parse_grpc(request: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """A gRPC ``ModelInferRequest`` (protobuf) -> ParsedRequest, with the checks and messages of HTTP.

    Tensors come in ``raw_input_contents`` (tritonclient always; KServe's client for numpy data:
    little-endian bytes, BYTES elements length-prefixed, exactly as the HTTP binary extension) or
    in the typed ``contents`` lists (as JSON ``data``). Outputs go back in the same form.
    """
    inp = _one_input(list(request.inputs))
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"V2 request: {len(request.inputs)} input(s) but {len(raw)} raw_input_contents")
    opts = _options(request.id, request.parameters, [(o.name, o.parameters) for o in request.outputs],
                    binary_output=True if raw else None)
    spec = check_spec(inp.name, inp.datatype, list(inp.shape), None, n_features, max_batch)
    if raw:
        if inp.HasField("contents"):
            raise InvalidInput(f"input {spec.name!r} has both contents and raw_input_contents: send one")
        return to_parsed(spec, from_raw(raw[0], spec), opts, n_features, max_batch)
    if spec.name == "window":
        return to_parsed(spec, list(inp.contents.fp32_contents), opts, n_features, max_batch)
    values = bytes_from_json(list(inp.contents.bytes_contents), spec)
    for i, v in enumerate(values):  # as the binary path: text must be UTF-8, not repaired
        try:
            values[i] = v.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {spec.name!r} (BYTES): element {i} is not UTF-8 text") from None
    return to_parsed(spec, values, opts, n_features, max_batch)


def parse_v2(request: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """A KServe ``InferRequest`` (KServe's own routes, the transformer) through the same checks.

    KServe's ``InferRequest.from_grpc`` leaves ``data == []`` and the bytes in ``_raw_data`` when
    the client sent ``raw_input_contents``: the bytes win whenever they are there.
    """
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input ('window' or 'symbol'), got {len(inputs)}: "
                           f"{[getattr(i, 'name', None) for i in inputs]}")
    inp = inputs[0]
    opts = _options(request.id, request.parameters, [], binary_output=False)
    spec = check_spec(inp.name, inp.datatype, list(inp.shape) if isinstance(inp.shape, (list, tuple)) else inp.shape,
                      None, n_features, max_batch)
    raw = getattr(inp, "_raw_data", None)
    data = inp.data
    if raw is not None and (data is None or (isinstance(data, list) and not data)):
        values = from_raw(raw, spec)
    elif isinstance(data, np.ndarray):
        if data.size != int(np.prod(spec.shape)):
            raise InvalidInput(f"input {spec.name!r} (shape {spec.shape}) does not hold matching data: "
                               f"{data.size} values")
        values = data.reshape(-1).tolist() if spec.name == "symbol" else data.reshape(spec.shape)
    elif isinstance(data, list):
        values = bytes_from_json(data, spec) if spec.name == "symbol" else data
    else:
        raise InvalidInput(f"input {spec.name!r} has no data")
    return to_parsed(spec, values, opts, n_features, max_batch)


def parse_kserve(payload: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """What a KServe model method receives: an ``InferRequest`` (V2) or a V1 JSON document."""
    if isinstance(payload, InferRequest):
        return parse_v2(payload, n_features, max_batch)
    return parse_v1(payload, n_features, max_batch)

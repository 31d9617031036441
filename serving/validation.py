"""Request validation: every caller mistake becomes ``InvalidInput`` (HTTP 400) naming the problem.

Why a module of its own: the predictor stays short (as KServe's sklearnserver), and each check is
unit-tested without a server. Nothing here runs a model; it turns a V1 dict or a V2
``InferRequest`` into a :class:`ParsedRequest` (windows or symbols) or refuses it.

V1 body: ``{"instances": [{"window": [[..F..] x 30]} | {"symbol": "AAPL"} | [[..F..] x 30], ...],
"parameters": {"scaled": false}}``. V2 body: one input, ``window`` FP32 [B, 30, F] or ``symbol``
BYTES [B]; request parameter ``scaled`` (bool, default false: the window holds raw features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from kserve.errors import InvalidInput

from hfcast.contracts import LOOKBACK


@dataclass
class ParsedRequest:
    """A validated request: exactly one of ``windows`` / ``symbols`` is set."""

    protocol: str  # "v1" | "v2"
    windows: np.ndarray | None = None  # [B, 30, F] float32, finite
    symbols: list[str] | None = None
    scaled: bool = False  # windows already standardised by the model's scaler
    request_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.symbols) if self.symbols is not None else int(self.windows.shape[0])


def _check_batch(n: int, max_batch: int) -> None:
    if n == 0:
        raise InvalidInput("empty batch: the request holds no windows or symbols")
    if n > max_batch:
        raise InvalidInput(f"batch of {n} exceeds the maximum batch size of {max_batch}")


def check_windows(raw: Any, n_features: int, max_batch: int) -> np.ndarray:
    """Numbers -> float32 [B, 30, F], refusing strings, ragged lists, wrong shape, NaN and inf."""
    try:
        arr = np.asarray(raw)
        if arr.dtype.kind not in "fiub":  # "1.5" would silently become a float with dtype=float32
            raise ValueError(f"found {arr.dtype.kind!r}-kind values (strings, nulls or mixed types)")
        arr = arr.astype(np.float32)
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
    (``as_numpy`` would turn "1.5" into 1.5 silently)."""
    try:
        arr = np.asarray(data)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"found {arr.dtype.kind!r}-kind values (strings, nulls or mixed types): "
                             f"window must be numbers")
        return arr.astype(np.float32, copy=False).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {name!r} (FP32, shape {list(shape)}) does not hold matching data: {exc}") from None


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
    """KServe hands V1 bodies it could not decode through as bytes: report them as malformed JSON."""
    if isinstance(payload, (bytes, bytearray)):
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"malformed JSON body: {exc}") from None
    return payload


def parse_v1(payload: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """``{"instances": [...], "parameters": {...}}`` -> ParsedRequest."""
    payload = decode_body(payload)
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
        return ParsedRequest("v1", symbols=check_symbols([i["symbol"] for i in instances], max_batch))
    windows = []
    for k, inst in enumerate(instances):
        if isinstance(inst, dict):
            if "window" not in inst:
                raise InvalidInput(f'instance {k} has neither "window" nor "symbol" (keys {sorted(inst)})')
            inst = inst["window"]
        windows.append(inst)
    return ParsedRequest("v1", windows=check_windows(windows, n_features, max_batch), scaled=scaled)


def parse_v2(request: Any, n_features: int, max_batch: int) -> ParsedRequest:
    """An ``InferRequest`` with one input, ``window`` (FP32) or ``symbol`` (BYTES)."""
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input ('window' or 'symbol'), got {len(inputs)}: "
                           f"{[i.name for i in inputs]}")
    inp = inputs[0]
    scaled = _as_bool(_params(request.parameters).get("scaled", False), "scaled")
    expected = {"window": "FP32", "symbol": "BYTES"}
    if inp.name not in expected:
        raise InvalidInput(f"unknown input {inp.name!r}: expected 'window' (FP32) or 'symbol' (BYTES)")
    if inp.datatype != expected[inp.name]:
        raise InvalidInput(f"wrong datatype for input {inp.name!r}: {inp.datatype}, expected {expected[inp.name]}")
    try:
        if inp.name == "window" and isinstance(inp.data, list):
            data = json_tensor(inp.data, list(inp.shape), inp.name)
        else:
            data = inp.as_numpy()  # BYTES, or binary tensor data (Inference-Header-Content-Length)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {inp.name!r} ({inp.datatype}, shape {list(inp.shape)}) "
                           f"does not hold matching data: {exc}") from None
    if inp.name == "symbol":
        if data.ndim != 1:
            raise InvalidInput(f"symbol must have shape [B], got {list(data.shape)}")
        return ParsedRequest("v2", symbols=check_symbols(data, max_batch), request_id=request.id)
    return ParsedRequest("v2", windows=check_windows(data, n_features, max_batch), scaled=scaled,
                         request_id=request.id)

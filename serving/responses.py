"""Open Inference Protocol (V2) answers in the form the client asked for, and the model metadata.

Which outputs: all of them, or those the request names, in its order. Their form:
- HTTP: JSON ``data`` by default; the binary extension for the outputs the request wants binary
  (request parameter ``binary_data_output``, or an output's own ``binary_data``, which wins): the
  JSON header, then the raw tensors, with ``inference-header-content-length`` (tritonclient's
  HTTP client asks all outputs binary unless told otherwise);
- gRPC: ``raw_output_contents`` when the request sent ``raw_input_contents`` (as KServe and
  Triton answer; tritonclient reads FP32 outputs only from there) or asks binary outputs, typed
  ``contents`` otherwise.
Raw bytes: FP32 little-endian; BYTES elements each a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from hfcast.contracts import COLUMN_UNITS, TARGET_UNITS
from serving.validation import BINARY_HEADER, ParsedRequest

Tensor = dict  # {"name", "datatype", "shape", "data"}: ForecastService.v2_outputs
TEXT_UNITS = {"model_name": "registered model name", "model_version": "registered model version",
              "feature_ts": "ISO 8601 UTC start of the last minute of the feature window (symbol inputs only)",
              "symbol": "the symbol asked for, echoed (symbol inputs only)"}


def select(outputs: list[Tensor], req: ParsedRequest) -> list[tuple[Tensor, bool]]:
    """The outputs to answer, each with whether it goes binary (raw)."""
    if req.outputs is None:
        return [(o, req.binary_output) for o in outputs]
    by_name = {o["name"]: o for o in outputs}
    absent = [n for n in req.outputs if n not in by_name]
    if absent:
        raise InvalidInput(f"output(s) {absent} answer symbol inputs only (a window has no feature time or symbol)")
    return [(by_name[n], req.binary_output if b is None else b) for n, b in req.outputs.items()]


def raw_bytes(tensor: Tensor) -> bytes:
    if tensor["datatype"] == "BYTES":
        return b"".join(len(e).to_bytes(4, "little") + e for e in (s.encode("utf-8") for s in tensor["data"]))
    return np.ascontiguousarray(tensor["data"], dtype="<f4").tobytes()


def http_v2(head: dict[str, Any], outputs: list[Tensor], req: ParsedRequest) -> tuple[bytes, dict[str, str]]:
    """``(body, extra headers)`` of a V2 REST answer; ``head`` holds model_name, model_version, id
    (and parameters, if any)."""
    tensors, chunks = [], []
    for tensor, binary in select(outputs, req):
        doc = {"name": tensor["name"], "datatype": tensor["datatype"], "shape": tensor["shape"]}
        if binary:
            chunks.append(raw_bytes(tensor))
            doc["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            doc["data"] = tensor["data"]
        tensors.append(doc)
    header = orjson.dumps({**head, "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {}
    return b"".join([header, *chunks]), {BINARY_HEADER: str(len(header)), "content-type": "application/octet-stream"}


def grpc_v2(head: dict[str, Any], outputs: list[Tensor], req: ParsedRequest) -> pb.ModelInferResponse:
    """A ``ModelInferResponse``: raw outputs for a request with raw inputs, or one that asks binary
    outputs (``binary_data_output``, or any output's ``binary_data``: the protocol allows no mix,
    with raw_output_contents no output may carry contents), typed contents otherwise."""
    tensors, raws = [], []
    chosen = select(outputs, req)
    raw = any(binary for _, binary in chosen)
    for tensor, _ in chosen:
        out = pb.ModelInferResponse.InferOutputTensor(name=tensor["name"], datatype=tensor["datatype"],
                                                      shape=tensor["shape"])
        if raw:
            raws.append(raw_bytes(tensor))
        elif tensor["datatype"] == "BYTES":
            out.contents.bytes_contents.extend(s.encode("utf-8") for s in tensor["data"])
        else:
            out.contents.fp32_contents.extend(np.asarray(tensor["data"], dtype=np.float32).tolist())
        tensors.append(out)
    return pb.ModelInferResponse(model_name=head["model_name"], model_version=head["model_version"],
                                 id=head.get("id") or "", outputs=tensors, raw_output_contents=raws)


def metadata_v2(name: str, version: str, platform: str, inputs: list[dict], outputs: list[dict],
                features: list[str]) -> dict:
    """V2 model metadata with what OIP's tensor metadata has no field for: each tensor's unit in
    its ``parameters`` (and the window's feature order), the targets' definitions at the top.
    Clients that follow the schema ignore the extra fields; gRPC's ModelMetadata has no room for them."""
    window, symbol = ({**t} for t in inputs)
    window["parameters"] = {"unit": "raw features, one row a minute (oldest first), unscaled unless the request "
                                    "parameter scaled is true", "features": list(features)}
    symbol["parameters"] = {"unit": "ticker symbol; its newest window comes from the online feature store"}
    outs = [{**o, "parameters": {"unit": COLUMN_UNITS.get(o["name"]) or TEXT_UNITS[o["name"]]}} for o in outputs]
    return {"name": name, "versions": [version], "platform": platform, "inputs": [window, symbol], "outputs": outs,
            "parameters": {"targets": TARGET_UNITS}}

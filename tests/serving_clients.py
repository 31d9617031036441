"""Real V2 clients behind one small interface, for the serving tests and bench.

Each adapter: ``infer(input_name, values, outputs=None, model_version="") -> {output: ndarray}``,
refusals raised as :class:`ClientError` (code, message), ``versions()`` the model versions the
server's metadata names, ``close()``. Adapters are built by name (:data:`CLIENTS`) from
``{"base": "http://127.0.0.1:P", "grpc": "127.0.0.1:G"}``.

Why :class:`Isolated`: tritonclient's gRPC module and KServe's both register the protobuf package
``inference`` in protobuf's default descriptor pool, and the second import in one process fails
("duplicate symbol 'inference.ServerLiveRequest'"); tritonclient's gRPC client therefore runs in a
process of its own, which keeps its one channel across calls as a user's program would.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

import numpy as np

from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS

WINDOW_OUTPUTS = [*PRED_COLUMNS, *INFO_COLUMNS, "model_name", "model_version"]
SYMBOL_OUTPUTS = [*WINDOW_OUTPUTS, "feature_ts", "symbol"]


class ClientError(Exception):
    """A refusal as the client reported it: ``code`` ("400", "INVALID_ARGUMENT", ...) and message."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code, self.message = code, message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def text(a: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a, dtype=object).ravel()]


def _bytes_array(values) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype=np.object_)


def _datatype(name: str) -> str:
    return "BYTES" if name == "symbol" else "FP32"


class Triton:
    """tritonclient: ``http-json`` (JSON both ways), ``http-binary`` (binary both ways) or ``grpc``."""

    def __init__(self, server: dict, mode: str):
        if mode == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        self.mode, self.mod = mode, mod
        self.protocol = "grpc" if mode == "grpc" else "http"
        self.client = mod.InferenceServerClient(server["grpc"] if mode == "grpc" else server["base"].split("//")[1])

    def infer(self, name: str, values, outputs: list[str] | None = None, model_version: str = "") -> dict:
        from tritonclient.utils import InferenceServerException

        data = _bytes_array(values) if name == "symbol" else np.asarray(values, dtype=np.float32)
        inp = self.mod.InferInput(name, list(data.shape), _datatype(name))
        binary = self.mode != "http-json"
        if self.mode == "grpc":
            inp.set_data_from_numpy(data)
        else:
            inp.set_data_from_numpy(data, binary_data=binary)
        if outputs is None and not binary:  # tritonclient asks binary outputs unless it lists them
            outputs = SYMBOL_OUTPUTS if name == "symbol" else WINDOW_OUTPUTS
        requested = None if outputs is None else [
            self.mod.InferRequestedOutput(o) if self.mode == "grpc" else self.mod.InferRequestedOutput(o, binary_data=binary)
            for o in outputs]
        try:
            res = self.client.infer("hfcast", [inp], outputs=requested, model_version=model_version)
        except InferenceServerException as exc:
            raise ClientError(str(exc.status()).replace("StatusCode.", ""), exc.message()) from None
        resp = res.get_response()
        names = [o.name for o in resp.outputs] if self.mode == "grpc" else [o["name"] for o in resp["outputs"]]
        return {n: res.as_numpy(n) for n in names}

    def versions(self) -> list[str]:
        meta = self.client.get_model_metadata("hfcast")
        return list(meta.versions) if self.mode == "grpc" else meta["versions"]

    def close(self) -> None:
        self.client.close()


class KServeClient:
    """KServe's clients: ``rest`` (V2 REST, numpy data: binary), ``grpc`` (numpy: raw) or
    ``grpc-contents`` (lists: typed contents). Each keeps one event loop, so one channel."""

    def __init__(self, server: dict, mode: str):
        from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

        self.mode, self.base = mode, server["base"]
        self.protocol = "http" if mode == "rest" else "grpc"
        self.loop = asyncio.new_event_loop()

        async def make():
            if mode == "rest":
                return InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
            return InferenceGRPCClient(server["grpc"], retries=0)

        self.client = self.loop.run_until_complete(make())

    def infer(self, name: str, values, outputs: list[str] | None = None, model_version: str = "") -> dict:
        import grpc
        import httpx
        from kserve import InferInput, InferRequest
        from kserve.protocol.infer_type import RequestedOutput

        if self.mode == "grpc-contents":
            data = list(values) if name == "symbol" else np.asarray(values, np.float32).ravel().tolist()
            inp = InferInput(name=name, shape=list(np.shape(values)), datatype=_datatype(name), data=data)
        else:
            arr = _bytes_array(values) if name == "symbol" else np.asarray(values, dtype=np.float32)
            inp = InferInput(name=name, shape=list(arr.shape), datatype=_datatype(name))
            inp.set_data_from_numpy(arr)
        req = InferRequest(model_name="hfcast", infer_inputs=[inp], model_version=model_version or None,
                           request_outputs=[RequestedOutput(o) for o in outputs] if outputs else None)
        try:
            if self.mode == "rest":
                if model_version:
                    raise NotImplementedError("KServe's REST client sends no model version")
                res = self.loop.run_until_complete(self.client.infer(self.base, req, model_name="hfcast"))
            else:
                res = self.loop.run_until_complete(self.client.infer(req))
        except httpx.HTTPStatusError as exc:
            raise ClientError(str(exc.response.status_code), exc.response.json()["error"]) from None
        except grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details()) from None
        return {o.name: o.as_numpy() for o in res.outputs}

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


_ADAPTER: Any = None  # the adapter of an Isolated worker process


def _start(kind: str, server: dict) -> None:
    global _ADAPTER
    _ADAPTER = CLIENTS[kind](server)


def _call(method: str, args: tuple, kwargs: dict) -> Any:
    return getattr(_ADAPTER, method)(*args, **kwargs)


class Isolated:
    """An adapter in a spawned process of its own (see the module docstring); same interface."""

    def __init__(self, kind: str, server: dict, protocol: str):
        self.protocol = protocol
        self.pool = mp.get_context("spawn").Pool(1, initializer=_start,
                                                 initargs=(kind, {"base": server["base"], "grpc": server["grpc"]}))

    def infer(self, *args, **kwargs) -> dict:
        return self.pool.apply(_call, ("infer", args, kwargs))

    def versions(self) -> list[str]:
        return self.pool.apply(_call, ("versions", (), {}))

    def close(self) -> None:
        self.pool.apply(_call, ("close", (), {}))
        self.pool.close()
        self.pool.join()


CLIENTS = {"triton-http-json": lambda s: Triton(s, "http-json"), "triton-http-binary": lambda s: Triton(s, "http-binary"),
           "triton-grpc": lambda s: Triton(s, "grpc"), "kserve-rest": lambda s: KServeClient(s, "rest"),
           "kserve-grpc": lambda s: KServeClient(s, "grpc"),
           "kserve-grpc-contents": lambda s: KServeClient(s, "grpc-contents")}


def connect(kind: str, server: dict):
    """The adapter ``kind``; tritonclient's gRPC one in its own process."""
    return Isolated(kind, server, "grpc") if kind == "triton-grpc" else CLIENTS[kind](server)

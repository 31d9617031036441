"""The gRPC front of the predictor: Open Inference Protocol as real clients send it.

Why our own servicer (a subclass of KServe's): KServe 0.21's ``ModelInfer`` converts the request
with ``InferRequest.from_grpc``, which leaves the tensors of ``raw_input_contents`` (what
tritonclient always sends, and KServe's own client for numpy data) beside an empty ``data`` list
and refuses an unknown datatype with "invalid content type" before any model code runs; it also
ignores ``model_version``. Here hfcast's model gets the protobuf request itself
(:func:`serving.validation.parse_grpc`: the checks and messages of HTTP), answers in the form
asked (serving.responses), and every request is counted (serving.metrics). Other models, and the
health, metadata and repository calls, stay KServe's.

Why a server subclass: KServe's ``GRPCServer.start`` builds its servicer and interceptors inline;
this one also drops KServe's per-call INFO log line and its traceback per refused request
(a client's mistake is not a server error), and takes its receive limit from ``--max-body-mb``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent import futures
from typing import Any

from grpc import StatusCode, aio
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from serving import metrics
from serving.core import StaleFeatures

log = logging.getLogger(__name__)
INLINE_BYTES = 256 * 1024  # larger requests are answered in a worker thread (as serving.gateway does)


class QuietStatus(ExceptionToStatusInterceptor):
    """KServe's exception -> status mapping, without a logged traceback for the caller's mistakes."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str):
        if isinstance(ex, InvalidInput):
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        elif isinstance(ex, ModelNotFound):
            await context.abort(StatusCode.NOT_FOUND, ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)


def _status(exc: Exception) -> str:
    if isinstance(exc, InvalidInput):
        return "invalid_argument"
    if isinstance(exc, ModelNotFound):
        return "not_found"
    if isinstance(exc, ModelNotReady):
        return "unavailable"
    return "internal"


class HfcastServicer(InferenceServicer):
    """KServe's servicer; hfcast's model answers ``ModelInfer`` itself, and versions are checked."""

    def _served(self, name: str) -> Any:
        model = self._data_plane.get_model_from_registry(name)  # ModelNotFound -> NOT_FOUND
        return model if hasattr(model, "answer_grpc") else None

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = self._served(request.model_name)
        if model is None:
            return await super().ModelInfer(request, context)
        t0, req, status, stale = time.perf_counter(), None, "internal", False
        try:
            if not model.ready:
                raise ModelNotReady(request.model_name)
            req = model.parse_grpc(request)
            if request.ByteSize() > INLINE_BYTES:
                response = await asyncio.get_running_loop().run_in_executor(None, model.answer_grpc, req)
            else:
                response = model.answer_grpc(req)
            status = "ok"
            return response
        except Exception as exc:
            status, stale = _status(exc), isinstance(exc, StaleFeatures)
            raise
        finally:
            metrics.observe("v2-grpc", "infer", req.kind if req else "unknown", status, time.perf_counter() - t0,
                            req.size if req else 0, stale)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self._served(request.name)
        if model is not None:
            model.check_version(request.version)
        response = await super().ModelMetadata(request, context)
        if model is not None:
            response.versions.append(model.version)
        return response

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self._served(request.name)
        if model is not None:
            model.check_version(request.version)
        return await super().ModelReady(request, context)


class HfcastGRPCServer(GRPCServer):
    """KServe's gRPC server with :class:`HfcastServicer` and :class:`QuietStatus`."""

    def __init__(self, port: int, data_plane: Any, model_repository_extension: Any, max_receive_bytes: int,
                 grace_period: int = 30):
        super().__init__(port, data_plane, model_repository_extension, kwargs={}, grace_period=grace_period)
        self.max_receive_bytes = max_receive_bytes

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=(QuietStatus(),),
                                  options=[("grpc.max_send_message_length", -1),
                                           ("grpc.max_receive_message_length", self.max_receive_bytes)])
        servicer = HfcastServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()

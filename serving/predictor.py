"""The hfcast KServe predictor: champion (or a given version) in, V1 and V2 forecasts out.

Short on purpose, like KServe's sklearnserver: ``__init__`` stores its arguments, ``load()``
fetches the forecaster (weights + scaler + calibration) and picks the fastest runner, ``predict()``
validates (serving.validation), runs and builds the answer (serving.core). The protocols live
around it: serving.gateway (HTTP), serving.grpc_server (gRPC), serving.responses (V2 forms).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kserve
import orjson
from kserve import InferRequest, InferResponse
from kserve.errors import InvalidInput

from hfcast.contracts import LOOKBACK
from hfcast.explain import EXPLAINED
from serving import metrics, responses
from serving.core import ForecastService, Limits, VersionNotFound, feast_lookup, load_forecaster
from serving.dataplane import HfcastDataPlane
from serving.validation import NUMBER_OUTPUTS, TEXT_OUTPUTS, ParsedRequest, parse_grpc, parse_http, parse_kserve, parse_v1

if TYPE_CHECKING:  # annotations only
    from hfcast.config import Settings

log = logging.getLogger(__name__)

EXPLAIN_MAX_BATCH = 16  # windows per explain request (integrated gradients cost ~64 passes a window)
EXPLAIN_METHOD = {"method": "integrated_gradients",
                  "reference": "the training mean of every feature (all-zero scaled window)",
                  "attributed": "the part of the served forecast the networks compute (parts.network)",
                  "units": {"ret": EXPLAINED["ret"][1], "vol": EXPLAINED["vol"][1]}}


class HfcastPredictor(kserve.Model):
    """A Forecaster behind the fastest runner available (onnxruntime on CPU, TensorRT on GPU)."""

    def __init__(self, name: str = "hfcast", bundle: str | Path | None = None, ref: str | None = None,
                 runner: str = "auto", limits: Limits = Limits(), settings: Settings | None = None,
                 use_feature_store: bool = True, prefetch: Future | None = None):
        super().__init__(name)
        self.bundle, self.ref, self.runner_kind = bundle, ref, runner
        self.limits, self.settings, self.use_feature_store = limits, settings, use_feature_store
        self.prefetch = prefetch  # the version being fetched in a child process (serving.cli.prefetch)
        self.service: ForecastService | None = None
        self.runner = None

    def load(self) -> bool:
        """Load the forecaster and its runner over the export stored with it (a registered version's
        checksummed ONNX and int8 model, or a local bundle's cached export): nothing is exported here
        unless it never was (:func:`hfcast.export.serving_runner`)."""
        from hfcast.config import get_settings
        from hfcast.export import serving_runner

        settings = self.settings or get_settings()
        lookup, market = (feast_lookup(settings), settings.market) if self.use_feature_store else (None, None)
        fetched = self.prefetch.result() if self.prefetch is not None else None  # the child's error re-raised
        forecaster = load_forecaster(self.bundle, self.ref, settings, fetched)
        self.service = ForecastService(forecaster, lookup, self.limits, market=market)
        self.runner = serving_runner(self.runner_kind, forecaster, settings, self.bundle, fetched)
        runner, device = (self.runner.kind, self.runner.device) if self.runner else ("post-step", "cpu")
        log.info("hfcast predictor: %s version %s (%s) on %s (%s)", self.service.model_name,
                 self.service.model_version, forecaster.kind, runner, device)
        metrics.set_model(self.service.model_name, self.service.model_version, runner, device)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return self.service.model_version if self.service else "unknown"

    def check_version(self, version: str | None) -> None:
        """Refuse a version other than the one served (``None`` / ``""``: whatever is served)."""
        if version and version != self.version:
            raise VersionNotFound(f"model {self.name!r} has no version {version!r} here: this server serves "
                                  f"version {self.version!r}")

    def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> dict | InferResponse:
        """KServe's own routes (``hfcast serve`` answers before them: serving.gateway, serving.grpc_server)."""
        svc = self.service
        req = parse_kserve(payload, svc.n_features, svc.limits.max_batch)
        preds, feature_ts = self.forecast(req)
        return svc.kserve_response(self.name, req.protocol, preds, feature_ts, req.request_id, req.symbols)

    def forecast(self, req: ParsedRequest) -> tuple[dict, list[str]]:
        """Validated request -> calibrated forecasts (columns) and the feature timestamp of each row."""
        return self.service.forecast(req, self.runner.run if self.runner is not None else None)

    def decoder(self):
        """A picklable ``(protocol, body, headers) -> ParsedRequest`` for this model (serving.gateway)."""
        return functools.partial(parse_http, n_features=self.service.n_features,
                                 max_batch=self.service.limits.max_batch)

    def parse_grpc(self, request: Any) -> ParsedRequest:
        """A gRPC ``ModelInferRequest`` -> ParsedRequest (serving.grpc_server)."""
        self.check_version(request.model_version)
        return parse_grpc(request, self.service.n_features, self.service.limits.max_batch)

    def _head(self, req: ParsedRequest) -> dict:
        return {"model_name": self.name, "model_version": self.version, "id": req.request_id or str(uuid.uuid4())}

    def answer_grpc(self, req: ParsedRequest) -> Any:
        """A validated gRPC request -> ``ModelInferResponse`` (raw outputs for raw inputs)."""
        preds, feature_ts = self.forecast(req)
        return responses.grpc_v2(self._head(req), self.service.v2_outputs(preds, feature_ts, req.symbols), req)

    def answer(self, req: ParsedRequest, verb: str = "infer") -> tuple[bytes, dict[str, str]]:
        """A validated HTTP request -> ``(body, extra headers)`` of the V1 or V2 answer (serving.gateway)."""
        svc = self.service
        if verb == "explain":
            return self.explain_answer(req)
        preds, feature_ts = self.forecast(req)
        if req.protocol == "v1":
            return orjson.dumps(svc.v1_response(preds, feature_ts, req.symbols)), {}
        return responses.http_v2(self._head(req), svc.v2_outputs(preds, feature_ts, req.symbols), req)

    def explained(self, req: ParsedRequest) -> tuple[dict, list[str], list[dict]]:
        """Forecasts, feature times and, per window (or symbol) and target, the explanation of the
        forecast served (:func:`hfcast.explain.explain_forecasts`): its ``forecast`` is the number
        ``predict`` answers (this runner's outputs, the same post-step), split into the networks'
        part, the baseline's share and the constants, with integrated-gradients attributions of the
        networks' part. Each window costs ~64 forward and backward passes, so batches are capped
        at ``EXPLAIN_MAX_BATCH``; predict is untouched."""
        import numpy as np

        from hfcast.explain import explain_forecasts

        if req.size > EXPLAIN_MAX_BATCH:
            raise InvalidInput(f"batch of {req.size} exceeds the maximum batch size of {EXPLAIN_MAX_BATCH} for "
                               f"explain requests (each window costs about 64 forward and backward passes)")
        svc = self.service
        unscaled, scaled, feature_ts = svc.inputs(req)  # one online-store lookup for both
        raw = self.runner.run(scaled) if self.runner is not None else np.empty((len(scaled), 0), np.float32)
        preds = svc.predictions(raw, svc.forecaster.side_inputs(unscaled))
        return preds, feature_ts, explain_forecasts(svc.forecaster, unscaled, raw=raw, scaled=scaled)

    def explain_answer(self, req: ParsedRequest) -> tuple[bytes, dict[str, str]]:
        """V1: the predict rows, each with an ``explanation``; V2: the infer outputs plus BYTES
        ``explanation`` (one JSON document a row), method and baseline as response parameters."""
        svc = self.service
        preds, feature_ts, expl = self.explained(req)
        if req.protocol == "v1":
            rows = svc.v1_response(preds, feature_ts, req.symbols)["predictions"]
            for row, e in zip(rows, expl):
                row["explanation"] = e
            return orjson.dumps({"explanations": rows, **EXPLAIN_METHOD}), {}
        outputs = svc.v2_outputs(preds, feature_ts, req.symbols)
        outputs.append({"name": "explanation", "datatype": "BYTES", "shape": [len(expl)],
                        "data": [orjson.dumps(e).decode() for e in expl]})
        head = {**self._head(req), "parameters": EXPLAIN_METHOD}
        return responses.http_v2(head, outputs, dataclasses.replace(req, outputs=None))

    def explain(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        """KServe's explain verb on its own route (``hfcast serve`` answers in serving.gateway)."""
        svc = self.service
        return orjson.loads(self.explain_answer(parse_v1(payload, svc.n_features, svc.limits.max_batch))[0])

    def get_input_types(self) -> list[dict]:
        n = self.service.n_features if self.service else -1
        return [{"name": "window", "datatype": "FP32", "shape": [-1, LOOKBACK, n]},
                {"name": "symbol", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return ([{"name": c, "datatype": "FP32", "shape": [-1]} for c in NUMBER_OUTPUTS]
                + [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in TEXT_OUTPUTS])

    def metadata(self) -> dict:
        """V2 model metadata, units included (serving.responses.metadata_v2)."""
        return responses.metadata_v2(self.name, self.version, f"hfcast/{self.runner.kind}",
                                     self.get_input_types(), self.get_output_types(), self.service.feature_names)


def serve(model: kserve.Model, http_port: int = 8080, grpc_port: int = 8081, workers: int = 1) -> None:
    """Load and serve one model (blocks). KServe binds 0.0.0.0; send local traffic to 127.0.0.1."""
    from serving.grpc_server import HfcastGRPCServer

    for port in (http_port, grpc_port):
        check_port_free(port)  # before the (slow) load, and instead of uvicorn's bare exit(1)
    model.load()
    # per-request trace lines cost more than a batch-1 forecast: keep them off the hot path
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=workers,
                                enable_latency_logging=False, enable_grpc=False)
    for noisy in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server.dataplane = HfcastDataPlane(model_registry=server.registered_models)
    if isinstance(model, HfcastPredictor):  # the feature transformer forwards to its predictor (KServe's routes)
        install_gate(model)
    limits = getattr(model, "limits", Limits())
    # ours instead of KServe's (enable_grpc=False above); as ModelServer.start does for its own, so
    # that its signal handler stops this one too
    server._grpc_server = HfcastGRPCServer(grpc_port, server.dataplane, server.model_repository_extension,
                                           max_receive_bytes=limits.max_body_bytes)
    server.servers.append(server._grpc_server.start(server.max_threads))
    # the one line that says where to send requests (KServe's and uvicorn's banners are held back
    # without --verbose: serving.cli.quiet_start)
    log.info("serving model %r on port %d (HTTP: V1, V2) and %d (gRPC), all interfaces", model.name, http_port,
             grpc_port)
    server.start([model])


def check_port_free(port: int) -> None:
    """A UserError naming the port when another process listens on it."""
    import errno
    import socket

    from hfcast.errors import UserError

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise UserError(f"port {port} is already in use", "stop the server that holds it, or pass another "
                            "--port / --grpc-port") from None


def install_gate(model: HfcastPredictor) -> None:
    """Put :class:`serving.gateway.RequestGate` in front of KServe's app for this model's routes
    (after ``load()``: the decoder needs the model's feature count)."""
    from kserve.model_server import app

    from serving.gateway import RequestGate

    app.add_middleware(RequestGate, model=model, max_body_bytes=model.limits.max_body_bytes)

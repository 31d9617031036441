"""The hfcast KServe predictor: champion (or a given version) in, V1 and V2 forecasts out.

Short on purpose, like KServe's sklearnserver: ``__init__`` stores its arguments, ``load()``
fetches the forecaster (weights + scaler + calibration) and picks the fastest runner, ``predict()``
validates (serving.validation), runs and builds the answer (serving.core).
"""

from __future__ import annotations

import functools
import logging
import uuid
from pathlib import Path
from typing import Any

import kserve
from kserve import InferRequest, InferResponse

from hfcast.contracts import INFO_COLUMNS, LOOKBACK, PRED_COLUMNS
from serving.core import ForecastService, Limits, feast_lookup, load_forecaster
from serving.dataplane import HfcastDataPlane
from serving.validation import ParsedRequest, parse_http, parse_kserve, parse_v1

log = logging.getLogger(__name__)

EXPLAIN_MAX_BATCH = 16  # windows per :explain request (integrated gradients cost ~64 passes a window)


class HfcastPredictor(kserve.Model):
    """A Forecaster behind the fastest runner available (onnxruntime on CPU, TensorRT on GPU)."""

    def __init__(self, name: str = "hfcast", bundle: str | Path | None = None, ref: str | None = None,
                 runner: str = "auto", limits: Limits = Limits(), settings: Any = None,
                 use_feature_store: bool = True):
        super().__init__(name)
        self.bundle, self.ref, self.runner_kind = bundle, ref, runner
        self.limits, self.settings, self.use_feature_store = limits, settings, use_feature_store
        self.service: ForecastService | None = None
        self.runner = None

    def load(self) -> bool:
        from hfcast.export import runner_for

        forecaster = load_forecaster(self.bundle, self.ref, self.settings)
        lookup = None
        if self.use_feature_store:
            from hfcast.config import get_settings

            lookup = feast_lookup(self.settings or get_settings())
        self.service = ForecastService(forecaster, lookup, self.limits)
        self.runner = runner_for(self.runner_kind, forecaster) if forecaster.graph() is not None else None
        log.info("hfcast predictor: %s version %s (%s) on %s", self.service.model_name, self.service.model_version,
                 forecaster.kind, f"{self.runner.kind} ({self.runner.device})" if self.runner else "its post-step alone")
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return self.service.model_version if self.service else "unknown"

    def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> dict | InferResponse:
        svc = self.service
        req = parse_kserve(payload, svc.n_features, svc.limits.max_batch)
        preds, feature_ts = self.forecast(req)
        return svc.kserve_response(self.name, req.protocol, preds, feature_ts, req.request_id)

    def forecast(self, req: ParsedRequest) -> tuple[dict, list[str]]:
        """Validated request -> calibrated forecasts (columns) and the feature timestamp of each row."""
        return self.service.forecast(req, self.runner.run if self.runner is not None else None)

    def decoder(self):
        """A picklable ``(protocol, body, headers) -> ParsedRequest`` for this model (serving.gateway)."""
        return functools.partial(parse_http, n_features=self.service.n_features,
                                 max_batch=self.service.limits.max_batch)

    def answer_parsed(self, req: ParsedRequest) -> dict:
        """A validated HTTP request -> the V1 or V2 JSON response document (serving.gateway)."""
        svc = self.service
        preds, feature_ts = self.forecast(req)
        if req.protocol == "v1":
            return svc.v1_response(preds, feature_ts)
        return {"model_name": self.name, "model_version": svc.model_version,
                "id": req.request_id or str(uuid.uuid4()), "outputs": svc.v2_outputs(preds, feature_ts)}

    def explain(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        """KServe's explain verb (``POST /v1/models/<name>:explain``, a V1 body as for predict).

        Each window (or symbol) gets its forecasts and, per target, integrated-gradients
        attributions over its (minute, feature) cells summarised by feature group, by minute and
        as the top cells (:func:`hfcast.explain.explain_windows`). Each window costs ~64 forward
        and backward passes, so batches are capped at ``EXPLAIN_MAX_BATCH``; predict is untouched.
        """
        from hfcast.explain import explain_windows

        svc = self.service
        req = parse_v1(payload, svc.n_features, min(svc.limits.max_batch, EXPLAIN_MAX_BATCH))
        preds, feature_ts = self.forecast(req)
        windows, _ = svc.windows(req)
        rows = svc.v1_response(preds, feature_ts)["predictions"]
        for row, expl in zip(rows, explain_windows(svc.forecaster, windows)):
            row["explanation"] = expl
        return {"explanations": rows, "method": "integrated_gradients",
                "baseline": "the training mean of every feature (all-zero scaled window)"}

    def get_input_types(self) -> list[dict]:
        n = self.service.n_features if self.service else -1
        return [{"name": "window", "datatype": "FP32", "shape": [-1, LOOKBACK, n]},
                {"name": "symbol", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return ([{"name": c, "datatype": "FP32", "shape": [-1]} for c in (*PRED_COLUMNS, *INFO_COLUMNS)]
                + [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in ("model_name", "model_version", "feature_ts")])


def serve(model: kserve.Model, http_port: int = 8080, grpc_port: int = 8081, workers: int = 1) -> None:
    """Load and serve one model (blocks). KServe binds 0.0.0.0; send local traffic to 127.0.0.1."""
    for port in (http_port, grpc_port):
        check_port_free(port)  # before the (slow) load, and instead of uvicorn's bare exit(1)
    model.load()
    # per-request trace lines cost more than a batch-1 forecast: keep them off the hot path
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=workers,
                                enable_latency_logging=False)
    for noisy in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server.dataplane = HfcastDataPlane(model_registry=server.registered_models)
    if isinstance(model, HfcastPredictor):  # the feature transformer forwards to its predictor (KServe's routes)
        install_gate(model)
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
    """Put :class:`serving.gateway.RequestGate` in front of KServe's app for this model's infer routes
    (after ``load()``: the decoder needs the model's feature count)."""
    from kserve.model_server import app

    from serving.gateway import RequestGate

    app.add_middleware(RequestGate, model_name=model.name, decode=model.decoder(),
                       answer=model.answer_parsed, ready=lambda: model.ready, max_body_bytes=model.limits.max_body_bytes)

"""The feature transformer in front of Triton: symbols -> Feast windows -> Triton -> calibrated answer.

On the GPU InferenceService, Triton serves the TensorRT plan of the forecaster's graph (raw
outputs [B,4k] of its k networks only); this KServe transformer owns everything around it:
validation, the Feast lookup and staleness check, scaling, and, on the way back, the forecaster's
post-step (baselines from the same windows, floor, ensemble, calibration) and the response rows. It reuses
serving.core, so its answers are the predictor's answers.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
from typing import TYPE_CHECKING, Any

import kserve
from kserve import InferInput, InferRequest, InferResponse, model_server

from hfcast.export import INPUT_NAME, OUTPUT_NAME
from serving.core import ForecastService, Limits, feast_lookup, load_forecaster
from serving.validation import parse_kserve

if TYPE_CHECKING:  # annotations only
    from hfcast.config import Settings

log = logging.getLogger(__name__)

# what preprocess learned that postprocess needs (same asyncio task, so a ContextVar carries it)
_REQUEST: contextvars.ContextVar[tuple[str, list[str], str | None, list[str] | None, Any]] = contextvars.ContextVar(
    "hfcast_request")


class FeatureTransformer(kserve.Model):
    """Pre/post-processing around a V2 predictor (Triton) that maps window [B,30,F] -> raw [B,4k]."""

    def __init__(self, name: str, predictor_host: str, bundle: str | None = None, ref: str | None = None,
                 limits: Limits = Limits(), settings: Settings | None = None, lookup: Any = None):
        super().__init__(name)
        self.predictor_host = predictor_host
        self.bundle, self.ref, self.limits, self.settings, self._lookup = bundle, ref, limits, settings, lookup
        self.service: ForecastService | None = None

    def load(self) -> bool:
        from hfcast.config import get_settings

        forecaster = load_forecaster(self.bundle, self.ref, self.settings)
        settings = self.settings or get_settings()
        lookup = self._lookup or feast_lookup(settings)
        self.service = ForecastService(forecaster, lookup, self.limits, market=settings.market)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return self.service.model_version if self.service else "unknown"

    def preprocess(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> InferRequest:
        svc = self.service
        req = parse_kserve(payload, svc.n_features, svc.limits.max_batch)
        unscaled, windows, feature_ts = svc.inputs(req)
        _REQUEST.set((req.protocol, feature_ts, req.request_id, req.symbols, svc.forecaster.side_inputs(unscaled)))
        tensor = InferInput(name=INPUT_NAME, shape=list(windows.shape), datatype="FP32")
        tensor.set_data_from_numpy(windows, binary_data=False)
        return InferRequest(model_name=self.name, infer_inputs=[tensor], request_id=req.request_id)

    def postprocess(self, result: InferResponse | dict, headers: dict[str, str] | None = None,
                    response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        svc = self.service
        protocol, feature_ts, request_id, symbols, side = _REQUEST.get()
        raw = next(o for o in result.outputs if o.name == OUTPUT_NAME).as_numpy()
        return svc.kserve_response(self.name, protocol, svc.predictions(raw, side), feature_ts, request_id, symbols)


parser = argparse.ArgumentParser(parents=[model_server.parser])
parser.set_defaults(model_name="hfcast")
parser.add_argument("--bundle", default=None, help="local Forecaster bundle (scaler + calibration)")
parser.add_argument("--model_ref", default="hfcast@champion", help="registry reference of the same model")
parser.add_argument("--max_batch", type=int, default=1024)
parser.add_argument("--max_staleness_s", type=float, default=600.0)

if __name__ == "__main__":
    from serving.predictor import serve

    args, _ = parser.parse_known_args()
    model = FeatureTransformer(args.model_name, args.predictor_host, bundle=args.bundle,
                               ref=None if args.bundle else args.model_ref,
                               limits=Limits(args.max_batch, None if args.max_staleness_s < 0 else args.max_staleness_s))
    serve(model, args.http_port, args.grpc_port, args.workers)

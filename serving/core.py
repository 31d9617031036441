"""What the predictor and the transformer share, with no server in it (unit-tested directly).

:class:`ForecastService` holds the Forecaster (weights, scaler, calibration), the online window
lookup and the limits. It turns a validated request into scaled windows plus the feature
timestamps used, and turns raw network outputs into response rows (V1) or tensors (V2).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from kserve import InferResponse
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferOutput

from serving.validation import ParsedRequest

if TYPE_CHECKING:  # annotations only
    from hfcast.config import Settings
    from hfcast.registry import FetchedVersion

log = logging.getLogger(__name__)
MAX_ABS_Z = 1e4  # a feature this many standard deviations from its training mean is an input error

# (symbols) -> (windows [B,30,F] unscaled float32, feature ts [B] datetime64/Timestamp, feature names)
WindowLookup = Callable[[Sequence[str]], tuple[np.ndarray, Any, Sequence[str]]]


@dataclass(frozen=True)
class Limits:
    """Request limits: batch and staleness answer HTTP 400, the body size 413 (before parsing).

    The default body limit fits the largest JSON batch (1024 windows x 30 x 59 numbers is about
    36 MB of JSON; binary tensors need a fifth of that). Nonsense values fail at start-up.
    """

    max_batch: int = 1024
    max_staleness_s: float | None = 600.0  # None: any feature age is accepted
    max_body_bytes: int = 64 * 2**20

    def __post_init__(self):
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise ValueError(f"max batch must be a positive integer, got {self.max_batch!r}")
        if self.max_staleness_s is not None and not self.max_staleness_s >= 0:
            raise ValueError(f"max staleness must be >= 0 seconds (or None: no limit), got {self.max_staleness_s!r}")
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes >= 1024):
            raise ValueError(f"max body size must be at least 1024 bytes, got {self.max_body_bytes!r}")


class StaleFeatures(InvalidInput):
    """A symbol's newest window is older than the staleness limit (a 400 like any bad input;
    its own class so that the server counts these refusals apart)."""


class VersionNotFound(ModelNotFound):
    """A request for a model version this server does not serve (HTTP 404, gRPC NOT_FOUND)."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


def load_forecaster(bundle: str | Path | None = None, ref: str | None = None, settings: Settings | None = None,
                    fetched: FetchedVersion | None = None):
    """A local bundle folder, a registry reference (``hfcast@champion``, ``hfcast/3``), or a version
    already fetched (:func:`hfcast.registry.fetch_version`, no registry call here)."""
    if fetched is not None:
        from hfcast.registry import load_fetched

        return load_fetched(fetched)
    if bundle is not None:
        from hfcast.forecaster import Forecaster

        fc = Forecaster.load(bundle)
        fc.meta.setdefault("model_name", fc.meta.get("name", "hfcast"))
        fc.meta.setdefault("model_version", f"bundle:{Path(bundle).name}")
        return fc
    from hfcast.config import get_settings
    from hfcast.registry import load_forecaster as from_registry

    return from_registry(settings or get_settings(), ref or "hfcast@champion")


def feast_lookup(settings: Settings) -> WindowLookup:
    """The Feast online store as a :data:`WindowLookup` (one cached store per process)."""
    from hfcast.feature_store import OnlineWindows

    return OnlineWindows(settings)


def _iso(ts: Any) -> str:
    import pandas as pd

    t = pd.Timestamp(ts)
    if t is pd.NaT:
        return ""
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).isoformat()


class ForecastService:
    """Forecaster + window lookup + limits: request in, scaled windows and response out."""

    def __init__(self, forecaster: Any, lookup: WindowLookup | None = None, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.time, market: Any = None):
        self.forecaster = forecaster
        self.lookup = lookup
        self.limits = limits
        self.clock = clock
        self.market = market  # the calendar feature ages count in (None: XNYS, hfcast.market.default())
        self.feature_names = list(forecaster.feature_names)
        self.n_features = len(self.feature_names)
        self.model_name = str(forecaster.meta.get("model_name", "hfcast"))
        self.model_version = str(forecaster.meta.get("model_version", "unknown"))

    def inputs(self, req: ParsedRequest) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Unscaled and scaled windows [B,30,F] and the feature timestamp (ISO UTC, "" if unknown)
        of each row. Scaled inputs are unscaled with the training statistics (the forecaster's
        post-step reads feature values: the baselines and the calibration context)."""
        sc = self.forecaster.scaler
        if req.symbols is None:
            self.check_range(req.windows, req.scaled)
            if req.scaled:
                scaled = np.ascontiguousarray(req.windows, dtype=np.float32)
                unscaled = (scaled * sc.std.astype(np.float32) + sc.mean.astype(np.float32)).astype(np.float32)
            else:
                unscaled = np.asarray(req.windows, dtype=np.float32)
                scaled = np.ascontiguousarray(sc.transform(unscaled), dtype=np.float32)
            return unscaled, scaled, [""] * req.size
        raw, ts = self.fetch(req.symbols)
        return raw, sc.transform(raw), [_iso(t) for t in ts]

    def windows(self, req: ParsedRequest) -> tuple[np.ndarray, list[str]]:
        """Scaled windows [B,30,F] and the feature timestamp (ISO UTC, "" if unknown) of each row."""
        _, scaled, ts = self.inputs(req)
        return scaled, ts

    def forecast(self, req: ParsedRequest, run: Callable[[np.ndarray], np.ndarray] | None
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
        """A validated request through the graph (``run``: a runner's ``run``; None when the
        forecaster runs no network) and the post-step: forecast columns and feature timestamps."""
        unscaled, scaled, ts = self.inputs(req)
        raw = run(scaled) if run is not None else np.empty((len(scaled), 0), np.float32)
        return self.predictions(raw, self.forecaster.side_inputs(unscaled)), ts

    def check_range(self, windows: np.ndarray, scaled: bool) -> None:
        """Refuse values more than MAX_ABS_Z standard deviations from the training data.

        Why: the scaler clips, so 1e30 (finite in FP32) would be served as an extreme but
        confident forecast; such a value is a unit or encoding error on the caller's side.
        """
        sc = self.forecaster.scaler
        with np.errstate(over="ignore", invalid="ignore"):
            z = windows if scaled else (windows - sc.mean.astype(np.float32)) / sc.std.astype(np.float32)
            bad = ~(np.abs(z) <= MAX_ABS_Z).all(axis=(1, 2))
        if bad.any():
            rows = [int(i) for i in np.nonzero(bad)[0][:10]]
            raise InvalidInput(f"window values out of range (batch rows {rows}): more than {MAX_ABS_Z:g} standard "
                               f"deviations from the training data{'' if scaled else ' (wrong units?)'}")

    def fetch(self, symbols: Sequence[str]) -> tuple[np.ndarray, list]:
        """Latest unscaled windows from the online store; unknown or stale symbols are the caller's 400."""
        import pandas as pd

        if self.lookup is None:
            raise InvalidInput("symbol inputs need a feature store, and this server runs without one: "
                               "send 'window' inputs instead")
        try:
            windows, ts, names = self.lookup(symbols)
        except KeyError as exc:  # the store names the symbols it does not know
            raise InvalidInput(f"unknown symbol(s): {exc.args[0] if exc.args else exc}") from None
        ts = list(pd.to_datetime(pd.Series(list(ts)), utc=True))
        missing = [s for s, t in zip(symbols, ts) if t is pd.NaT]
        if missing:
            raise InvalidInput(f"unknown symbol(s) (no features in the online store): {missing}")
        if list(names) != self.feature_names:
            order = [list(names).index(n) for n in self.feature_names]  # ValueError: a real mismatch
            windows = windows[..., order]
        if self.limits.max_staleness_s is not None:
            now = pd.Timestamp(self.clock(), unit="s", tz="UTC")
            from hfcast.market import resolve

            ages = resolve(self.market).trading_age_s(ts, now).tolist()  # closed hours do not age features
            stale = {s: round(a) for s, a in zip(symbols, ages) if a > self.limits.max_staleness_s}
            if stale:
                raise StaleFeatures(f"stale features: age in seconds {stale} (session time) exceeds the staleness "
                                    f"limit of {self.limits.max_staleness_s:g} s; run `hfcast materialize` for "
                                    f"today's data, or, to serve a replayed past, start the server with "
                                    f"--max-staleness-s -1 (no limit; --max_staleness_s -1 in the image)")
        return np.asarray(windows, dtype=np.float32), ts

    def predictions(self, raw: np.ndarray, side: Any) -> dict[str, np.ndarray]:
        """The graph's raw outputs [B,4k] and the windows' side inputs -> the forecaster's calibrated
        forecasts (PRED_COLUMNS), then INFO_COLUMNS (1.0/0.0: is this version's confidence
        informative; the same for every row)."""
        preds = self.forecaster.postprocess(np.asarray(raw, dtype=np.float32), side)
        return {**preds, **self.forecaster.info_columns(len(raw))}

    def v1_response(self, preds: dict[str, np.ndarray], feature_ts: list[str],
                    symbols: Sequence[str] | None = None) -> dict:
        """``{"predictions": [{column: value, ..., model_name, model_version, feature_ts[, symbol]}, ...]}``.

        ``feature_ts`` is null for a window (no feature time applies); a symbol request echoes its
        symbol in each row.
        """
        cols = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in preds.items()}
        rows = [{**{k: cols[k][i] for k in cols}, "model_name": self.model_name,
                 "model_version": self.model_version, "feature_ts": feature_ts[i] or None}
                for i in range(len(feature_ts))]
        if symbols is not None:
            for row, s in zip(rows, symbols):
                row["symbol"] = s
        return {"predictions": rows}

    def v2_outputs(self, preds: dict[str, np.ndarray], feature_ts: list[str],
                   symbols: Sequence[str] | None = None) -> list[dict]:
        """One FP32 [B] tensor per forecast column, then BYTES [B] model_name/model_version, and for a
        symbol request BYTES [B] feature_ts and symbol (V2 BYTES cannot hold a null, so a window
        request, which has no feature time, gets neither)."""
        b = len(feature_ts)
        outs = [{"name": k, "shape": [b], "datatype": "FP32", "data": np.ascontiguousarray(v, dtype=np.float32)}
                for k, v in preds.items()]
        text = [("model_name", [self.model_name] * b), ("model_version", [self.model_version] * b)]
        if symbols is not None:
            text += [("feature_ts", list(feature_ts)), ("symbol", list(symbols))]
        outs += [{"name": name, "shape": [b], "datatype": "BYTES", "data": vals} for name, vals in text]
        return outs

    def kserve_response(self, model_name: str, protocol: str, preds: dict[str, np.ndarray], feature_ts: list[str],
                        request_id: str | None, symbols: Sequence[str] | None = None) -> dict | InferResponse:
        """The answer a KServe model method returns: the V1 document, or a V2 ``InferResponse``."""
        if protocol == "v1":
            return self.v1_response(preds, feature_ts, symbols)
        outputs = [InferOutput(name=o["name"], shape=o["shape"], datatype=o["datatype"], data=o["data"])
                   for o in self.v2_outputs(preds, feature_ts, symbols)]
        return InferResponse(response_id=request_id or str(uuid.uuid4()), model_name=model_name,
                             model_version=self.model_version, infer_outputs=outputs)

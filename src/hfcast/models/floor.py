"""A floor under every network: it may not score worse than ``har_tod`` on the validation span.

Why: on data the networks were not designed for (another simulator, real bars) a network's
volatility forecast was at best a little better than HAR-RV and, against the latent variance,
worse. A forecaster that is chosen on validation among "the network", "the HAR-RV + time-of-day
floor" and blends of the two in log-variance space cannot do worse than the floor on validation
(the floor itself is a candidate), and out of sample it inherits the floor's robustness wherever
the network has not earned its weight.

What :func:`fit_floor` chooses, on validation rows only (never test):

- the weight ``w`` in ``log h = w log h_net + (1 - w) log h_floor`` (``h`` = variance forecast) on a
  grid 0, 0.1, ..., 1, each with its QLIKE-optimal variance scale ``c = mean(rv^2 / h)``
  (closed form), plus the untouched floor (w = 0, c = 1). The smallest validation QLIKE wins, so
  the chosen volatility forecast's validation QLIKE is <= the floor's by construction;
- whether the network's return forecast is kept: only if its validation IC is positive (else 0,
  the zero-return floor, whose honest confidence is 0.5);
- a fresh :class:`hfcast.calibration.Calibrator` on the chosen forecasts with context (time of
  day, spread, jumps, volume): context-conditioned volatility confidence and time-of-day conformal
  intervals.

The floor needs the causal HAR inputs of each row (``hfcast.models.baselines.baseline_inputs``),
which a window of features alone does not carry; so a :class:`FlooredForecaster` predicts rows of a
span given those inputs (walk-forward, batch), and saves its choice as ``floor.json`` beside the
network's bundle. Serving it online needs the same inputs per request (not wired here).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hfcast import metrics as M
from hfcast.calibration import CONTEXT_KEYS, RECENT_VOL_KEYS, Calibrator
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.data.schema import minute_of_session

log = logging.getLogger(__name__)

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
#: feature (model input) behind each context key; ``tod`` comes from the timestamp
CONTEXT_FEATURES = {"spread_bps": "spread_bps", "jump_ratio": "jump_ratio_30m", "log_volume": "log_volume",
                    **{k: k for k in RECENT_VOL_KEYS}}
_TINY = 1e-12


def context_from_windows(wa, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Context (:data:`hfcast.calibration.CONTEXT_KEYS`) at the end row of each window of ``wa``."""
    ends = wa.ends if idx is None else wa.ends[idx]
    ctx = {"tod": minute_of_session(pd.DatetimeIndex(wa.keys["ts"].iloc[ends])).astype(np.float64)}
    for key, feat in CONTEXT_FEATURES.items():
        if feat in wa.feature_names:
            ctx[key] = wa.X[ends, wa.feature_names.index(feat)].astype(np.float64)
    return ctx


def context_from_feature_rows(last_rows: np.ndarray, feature_names: list[str]) -> dict[str, np.ndarray]:
    """Context from the last row of unscaled windows [B, F] (serving: tod from tod_sin / tod_cos)."""
    names = list(feature_names)
    ctx: dict[str, np.ndarray] = {}
    if "tod_sin" in names and "tod_cos" in names:
        ang = np.arctan2(last_rows[:, names.index("tod_sin")], last_rows[:, names.index("tod_cos")])
        ctx["tod"] = np.round(np.mod(ang, 2 * np.pi) * 390 / (2 * np.pi)) % 390
    for key, feat in CONTEXT_FEATURES.items():
        if feat in names:
            ctx[key] = last_rows[:, names.index(feat)].astype(np.float64)
    return ctx


@dataclass
class FloorChoice:
    """What validation chose (JSON-able)."""

    w: float = 0.0               # network weight in log variance (0 = the floor alone)
    scale: float = 1.0           # variance multiplier
    keep_ret: bool = False       # keep the network's return forecast (else 0)
    residual: bool = False       # the network forecasts rv / floor (trained on the floor's residual)
    val_qlike: float = float("nan")        # chosen
    val_qlike_floor: float = float("nan")  # har_tod
    val_qlike_net: float = float("nan")    # network alone
    val_ic_net: float = float("nan")
    grid: list = field(default_factory=list)  # (w, scale, qlike) of every candidate

    @property
    def fallback(self) -> bool:
        return self.w == 0.0


def qlike_scale(h: np.ndarray, y2: np.ndarray) -> float:
    """The variance multiplier c minimising QLIKE(c * h, y2) (closed form: mean(y2 / h))."""
    return float(np.mean(np.maximum(y2, 1e-18) / np.maximum(h, 1e-18)))


def choose_blend(lv_net: np.ndarray, lv_floor: np.ndarray, y_rv: np.ndarray) -> tuple[float, float, float, list]:
    """(w, scale, val QLIKE, grid) minimising validation QLIKE; (0, 1) is always a candidate.

    ``lv_*`` are log VARIANCE forecasts (log of the squared vol forecast) of the same rows.
    """
    y2 = np.asarray(y_rv, np.float64) ** 2
    ok = np.isfinite(y2) & np.isfinite(lv_net) & np.isfinite(lv_floor)
    if ok.sum() < 10:
        raise ValueError(f"floor choice needs >= 10 labelled validation rows, got {int(ok.sum())}")
    y2, a, b = y2[ok], lv_net[ok], lv_floor[ok]
    grid = [(0.0, 1.0, M.qlike(np.exp(b), y2))]
    for w in WEIGHTS:
        h = np.exp(w * a + (1 - w) * b)
        c = qlike_scale(h, y2)
        grid.append((float(w), c, M.qlike(c * h, y2)))
    w, c, q = min(grid, key=lambda t: (t[2], -t[0] == 0))  # ties go to the floor
    return w, c, q, grid


def span_frame(calibrator: Calibrator, nat: dict[str, np.ndarray], wa) -> pd.DataFrame:
    """PRED_COLUMNS + INFO_COLUMNS of natural-unit forecasts for the windows of ``wa``, calibrated
    with the windows' context."""
    out = calibrator.apply(nat, context_from_windows(wa))
    out = {c: out[c] for c in PRED_COLUMNS} | calibrator.info_columns(len(wa))
    return pd.DataFrame(out, columns=[*PRED_COLUMNS, *INFO_COLUMNS])


class FlooredForecaster:
    """A trained network Forecaster with the validation-chosen floor (see the module docstring)."""

    def __init__(self, net_fc: Any, floor: Any, choice: FloorChoice, calibrator: Calibrator):
        self.net_fc, self.floor, self.choice, self.calibrator = net_fc, floor, choice, calibrator

    # the attributes callers of a Forecaster read
    @property
    def arch(self) -> str:
        return self.net_fc.arch

    @property
    def feature_names(self) -> list[str]:
        return self.net_fc.feature_names

    @property
    def meta(self) -> dict:
        return {**self.net_fc.meta, "floor": self.choice.__dict__}

    def confidence_info(self) -> dict[str, Any]:
        """As :meth:`hfcast.models.base.Forecaster.confidence_info`, for the floored calibrator."""
        from hfcast.models.base import confidence_info

        return confidence_info(self.calibrator)

    def natural(self, wa, inputs: pd.DataFrame, batch: int = 8192) -> dict[str, np.ndarray]:
        """Blended natural-unit forecasts for every window of ``wa`` (inputs: baseline_inputs rows)."""
        return blended_natural(self.net_fc, self.floor, self.choice, wa, inputs, batch)

    def predict_span(self, wa, inputs: pd.DataFrame) -> pd.DataFrame:
        """PRED_COLUMNS + INFO_COLUMNS for every window of ``wa`` (same order)."""
        return span_frame(self.calibrator, self.natural(wa, inputs), wa)

    def save(self, path: str, storage_options: dict | None = None) -> str:
        """The network's bundle plus ``floor.json`` (choice, floor state, floored calibrator)."""
        from hfcast import storage

        self.net_fc.save(path, storage_options)  # with choice.residual, this is the residual network
        doc = {"choice": self.choice.__dict__, "har_tod": self.floor.har.to_dict(),
               "floor_scalars": {"fallback_var": self.floor.fallback_var, "ret_scale": self.floor.ret_scale},
               "calibration": self.calibrator.to_dict()}
        storage.write_text(storage.join(str(path), "floor.json"), json.dumps(doc, default=float), storage_options)
        return str(path)

    @classmethod
    def load(cls, path: str, storage_options: dict | None = None) -> "FlooredForecaster":
        """Rebuild from :meth:`save` (network bundle + ``floor.json``)."""
        from hfcast import storage
        from hfcast.models.base import Forecaster
        from hfcast.models.baselines import FLOOR, Baseline, HarTod

        net_fc = Forecaster.load(path, storage_options)
        try:
            doc = json.loads(storage.read_text(storage.join(str(path), "floor.json"), storage_options))
        except FileNotFoundError:
            raise FileNotFoundError(f"no floor.json in {path}: a plain network bundle, load it with Forecaster.load") from None
        floor = Baseline(FLOOR)
        floor.har = HarTod.from_dict(doc["har_tod"])
        floor.fallback_var = float(doc["floor_scalars"]["fallback_var"])
        floor.ret_scale = float(doc["floor_scalars"]["ret_scale"])
        choice = FloorChoice(**doc["choice"])
        return cls(net_fc, floor, choice, Calibrator.from_dict(doc["calibration"]))


def _net_natural(net_fc, wa, batch: int, floor=None, inputs: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """The network's natural-unit forecasts; a residual network's ratio times the floor's median."""
    nat = _net_natural_raw(net_fc, wa, batch)
    if floor is not None:
        nat["rv_hat"] = nat["rv_hat"] * floor_median(floor, inputs.loc[wa.ends])
    return nat


def floor_median(floor, inp: pd.DataFrame) -> np.ndarray:
    """The floor's log-median volatility forecast exp(log_var / 2), before its mean correction."""
    return np.exp(0.5 * floor.har.log_var(inp))


def _net_natural_raw(net_fc, wa, batch: int) -> dict[str, np.ndarray]:
    parts = []
    for i in range(0, len(wa), batch):
        w = wa.windows(np.arange(i, min(i + batch, len(wa))))
        parts.append(net_fc.natural(net_fc.predict_raw(net_fc.scaler.transform(np.asarray(w)))))
    if not parts:
        return {k: np.empty(0) for k in ("ret_mu", "ret_sigma", "rv_hat", "lrv_sigma")}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def blended_natural(net_fc, floor, choice: FloorChoice, wa, inputs: pd.DataFrame, batch: int = 8192,
                    net: dict | None = None) -> dict[str, np.ndarray]:
    net = net if net is not None else _net_natural(net_fc, wa, batch, floor if choice.residual else None, inputs)
    fl = floor._raw(inputs.loc[wa.ends])
    lv = 2 * (choice.w * np.log(np.maximum(net["rv_hat"], _TINY)) + (1 - choice.w) * np.log(fl["rv_hat"]))
    ls = choice.w * net["lrv_sigma"] + (1 - choice.w) * fl["lrv_sigma"]
    mu = net["ret_mu"] if choice.keep_ret else np.zeros(len(wa))
    return {"ret_mu": mu, "ret_sigma": net["ret_sigma"], "rv_hat": np.sqrt(choice.scale * np.exp(lv)),
            "lrv_sigma": np.maximum(ls, 1e-6)}


def fit_floor(net_fc, floor, val_wa, inputs: pd.DataFrame, batch: int = 8192,
              resid_fc=None) -> FlooredForecaster:
    """Choose the blend and return policy on ``val_wa`` and calibrate the result there.

    Args:
        net_fc: a trained :class:`hfcast.models.base.Forecaster`.
        floor: a fitted ``Baseline("har_tod")`` (fitted on the training span).
        val_wa: validation windows (with labels). inputs: ``baseline_inputs`` of the whole frame.
        resid_fc: optionally a network trained on the floor's residual (:func:`train_residual`);
            validation picks the better of the two blends (ties: the plain network).
    """
    y = val_wa.labels().astype(np.float64)
    fl = floor._raw(inputs.loc[val_wa.ends])
    lv_floor = 2 * np.log(np.maximum(fl["rv_hat"], _TINY))
    best = None
    for residual, fc in ((False, net_fc), (True, resid_fc)):
        if fc is None:
            continue
        net = _net_natural(fc, val_wa, batch, floor if residual else None, inputs)
        with np.errstate(all="ignore"):
            lv_net = 2 * np.log(np.maximum(net["rv_hat"], _TINY))
        lv_net = np.where(np.isfinite(lv_net), lv_net, np.nan)
        w, c, q, grid = choose_blend(lv_net, lv_floor, y[:, 1])
        ic = M.ic(net["ret_mu"], y[:, 0])
        choice = FloorChoice(w=w, scale=c, keep_ret=bool(np.isfinite(ic) and ic > 0), residual=residual, val_qlike=q,
                             val_qlike_floor=grid[0][2], val_qlike_net=M.qlike(np.exp(lv_net), y[:, 1] ** 2),
                             val_ic_net=ic, grid=[list(g) for g in grid])
        if best is None or q < best[0].val_qlike - 1e-12:
            best = (choice, fc, net)
    choice, net_fc, net = best
    w, c, q, ic = choice.w, choice.scale, choice.val_qlike, choice.val_ic_net
    nat = blended_natural(net_fc, floor, choice, val_wa, inputs, net=net)
    ctx = context_from_windows(val_wa)
    groups = pd.DatetimeIndex(val_wa.keys["ts"].iloc[val_wa.ends]).floor("h").asi8
    cal = Calibrator().fit(nat, y[:, 0], y[:, 1], groups=groups, context=ctx)
    log.info("floor for %s: residual=%s w=%.1f scale=%.3f val QLIKE %.4f (floor %.4f, net %.4f), keep return: %s "
             "(val IC %.4f)", net_fc.arch, choice.residual, w, c, q, choice.val_qlike_floor, choice.val_qlike_net,
             choice.keep_ret, ic)
    return FlooredForecaster(net_fc, floor, choice, cal)


@dataclass
class EnsembleChoice:
    """What validation measured for the ensemble (JSON-able)."""

    members: list = field(default_factory=list)   # architectures, in order
    scale: float = 1.0                            # variance multiplier (QLIKE-optimal on validation)
    val_qlike: float = float("nan")
    val_qlike_members: dict = field(default_factory=dict)


class EnsembleForecaster:
    """The floored networks of several architectures averaged in log variance (equal weights),
    rescaled and calibrated on validation.

    Why equal weights: with one validation span of a few days, fitted weights chase its noise;
    the geometric mean of forecasters that each already beat or equal the floor on validation
    averages their independent errors away (on the project's simulator the LSTM's and the
    transformer's floored forecasts were within 0.5% of each other on validation). Whether the
    ensemble is used is again a validation decision (its ``choice.val_qlike`` against each member's).
    Return forecast: the members' mean; sigmas: the members' means.
    """

    arch = "ensemble"

    def __init__(self, members: dict[str, FlooredForecaster], choice: EnsembleChoice, calibrator: Calibrator):
        self.members, self.choice, self.calibrator = members, choice, calibrator

    def natural(self, wa, inputs: pd.DataFrame, batch: int = 8192) -> dict[str, np.ndarray]:
        return _mean_natural([m.natural(wa, inputs, batch) for m in self.members.values()], self.choice.scale)

    def predict_span(self, wa, inputs: pd.DataFrame) -> pd.DataFrame:
        """PRED_COLUMNS + INFO_COLUMNS for every window of ``wa`` (same order)."""
        return span_frame(self.calibrator, self.natural(wa, inputs), wa)


def _mean_natural(nats: list[dict[str, np.ndarray]], scale: float = 1.0) -> dict[str, np.ndarray]:
    lv = np.mean([2 * np.log(np.maximum(n["rv_hat"], _TINY)) for n in nats], axis=0)
    return {"ret_mu": np.mean([n["ret_mu"] for n in nats], axis=0),
            "ret_sigma": np.mean([n["ret_sigma"] for n in nats], axis=0),
            "rv_hat": np.sqrt(scale * np.exp(lv)),
            "lrv_sigma": np.mean([n["lrv_sigma"] for n in nats], axis=0)}


def fit_ensemble(members: dict[str, FlooredForecaster], val_wa, inputs: pd.DataFrame) -> EnsembleForecaster:
    """Average ``members`` (>= 2 floored forecasters of one fold), choose the variance scale and
    calibrate on ``val_wa`` only (never test)."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {list(members)}")
    y = val_wa.labels().astype(np.float64)
    nat = _mean_natural([m.natural(val_wa, inputs) for m in members.values()])
    y2 = y[:, 1] ** 2
    ok = np.isfinite(y2) & np.isfinite(nat["rv_hat"])
    h = nat["rv_hat"][ok] ** 2
    c = qlike_scale(h, y2[ok])
    choice = EnsembleChoice(members=list(members), scale=c, val_qlike=M.qlike(c * h, y2[ok]),
                            val_qlike_members={a: m.choice.val_qlike for a, m in members.items()})
    nat["rv_hat"] = nat["rv_hat"] * np.sqrt(c)
    groups = pd.DatetimeIndex(val_wa.keys["ts"].iloc[val_wa.ends]).floor("h").asi8
    cal = Calibrator().fit(nat, y[:, 0], y[:, 1], groups=groups, context=context_from_windows(val_wa))
    log.info("ensemble of %s: scale %.3f val QLIKE %.4f (members %s)", list(members), c, choice.val_qlike,
             {a: round(q, 4) for a, q in choice.val_qlike_members.items()})
    return EnsembleForecaster(members, choice, cal)


def calibrate_with_context(baseline, val_inputs: pd.DataFrame, val_wa) -> Calibrator:
    """A context calibrator for a baseline's validation forecasts (so baselines are scored alike)."""
    y = val_wa.labels().astype(np.float64)
    groups = pd.DatetimeIndex(val_wa.keys["ts"].iloc[val_wa.ends]).floor("h").asi8
    return Calibrator(center_ret=baseline.name != "oracle").fit(
        baseline._raw(val_inputs), y[:, 0], y[:, 1], groups=groups, context=context_from_windows(val_wa))


__all__ = ["CONTEXT_KEYS", "EnsembleForecaster", "FloorChoice", "FlooredForecaster", "choose_blend",
           "context_from_feature_rows", "context_from_windows", "fit_ensemble", "fit_floor"]


def residual_windows(wa, floor, inputs: pd.DataFrame):
    """The same windows with ``rv_10m`` replaced by rv / (the floor's median forecast): a network
    trained on them learns a correction to the floor in log variance (its log target is the
    floor's log residual). Rows share X; only the label array is new."""
    from hfcast.features.windows import WindowArrays

    if wa.y is None:
        raise ValueError("residual targets need labelled windows")
    y = wa.y.copy()
    y[:, 1] = (wa.y[:, 1] / floor_median(floor, inputs)).astype(np.float32)
    return WindowArrays(wa.X, wa.ends, y, wa.keys, wa.feature_names)


def floor_forecaster(net_fc, floor, train_wa, val_wa, test_wa, inputs: pd.DataFrame, residual: bool = False,
                     train_cfg: Any = None, model_config: dict | None = None
                     ) -> tuple[FlooredForecaster, dict[str, pd.DataFrame]]:
    """Walk-forward hook: floor a trained network (and optionally a residual one) and predict the test span.

    Returns the floored forecaster and the bare networks' test predictions (``{"net": ..., "resid": ...}``)
    so a comparison shows what the floor changed. ``inputs`` must be ``baseline_inputs`` of the
    frame the windows index (one row per frame row).
    """
    extra = {"net": _bare_predictions(net_fc, test_wa)}
    resid_fc = None
    if residual:
        from hfcast.train import train_forecaster

        r_train, r_val = (residual_windows(w, floor, inputs) for w in (train_wa, val_wa))
        resid_fc, _ = train_forecaster(net_fc.arch, r_train, r_val, model_config=model_config, cfg=train_cfg,
                                       progress=False)
        nat = _net_natural(resid_fc, test_wa, 8192, floor, inputs)
        extra["resid"] = pd.DataFrame(resid_fc.calibrator.apply(nat) if resid_fc.calibrator is not None else {},
                                      columns=list(PRED_COLUMNS))
    return fit_floor(net_fc, floor, val_wa, inputs, resid_fc=resid_fc), extra


def _bare_predictions(fc, wa, batch: int = 8192) -> pd.DataFrame:
    parts = [fc.predict(wa.windows(np.arange(i, min(i + batch, len(wa))))) for i in range(0, len(wa), batch)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(PRED_COLUMNS))

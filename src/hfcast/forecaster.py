"""The deployable forecaster: what walk-forward chose, per target, as ONE object.

Why one object: a forecast quality figure counts only for the forecaster a user gets. The thing
that walk-forward scores, the registry stores and gates, the export compiles, the server answers
with, batch prediction writes and the monitor watches is this class, whatever it holds:

- for the volatility: one network, a network floored on ``har_tod`` (blended with it in log
  variance), an equal-weight ensemble of floored networks, or a baseline itself (``har_tod``,
  ``har_rv``, ``har_x``, ``ewma``), with a variance scale chosen on validation (:class:`Choice`);
- for the return: one network's return head where it showed validated skill, else the zero
  forecast, whose honest confidence is a constant 0.5.

How it runs: ONE graph (:class:`MemberStack`, the networks of the members side by side on the same
scaled window; exported once to ONNX / TensorRT) and ONE post-step shared by every runner
(:meth:`Forecaster.postprocess`): the baselines computed from the same window's features
(:mod:`hfcast.models.baselines`), the blend, the ensemble, the calibration. A forecaster with no
network (a baseline was chosen) has no graph: the post-step is all of it.

Bundle folder (JSON + safetensors, never pickle): ``model.json`` (format, choice, feature list,
meta), ``scaler.json`` (the graph's input scaling), ``calibration.json``, ``baselines.json``,
``members/<arch>/`` (each network's bundle), and ``checksums.json`` (SHA-256 of every file, written
at save, checked at load).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from hfcast import storage
from hfcast.calibration import Calibrator
from hfcast.contracts import INFO_COLUMNS, LOOKBACK, PRED_COLUMNS
from hfcast.features.windows import Scaler
from hfcast.integrity import BundleReader, manifest_of
from hfcast.models.base import RAW_OUTPUTS, TrainedNet, confidence_info, gaussian_outputs, natural_units
from hfcast.models.baselines import (DEPLOYABLE, FLOOR, REQUIRED_FEATURES, Baseline, context, side_from_arrays,
                                     side_from_windows)

log = logging.getLogger(__name__)

FORMAT = "hfcast-forecaster/2"
CHECKSUMS = "checksums.json"
VOL_KINDS = ("net", "floor", "ensemble", *DEPLOYABLE)
_TINY = 1e-12


@dataclass
class Choice:
    """What the forecaster serves per target, chosen on validation (JSON-able).

    Attributes:
        vol: ``net`` | ``floor`` | ``ensemble`` (from ``members``) or a baseline name (``har_tod``...).
        members: for the network kinds, arch -> weight of the network against ``har_tod`` in log
            variance (1 = the bare network, 0 = the floor alone).
        scale: variance multiplier (QLIKE-optimal on validation; 1 for a baseline).
        ret: the architecture whose return head is served, or ``zero``.
        evidence: the validation figures behind the choice (QLIKE of every candidate, each return
            head's IC and its bound).
    """

    vol: str = FLOOR
    members: dict = field(default_factory=dict)
    scale: float = 1.0
    ret: str = "zero"
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vol not in VOL_KINDS:
            raise ValueError(f"unknown volatility kind {self.vol!r}; choose from {VOL_KINDS}")
        if self.vol in DEPLOYABLE and self.members:
            raise ValueError(f"a {self.vol} volatility forecast takes no network members")
        if self.vol not in DEPLOYABLE and not self.members:
            raise ValueError(f"a {self.vol} volatility forecast needs at least one network member")

    @property
    def archs(self) -> list[str]:
        """Every network the forecaster runs (volatility members, then the return head's)."""
        out = list(self.members)
        if self.ret != "zero" and self.ret not in out:
            out.append(self.ret)
        return out

    def describe(self) -> str:
        """One line a user reads: ``volatility: floored lstm (w 0.6); return: zero (no validated skill)``."""
        if self.vol in DEPLOYABLE:
            vol = f"{self.vol} baseline"
        elif self.vol == "ensemble":
            vol = "ensemble of " + ", ".join(f"{a} (w {w:.1f})" for a, w in self.members.items())
        else:
            (a, w), = self.members.items()
            vol = a if self.vol == "net" else f"floored {a} (w {w:.1f})"
        ret = (("zero (a validated head failed on the test spans)" if self.evidence.get("return_replaced") else
                "zero (no validated skill)") if self.ret == "zero" else f"{self.ret} return head")
        return f"volatility: {vol}; return: {ret}"

    @property
    def label(self) -> str:
        """A short name for tags and tables: ``ensemble``, ``floor:lstm``, ``net:tcn``, ``har_tod``."""
        if self.vol in DEPLOYABLE or self.vol == "ensemble":
            return self.vol
        return f"{self.vol}:{next(iter(self.members))}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Choice":
        return cls(vol=str(d["vol"]), members={str(k): float(v) for k, v in (d.get("members") or {}).items()},
                   scale=float(d.get("scale", 1.0)), ret=str(d.get("ret", "zero")), evidence=dict(d.get("evidence") or {}))


def log_variance(nat: Mapping[str, np.ndarray]) -> np.ndarray:
    """2 log rv_hat: the log variance forecast of natural-unit forecasts."""
    return 2.0 * np.log(np.maximum(np.asarray(nat["rv_hat"], np.float64), _TINY))


def compose(choice: Choice, nets: Mapping[str, Mapping[str, np.ndarray]],
            baselines: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The served natural-unit forecast from the members' and the baselines' natural forecasts.

    Volatility: a baseline's as it is, or the mean over members of ``w log h_net + (1 - w) log
    h_har_tod`` (log variances; sigmas blended alike), times ``choice.scale``. Return: the chosen
    head's mean and sigma, or 0 with the sigma of a random walk at the served volatility
    (``har_tod``'s ``ret_scale * sqrt(6) * rv_hat``).
    """
    if choice.vol in DEPLOYABLE:
        b = baselines[choice.vol]
        lv, ls = log_variance(b), np.asarray(b["lrv_sigma"], np.float64)
    else:
        parts = []
        for arch, w in choice.members.items():
            net = nets[arch]
            if w >= 1.0:  # the bare network: no floor needed
                parts.append((log_variance(net), np.asarray(net["lrv_sigma"], np.float64)))
                continue
            har = baselines[FLOOR]
            parts.append((w * log_variance(net) + (1 - w) * log_variance(har),
                          w * np.asarray(net["lrv_sigma"]) + (1 - w) * np.asarray(har["lrv_sigma"])))
        lv = np.mean([p[0] for p in parts], axis=0)
        ls = np.mean([p[1] for p in parts], axis=0)
    rv_hat = np.sqrt(choice.scale * np.exp(lv))
    if choice.ret == "zero":
        ref = baselines.get(FLOOR) or baselines.get(choice.vol)
        if ref is not None:
            sigma = np.asarray(ref["ret_sigma"]) * rv_hat / np.maximum(np.asarray(ref["rv_hat"]), _TINY)
        else:  # a bare network without baselines (an older bundle): its own return sigma
            sigma = np.asarray(next(iter(nets.values()))["ret_sigma"])
        mu = np.zeros_like(rv_hat)
    else:
        mu, sigma = np.asarray(nets[choice.ret]["ret_mu"]), np.asarray(nets[choice.ret]["ret_sigma"])
    return {"ret_mu": mu, "ret_sigma": sigma, "rv_hat": rv_hat, "lrv_sigma": np.maximum(ls, 1e-6)}


class MemberStack(nn.Module):
    """The forecaster's graph: scaled windows [B, 30, F] -> raw outputs [B, 4 k] of its k networks.

    Every member reads the same input, scaled with the forecaster's scaler; a member trained with
    other feature statistics gets an affine re-scaling first (exact for values inside the clip), so
    an ensemble of networks trained on different machines is still one graph.
    """

    def __init__(self, members: Sequence[TrainedNet], scaler: Scaler):
        super().__init__()
        self.nets = nn.ModuleList([m.net for m in members])
        self.clip = float(scaler.clip)
        self.rescale = []
        for i, m in enumerate(members):
            same = (np.allclose(m.scaler.mean, scaler.mean, rtol=0, atol=0)
                    and np.allclose(m.scaler.std, scaler.std, rtol=0, atol=0))
            self.rescale.append(not same)
            a = (scaler.std / m.scaler.std).astype(np.float32)
            b = ((scaler.mean - m.scaler.mean) / m.scaler.std).astype(np.float32)
            self.register_buffer(f"a{i}", torch.from_numpy(a))
            self.register_buffer(f"b{i}", torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, net in enumerate(self.nets):
            xi = torch.clamp(x * getattr(self, f"a{i}") + getattr(self, f"b{i}"), -self.clip, self.clip) \
                if self.rescale[i] else x
            outs.append(net(xi))  # [B, 30, F] -> [B, 4]
        return torch.cat(outs, dim=1)  # [B, 4 k]


class Forecaster:
    """The deployable forecaster (see the module docstring).

    Args:
        members: the trained networks it runs, arch -> :class:`hfcast.models.base.TrainedNet`.
        baselines: fitted baselines it may read (``har_tod`` for a floor or the zero return's sigma;
            the chosen baseline), name -> :class:`hfcast.models.baselines.Baseline`.
        choice: what is served per target. calibrator: fitted on validation on the served forecast.
        feature_names: the window's feature order. scaler: the graph's input scaling (a member's;
            fitted on the training span).
    """

    def __init__(self, members: Mapping[str, TrainedNet], baselines: Mapping[str, Baseline], choice: Choice,
                 calibrator: Calibrator | None, feature_names: Sequence[str], scaler: Scaler,
                 meta: Mapping[str, Any] | None = None):
        missing = [a for a in choice.archs if a not in members]
        if missing:
            raise ValueError(f"choice {choice.describe()!r} needs network(s) {missing}; members: {list(members)}")
        self.members = {a: members[a] for a in choice.archs}  # only what is served
        self.baselines = dict(baselines)
        self.choice, self.calibrator, self.scaler = choice, calibrator, scaler
        self.feature_names = list(feature_names)
        self.meta = dict(meta or {})
        for a, m in self.members.items():
            if list(m.feature_names) != self.feature_names:
                raise ValueError(f"member {a} reads other features than the forecaster")
        self._graph: MemberStack | None = None

    # -- what it is ------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """What is served, in words (:meth:`Choice.describe`)."""
        return self.choice.describe()

    @property
    def arch(self) -> str:
        """The short label of the volatility choice (``ensemble``, ``floor:lstm``, ``har_tod``...)."""
        return self.choice.label

    @property
    def lookback(self) -> int:
        return LOOKBACK

    @property
    def n_outputs(self) -> int:
        """Width of the graph's output: 4 per network member."""
        return len(RAW_OUTPUTS) * len(self.members)

    def primary_net(self) -> TrainedNet | None:
        """The network that weighs most in what is served (the largest volatility weight, else the
        return head's); None when a baseline is served alone. Attributions follow its gradients."""
        if self.choice.members:
            return self.members[max(self.choice.members, key=lambda a: self.choice.members[a])]
        return self.members.get(self.choice.ret)

    def graph(self) -> MemberStack | None:
        """The networks as one module (what is exported), or None when no network is served."""
        if not self.members:
            return None
        if self._graph is None:
            self._graph = MemberStack(list(self.members.values()), self.scaler).eval()
        return self._graph

    # -- the graph ---------------------------------------------------------------------------------
    def predict_raw(self, windows_scaled: np.ndarray | torch.Tensor, batch_size: int = 8192) -> np.ndarray:
        """Scaled windows [B, 30, F] -> the graph's raw outputs [B, 4 k] (torch, eval, no grad)."""
        x = torch.as_tensor(np.asarray(windows_scaled, dtype=np.float32) if not torch.is_tensor(windows_scaled)
                            else windows_scaled, dtype=torch.float32)
        g = self.graph()
        if g is None:
            return np.empty((len(x), 0), np.float32)
        with torch.inference_mode():
            outs = [g(x[a:a + batch_size]).float() for a in range(0, len(x), batch_size)]
        return torch.cat(outs).numpy() if outs else np.empty((0, self.n_outputs), np.float32)

    # -- the post-step -----------------------------------------------------------------------------
    def side_inputs(self, windows_unscaled: np.ndarray) -> pd.DataFrame | None:
        """The baselines' inputs and the calibration context of unscaled windows [B, 30, F] (None for
        a bare network of an older bundle whose features do not carry them: it needs neither)."""
        if not self._reads_side():
            return None
        return side_from_windows(windows_unscaled, self.feature_names)

    def side_inputs_arrays(self, wa: Any) -> pd.DataFrame | None:
        """The same for every window of a :class:`hfcast.features.windows.WindowArrays` (unscaled)."""
        if not self._reads_side():
            return None
        return side_from_arrays(wa)

    def _reads_side(self) -> bool:
        if self.baselines:
            return True
        return all(f in self.feature_names for f in REQUIRED_FEATURES)

    def member_natural(self, raw: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Raw graph outputs [B, 4 k] -> each member's natural-unit forecast."""
        raw = np.asarray(raw, dtype=np.float32)
        k = len(RAW_OUTPUTS)
        if raw.ndim != 2 or raw.shape[1] != self.n_outputs:
            raise ValueError(f"raw outputs must be [B, {self.n_outputs}] for {len(self.members)} network(s), "
                             f"got {raw.shape}")
        return {a: natural_units(raw[:, i * k:(i + 1) * k], m.scaler) for i, (a, m) in enumerate(self.members.items())}

    def baseline_natural(self, side: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
        """Each stored baseline's natural-unit forecast of the windows behind ``side``."""
        return {n: b.natural(side) for n, b in self.baselines.items()}

    def natural(self, raw: np.ndarray, side: pd.DataFrame | None) -> dict[str, np.ndarray]:
        """The served natural-unit forecast (:func:`compose`) of the graph's outputs and the windows' side inputs."""
        base = self.baseline_natural(side) if side is not None and self.baselines else {}
        return compose(self.choice, self.member_natural(raw), base)

    def postprocess(self, raw: np.ndarray, side: pd.DataFrame | None) -> dict[str, np.ndarray]:
        """Raw graph outputs + side inputs -> PRED_COLUMNS (calibrated), the step every runner shares."""
        nat = self.natural(raw, side)
        if self.calibrator is None:
            out = gaussian_outputs(nat)
        else:
            out = self.calibrator.apply(nat, context(side) if side is not None else None)
        return {c: np.asarray(out[c], dtype=np.float64) for c in PRED_COLUMNS}

    def info_columns(self, n: int) -> dict[str, np.ndarray]:
        """INFO_COLUMNS for ``n`` forecasts (1.0 where this version's confidence is informative)."""
        if self.calibrator is not None:
            return self.calibrator.info_columns(n)
        return {c: np.zeros(n) for c in INFO_COLUMNS}

    def demote_confidence(self, reasons: Mapping[str, str]) -> None:
        """Serve the confidences of ``reasons``' targets (``ret``, ``rv``) as uninformative (constant,
        flag 0): live dates contradicted what validation found (hfcast.monitoring.rules.confidence).
        The reasons are kept in ``meta["conf_demoted"]``."""
        if not reasons or self.calibrator is None:
            return
        self.calibrator = self.calibrator.demote(list(reasons))
        self.meta["conf_demoted"] = {**self.meta.get("conf_demoted", {}), **dict(reasons)}

    def confidence_info(self) -> dict[str, Any]:
        """Whether this version's confidences carry information (for the API and prediction files)."""
        return confidence_info(self.calibrator)

    # -- whole predictions ---------------------------------------------------------------------------
    def predict(self, windows_unscaled: np.ndarray) -> pd.DataFrame:
        """Unscaled windows [B, 30, F] -> PRED_COLUMNS + INFO_COLUMNS frame."""
        w = np.asarray(windows_unscaled, dtype=np.float32)
        if w.ndim != 3 or tuple(w.shape[1:]) != (LOOKBACK, len(self.feature_names)):
            raise ValueError(f"windows must be [B, {LOOKBACK}, {len(self.feature_names)}], got {tuple(w.shape)}")
        out = self.postprocess(self.predict_raw(self.scaler.transform(w)), self.side_inputs(w))
        return pd.DataFrame({**out, **self.info_columns(len(w))}, columns=[*PRED_COLUMNS, *INFO_COLUMNS])

    def predict_arrays(self, wa: Any, batch: int = 8192) -> pd.DataFrame:
        """Every window of a WindowArrays (unscaled), in order: PRED_COLUMNS + INFO_COLUMNS."""
        side = self.side_inputs_arrays(wa)
        parts = []
        for a in range(0, len(wa), batch):
            idx = np.arange(a, min(a + batch, len(wa)))
            parts.append(self.predict_raw(self.scaler.transform(wa.windows(idx))))
        raw = np.concatenate(parts) if parts else np.empty((0, self.n_outputs), np.float32)
        out = self.postprocess(raw, side)
        return pd.DataFrame({**out, **self.info_columns(len(wa))}, columns=[*PRED_COLUMNS, *INFO_COLUMNS])

    # -- bundle --------------------------------------------------------------------------------------
    def save(self, path: str, storage_options: dict | None = None) -> str:
        """Write the bundle folder (local path or s3:// URL) with ``checksums.json`` last."""
        path = str(path)
        files: dict[str, bytes] = {}
        doc = {"format": FORMAT, "kind": self.kind, "arch": self.arch, "choice": self.choice.to_dict(),
               "members": list(self.members), "feature_names": self.feature_names, "lookback": self.lookback,
               "meta": self.meta}
        files["model.json"] = json.dumps(doc, indent=1, default=_json_default).encode()
        files["scaler.json"] = json.dumps(self.scaler.to_dict()).encode()
        files["baselines.json"] = json.dumps({n: b.to_dict() for n, b in self.baselines.items()}).encode()
        if self.calibrator is not None:
            files["calibration.json"] = json.dumps(self.calibrator.to_dict()).encode()
        for arch, m in self.members.items():
            for name, data in m.to_files().items():
                files[f"members/{arch}/{name}"] = data
        for name, data in files.items():
            storage.write_bytes(storage.join(path, name), data, storage_options)
        storage.write_text(storage.join(path, CHECKSUMS), json.dumps(manifest_of(files), indent=1), storage_options)
        log.info("saved forecaster (%s) to %s", self.kind, path)
        return path

    @classmethod
    def load(cls, path: str, storage_options: dict | None = None) -> "Forecaster":
        """Rebuild a bundle written by :meth:`save` (its checksums verified), or a single network's
        bundle of an older release (served as that network)."""
        reader = BundleReader(str(path), storage_options)
        doc = reader.json("model.json")
        if doc.get("format") != FORMAT:
            if "arch" in doc and "weights.safetensors" in reader.names():
                return cls.from_net(TrainedNet.from_files(reader.read), doc.get("meta"))
            raise ValueError(f"{path}/model.json is not an hfcast forecaster (format {doc.get('format')!r})")
        members = {a: TrainedNet.from_files(lambda n, a=a: reader.read(f"members/{a}/{n}")) for a in doc["members"]}
        baselines = {n: Baseline.from_dict(d) for n, d in reader.json("baselines.json").items()}
        cal = Calibrator.from_dict(reader.json("calibration.json")) if "calibration.json" in reader.names() else None
        scaler = Scaler.from_dict(reader.json("scaler.json"))
        return cls(members, baselines, Choice.from_dict(doc["choice"]), cal, doc["feature_names"], scaler, doc.get("meta"))

    @classmethod
    def from_net(cls, net: TrainedNet, meta: Mapping[str, Any] | None = None) -> "Forecaster":
        """A single trained network served as it is (its own calibrator; no floor)."""
        choice = Choice(vol="net", members={net.arch: 1.0}, ret=net.arch)
        return cls({net.arch: net}, {}, choice, net.calibrator, net.feature_names, net.scaler,
                   {**net.meta, **dict(meta or {})})


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")

"""The network base class and the trained network (net + scaler + calibrator + feature list).

Every architecture maps a scaled window [B, 30, F] to four raw outputs in scaled target units
(``RAW_OUTPUTS``); everything after that - inverting the target scaling, calibration, intervals,
saving - lives here once, so serving, batch inference and evaluation never care which
architecture produced the numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr
from torch import nn

from hfcast import storage
from hfcast.calibration import Calibrator
from hfcast.config import checked_section
from hfcast.contracts import INFO_COLUMNS, LOOKBACK, PRED_COLUMNS, VOL_TOLERANCE
from hfcast.features.windows import Scaler
from hfcast.models._modules import JointHead, summarize

log = logging.getLogger(__name__)

RAW_OUTPUTS = ("ret_mu", "ret_log_sigma", "lrv_mu", "lrv_log_sigma")
Z80 = 1.2815515655446004  # two-sided 80% normal quantile: P(|Z| <= Z80) = 0.8


@dataclass
class NetConfig:
    """The fields every architecture's config has; each model file extends it with its own."""

    head_hidden: int = 32  # hidden width of each output head
    dropout: float = 0.1
    lookback: int = LOOKBACK  # window length T
    linear_skip: bool = True  # a linear path from the last minute's features to the log-variance mean


class ForecastNet(nn.Module):
    """Base of every architecture: [B, T, F] float32 -> [B, 4] float32 in RAW_OUTPUTS order.

    An architecture names itself in its class line (``class LSTMNet(ForecastNet, arch="lstm",
    config=LSTMConfig, heads=JointHead)``), builds its encoder in ``__init__``, then calls
    ``add_heads(width)``, and writes ``encode`` ([B, T, F] -> [B, T, width]); the summary of the
    encoded window (``summarize``) and the output heads are the same for all and live here. The
    config dataclass is kept on the instance so a bundle can rebuild the exact network.

    Beside the encoder, a linear path from the last minute's (scaled) features to the log-variance
    mean (``linear_skip``, on by default): a HAR-like linear response to the volatility features that
    the saturating encoder need not learn. It lowered every bare network's test QLIKE on every
    generator of the robustness suite (by 0.2-2.9% of ``har_tod``'s at 20 x 24, up to 5.9% at 30 x
    40: docs/QUALITY.md). It starts at zero
    without drawing from torch's RNG, so a seed gives the same encoder and heads with or without it.
    """

    arch: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    heads_class: ClassVar[type[nn.Module]] = JointHead
    registry: ClassVar[dict[str, type["ForecastNet"]]] = {}  # arch -> class, filled as subclasses are defined

    def __init_subclass__(cls, arch: str = "", config: type = object, heads: type[nn.Module] = JointHead,
                          **kwargs: Any) -> None:
        # why a registry here: TrainedNet.from_files rebuilds any architecture without importing the
        # package that imports this module (that would be an import cycle)
        super().__init_subclass__(**kwargs)
        cls.arch, cls.config_class, cls.heads_class = arch, config, heads
        if arch:
            ForecastNet.registry[arch] = cls

    def __init__(self, n_features: int, config: Any):
        super().__init__()
        self.n_features = int(n_features)
        self.config = config
        # zeros, not nn.Linear: no draw from torch's RNG, so a seed's encoder and heads are unchanged
        self.skip = nn.Parameter(torch.zeros(self.n_features + 1, 1)) if getattr(config, "linear_skip", False) else None

    def add_heads(self, width: int) -> None:
        """The output heads over the ``width``-wide encoder (they read 2 * width).

        Called last in an architecture's ``__init__``: parameters are drawn from torch's RNG in
        creation order, so heads after the encoder keep a seed's weights what they were before the
        heads moved into this class (same seed, same network, same results).
        """
        self.heads = self.heads_class(2 * width, self.config.head_hidden, self.config.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] -> [B, T, width]: the architecture's own part."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.heads(summarize(self.encode(x)))  # [B, T, W] -> [B, 2W] -> [B, 4]
        if self.skip is None:
            return out
        # [B, F] @ [F, 1]: a 2-D weight, which onnxruntime's int8 MatMul takes (a 1-D one it refuses)
        lin = x[:, -1] @ self.skip[:-1] + self.skip[-1]  # [B, 1]: linear in the last minute's features
        return torch.cat([out[:, :2], out[:, 2:3] + lin, out[:, 3:]], dim=-1)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def architectures() -> tuple[str, ...]:
    """Every registered architecture, in the order they registered (the package's files by name,
    then any registered later)."""
    return tuple(ForecastNet.registry)


def unregister(arch: str) -> None:
    """Remove an architecture (a test's, once it is done); an unknown name is ignored."""
    ForecastNet.registry.pop(arch, None)


def model_config(arch: str, config: dict[str, Any] | Any | None = None) -> Any:
    """The config dataclass of ``arch`` from a dict (unknown keys are an error), a dataclass or None."""
    if arch not in ForecastNet.registry:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {architectures()}")
    cls = ForecastNet.registry[arch].config_class
    if config is None:
        return cls()
    if is_dataclass(config):
        config = asdict(config)
    return cls(**checked_section(cls, config, f"{arch} config key(s)"))


def build_model(arch: str, n_features: int, config: dict[str, Any] | Any | None = None) -> ForecastNet:
    """A fresh ``arch`` network for ``n_features`` inputs (weights from torch's current RNG state)."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    cfg = model_config(arch, config)  # raises on an unknown arch or key
    return ForecastNet.registry[arch](n_features, cfg)


def natural_units(raw: np.ndarray, scaler: Scaler) -> dict[str, np.ndarray]:
    """Raw [B, 4] outputs -> ``{"ret_mu", "ret_sigma", "rv_hat", "lrv_sigma"}`` in label units.

    ``rv_hat`` is the volatility forecast sqrt(E[rv^2]) = exp(m + s^2) for log rv ~ N(m, s^2):
    the variance forecast exp(2m + 2s^2) is the conditional MEAN of the realized variance, which
    is what QLIKE and MSE on variance reward (the lognormal median exp(m) is biased low; on the
    simulator the correction lowers test QLIKE by 4-6%). ``lrv_sigma`` is s, the sigma of log rv,
    so calibration and intervals work in log space where the error is Gaussian.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_OUTPUTS):
        raise ValueError(f"raw outputs must be [B, {len(RAW_OUTPUTS)}], got {raw.shape}")
    lrv_sigma = np.exp(raw[:, 3]) * scaler.lrv_std
    return {
        "ret_mu": raw[:, 0] * scaler.ret_scale,
        "ret_sigma": np.exp(raw[:, 1]) * scaler.ret_scale,
        "rv_hat": np.exp(raw[:, 2] * scaler.lrv_std + scaler.lrv_mean + lrv_sigma**2),
        "lrv_sigma": lrv_sigma,
    }


def gaussian_outputs(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Uncalibrated PRED_COLUMNS straight from the Gaussian / lognormal forecast.

    ret conf = Phi(|mu| / sigma) (P(sign right) if the forecast distribution were true);
    vol conf = P(0.75 <= rv / rv_hat <= 1.25) = Phi(log 1.25 / s) - Phi(log 0.75 / s);
    80% intervals mu +- 1.2816 sigma and exp(m +- 1.2816 s), m = log rv_hat - s^2 the log median.
    """
    mu, sig = pred["ret_mu"], np.maximum(pred["ret_sigma"], 1e-12)
    rv_hat, ls = pred["rv_hat"], np.maximum(pred["lrv_sigma"], 1e-12)
    lmu = np.log(rv_hat) - ls**2
    return {
        "ret_60m_pred": mu,
        "ret_60m_conf": ndtr(np.abs(mu) / sig),
        "ret_60m_lo": mu - Z80 * sig,
        "ret_60m_hi": mu + Z80 * sig,
        "rv_10m_pred": rv_hat,
        "rv_10m_conf": ndtr(np.log1p(VOL_TOLERANCE) / ls) - ndtr(np.log1p(-VOL_TOLERANCE) / ls),
        "rv_10m_lo": np.exp(lmu - Z80 * ls),
        "rv_10m_hi": np.exp(lmu + Z80 * ls),
    }


class TrainedNet:
    """One trained network with what it needs to give natural-unit forecasts: network, scaler
    (feature statistics and target scales, fitted on the training span), the calibrator of its bare
    forecast (fitted on validation), feature list, free-form meta.

    It is a MEMBER of what is served (:class:`hfcast.forecaster.Forecaster`), which may floor it,
    average it with others or not use it at all; on its own it gives the bare network's forecast.

    Args:
        net: a trained ForecastNet (kept on CPU for inference).
        scaler: the Scaler fitted on the training span.
        feature_names: feature order the net was trained on.
        calibrator: an ``hfcast.calibration.Calibrator`` or None (Gaussian fallback).
        meta: JSON-able facts (training dates, metrics...).
    """

    FILES = ("model.json", "weights.safetensors", "scaler.json", "calibration.json")

    def __init__(self, net: ForecastNet, scaler: Scaler, feature_names: list[str], calibrator: Any = None,
                 meta: dict[str, Any] | None = None):
        if len(feature_names) != net.n_features:
            raise ValueError(f"{len(feature_names)} feature names for a net with {net.n_features} inputs")
        self.net, self.scaler, self.calibrator = net, scaler, calibrator
        self.feature_names = list(feature_names)
        self.meta = dict(meta or {})

    @property
    def arch(self) -> str:
        return self.net.arch

    @property
    def lookback(self) -> int:
        return int(getattr(self.net.config, "lookback", LOOKBACK))

    def _check(self, windows: np.ndarray) -> None:
        want = (self.lookback, len(self.feature_names))
        if windows.ndim != 3 or tuple(windows.shape[1:]) != want:
            raise ValueError(f"windows must be [B, {want[0]}, {want[1]}], got {tuple(windows.shape)}")

    def predict_raw(self, windows_scaled: np.ndarray | torch.Tensor, batch_size: int = 8192) -> np.ndarray:
        """Scaled windows [B, 30, F] -> raw outputs [B, 4] (float32, eval mode, no grad)."""
        self._check(windows_scaled)
        x = torch.as_tensor(windows_scaled, dtype=torch.float32)
        self.net.eval()
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            outs = [self.net(x[a:a + batch_size].to(device)).float().cpu() for a in range(0, len(x), batch_size)]
        return torch.cat(outs).numpy() if outs else np.empty((0, len(RAW_OUTPUTS)), np.float32)

    def natural(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs -> natural-unit forecast dict (the calibrator's input)."""
        return natural_units(raw, self.scaler)

    def natural_windows(self, windows_unscaled: np.ndarray) -> dict[str, np.ndarray]:
        """Unscaled windows -> natural-unit forecast dict."""
        return self.natural(self.predict_raw(self.scaler.transform(np.asarray(windows_unscaled))))

    def postprocess(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs -> PRED_COLUMNS of the bare network: calibrated when a calibrator is present."""
        pred = self.natural(raw)
        out = self.calibrator.apply(pred) if self.calibrator is not None else gaussian_outputs(pred)
        return {c: np.asarray(out[c], dtype=np.float64) for c in PRED_COLUMNS}

    def info_columns(self, n: int) -> dict[str, np.ndarray]:
        """INFO_COLUMNS of the bare network's calibrator for ``n`` forecasts."""
        if self.calibrator is not None:
            return self.calibrator.info_columns(n)
        return {c: np.zeros(n) for c in INFO_COLUMNS}

    def predict(self, windows_unscaled: np.ndarray) -> pd.DataFrame:
        """Unscaled windows [B, 30, F] (features in ``feature_names`` order) -> the bare network's
        PRED_COLUMNS frame."""
        windows_unscaled = np.asarray(windows_unscaled)
        self._check(windows_unscaled)
        out = self.postprocess(self.predict_raw(self.scaler.transform(windows_unscaled)))
        return pd.DataFrame(out, columns=list(PRED_COLUMNS))

    def to_files(self) -> dict[str, bytes]:
        """The member bundle as ``{file name: bytes}`` (JSON + safetensors, no pickle)."""
        from safetensors.torch import save as st_save

        model = {"arch": self.arch, "config": self.net.config_dict(), "n_features": self.net.n_features,
                 "feature_names": self.feature_names, "lookback": self.lookback, "meta": self.meta}
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        files = {"model.json": json.dumps(model, indent=1, default=_json_default).encode(),
                 "weights.safetensors": st_save(state), "scaler.json": json.dumps(self.scaler.to_dict()).encode()}
        if self.calibrator is not None:
            files["calibration.json"] = json.dumps(self.calibrator.to_dict()).encode()
        return files

    @classmethod
    def from_files(cls, read: Callable[[str], bytes | None]) -> "TrainedNet":
        """Rebuild from :meth:`to_files`' files; ``read(name)`` gives a file's bytes or None if absent."""
        from safetensors.torch import load as st_load

        model = json.loads(read("model.json"))
        config = {"linear_skip": False, **model["config"]}  # bundles from before the skip existed
        net = build_model(model["arch"], model["n_features"], config)
        net.load_state_dict(st_load(read("weights.safetensors")))
        net.eval()
        scaler = Scaler.from_dict(json.loads(read("scaler.json")))
        cal_bytes = read("calibration.json")
        calibrator = None
        if cal_bytes is not None:
            calibrator = Calibrator.from_dict(json.loads(cal_bytes))
        return cls(net, scaler, model["feature_names"], calibrator, model.get("meta"))

    def save(self, path: str, storage_options: dict | None = None) -> str:
        """Write the member bundle folder (local path or s3:// URL)."""
        path = str(path)
        files = self.to_files()
        for name, data in files.items():
            storage.write_bytes(storage.join(path, name), data, storage_options)
        cal_url = storage.join(path, "calibration.json")
        if "calibration.json" not in files and storage.exists(cal_url, storage_options):
            storage.remove(cal_url, storage_options)  # a stale map must not calibrate a new net
        log.info("saved %s network to %s", self.arch, path)
        return path

    @classmethod
    def load(cls, path: str, storage_options: dict | None = None) -> "TrainedNet":
        """Rebuild a member bundle written by :meth:`save`."""
        path = str(path)

        def read(name: str) -> bytes | None:
            url = storage.join(path, name)
            if name == "calibration.json" and not storage.exists(url, storage_options):
                return None
            try:
                return storage.read_bytes(url, storage_options)
            except FileNotFoundError:
                if name == "model.json":
                    raise FileNotFoundError(f"no model.json in {path}: not a network bundle") from None
                raise

        return cls.from_files(read)


def confidence_info(calibrator: Any) -> dict[str, Any]:
    """Whether a calibrator's confidences carry information: ``ret_conf_informative`` (return probit
    slope >= 2 standard errors on validation), ``ret_conf_slope``, ``rv_conf_informative``; all False
    / 0 without a calibrator."""
    if calibrator is None:
        return {"ret_conf_informative": False, "ret_conf_slope": 0.0, "rv_conf_informative": False}
    return {"ret_conf_informative": bool(getattr(calibrator, "ret_informative", False)),
            "ret_conf_slope": float(calibrator.ret_conf.a),
            "rv_conf_informative": bool(getattr(calibrator, "rv_informative", False))}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")

"""Forecasting networks: one file per architecture, all sharing :class:`~hfcast.models.base.ForecastNet`.

``build_model(arch, n_features, config)`` is the single way to construct one, so a saved bundle
(arch + config dict) rebuilds the exact network.
"""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any

from hfcast.models.base import PRED_COLUMNS, RAW_OUTPUTS, ForecastNet, Forecaster
from hfcast.models.hybrid import HybridNet
from hfcast.models.lstm import LSTMNet
from hfcast.models.tcn import TCNNet
from hfcast.models.transformer import TransformerNet

_NETS: dict[str, type[ForecastNet]] = {n.arch: n for n in (TransformerNet, LSTMNet, TCNNet, HybridNet)}
ARCHITECTURES = ("transformer", "lstm", "tcn", "hybrid")


def model_config(arch: str, config: dict[str, Any] | Any | None = None) -> Any:
    """The config dataclass of ``arch`` from a dict (unknown keys are an error), a dataclass or None."""
    if arch not in _NETS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    cls = _NETS[arch].config_class
    if config is None:
        return cls()
    if is_dataclass(config):
        config = asdict(config)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {arch} config key(s) {unknown}; known: {sorted(known)}")
    return cls(**config)


def build_model(arch: str, n_features: int, config: dict[str, Any] | Any | None = None) -> ForecastNet:
    """A fresh ``arch`` network for ``n_features`` inputs (weights from torch's current RNG state)."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    cfg = model_config(arch, config)  # raises on an unknown arch or key
    return _NETS[arch](n_features, cfg)


__all__ = ["ARCHITECTURES", "PRED_COLUMNS", "RAW_OUTPUTS", "ForecastNet", "Forecaster", "build_model", "model_config"]

"""Forecasting networks: one file per architecture, all sharing :class:`~hfcast.models.base.ForecastNet`.

``build_model(arch, n_features, config)`` is the single way to construct one, so a saved bundle
(arch + config dict) rebuilds the exact network.
"""

from __future__ import annotations

from hfcast.contracts import PRED_COLUMNS
from hfcast.models.base import ARCHITECTURES, RAW_OUTPUTS, ForecastNet, TrainedNet, build_model, model_config
# imported so that each architecture registers itself with ForecastNet (build_model, TrainedNet.from_files)
from hfcast.models.hybrid import HybridNet  # noqa: F401
from hfcast.models.lstm import LSTMNet  # noqa: F401
from hfcast.models.tcn import TCNNet  # noqa: F401
from hfcast.models.transformer import TransformerNet  # noqa: F401

__all__ = ["ARCHITECTURES", "PRED_COLUMNS", "RAW_OUTPUTS", "ForecastNet", "TrainedNet", "build_model", "model_config"]

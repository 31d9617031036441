"""LSTM network: a recurrent encoder over the window; like every architecture, the last minute's
state beside the window average (:func:`hfcast.models._modules.summarize`) feeds one joint head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfcast.models._modules import JointHead
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class LSTMConfig(NetConfig):
    """``dropout`` applies between LSTM layers and in the head."""

    hidden: int = 48       # LSTM state size
    n_layers: int = 2


class LSTMNet(ForecastNet, arch="lstm", config=LSTMConfig, heads=JointHead):
    def __init__(self, n_features: int, config: LSTMConfig):
        super().__init__(n_features, config)
        self.inp = nn.Linear(n_features, config.hidden)
        self.lstm = nn.LSTM(config.hidden, config.hidden, num_layers=config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.ln = nn.LayerNorm(config.hidden)
        self.add_heads(config.hidden)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.inp(x))  # [B, T, F] -> [B, T, H]
        return self.ln(h)

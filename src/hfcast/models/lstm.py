"""LSTM baseline network: a recurrent encoder over the window, the final state feeds one joint head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfcast.models._modules import JointHead, summarize
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class LSTMConfig(NetConfig):
    """``dropout`` applies between LSTM layers and in the head."""

    hidden: int = 48       # LSTM state size
    n_layers: int = 2


class LSTMNet(ForecastNet):
    arch = "lstm"
    config_class = LSTMConfig

    def __init__(self, n_features: int, config: LSTMConfig):
        super().__init__(n_features, config)
        c = config
        self.inp = nn.Linear(n_features, c.hidden)
        self.lstm = nn.LSTM(c.hidden, c.hidden, num_layers=c.n_layers, batch_first=True,
                            dropout=c.dropout if c.n_layers > 1 else 0.0)
        self.ln = nn.LayerNorm(c.hidden)
        self.head = JointHead(2 * c.hidden, c.head_hidden, c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.inp(x))         # [B, T, F] -> [B, T, H]
        return self.head(summarize(self.ln(h)))  # [B, T, H] -> [B, 2H] -> [B, 4]

"""Temporal convolutional network: causal dilated Conv1d blocks over the window, one joint head.

Causal padding means the state at minute t reads minutes <= t only; the head reads the last
minute (whose receptive field spans the whole window) next to the window average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfcast.models._modules import JointHead, TemporalConvNet, summarize
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class TCNConfig(NetConfig):
    channels: int = 48     # width of every temporal block
    n_levels: int = 4      # dilations 1, 2, 4, 8: receptive field 61 minutes with kernel 3
    kernel_size: int = 3


class TCNNet(ForecastNet):
    arch = "tcn"
    config_class = TCNConfig

    def __init__(self, n_features: int, config: TCNConfig):
        super().__init__(n_features, config)
        c = config
        self.tcn = TemporalConvNet(n_features, c.channels, c.n_levels, c.kernel_size, c.dropout)
        self.head = JointHead(2 * c.channels, c.head_hidden, c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tcn(x)                    # [B, T, F] -> [B, T, C]
        return self.head(summarize(h))     # [B, T, C] -> [B, 2C] -> [B, 4]

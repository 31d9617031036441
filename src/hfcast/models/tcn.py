"""Temporal convolutional network: causal dilated Conv1d blocks over the window, one joint head.

Causal padding means the state at minute t reads minutes <= t only; the head reads the last
minute (whose receptive field spans the whole window) next to the window average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfcast.models._modules import JointHead, TemporalConvNet
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class TCNConfig(NetConfig):
    channels: int = 48     # width of every temporal block
    n_levels: int = 4      # dilations 1, 2, 4, 8: receptive field 61 minutes with kernel 3
    kernel_size: int = 3


class TCNNet(ForecastNet, arch="tcn", config=TCNConfig, heads=JointHead):
    def __init__(self, n_features: int, config: TCNConfig):
        super().__init__(n_features, config)
        self.tcn = TemporalConvNet(n_features, config.channels, config.n_levels, config.kernel_size, config.dropout)
        self.add_heads(config.channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.tcn(x)  # [B, T, F] -> [B, T, C]

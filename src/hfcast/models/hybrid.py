"""Hybrid: a TCN extracts local (few-minute) patterns, a transformer encoder relates them across
the window, and the three heads of the transformer read the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfcast.models._modules import TemporalConvNet, ThreeHeads, TransformerEncoder
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class HybridConfig(NetConfig):
    channels: int = 48     # TCN width = transformer width
    tcn_levels: int = 2    # dilations 1, 2: a 7-minute local receptive field with kernel 3
    kernel_size: int = 3
    n_layers: int = 1      # transformer blocks after the TCN
    n_heads: int = 4
    mlp_mult: int = 2


class HybridNet(ForecastNet, arch="hybrid", config=HybridConfig, heads=ThreeHeads):
    def __init__(self, n_features: int, config: HybridConfig):
        super().__init__(n_features, config)
        self.tcn = TemporalConvNet(n_features, config.channels, config.tcn_levels, config.kernel_size, config.dropout)
        self.encoder = TransformerEncoder(config.lookback, config.channels, config.n_layers, config.n_heads,
                                          config.mlp_mult, config.dropout)
        self.add_heads(config.channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tcn(x))  # [B, T, F] -> [B, T, C] -> [B, T, C]

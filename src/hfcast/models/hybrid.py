"""Hybrid: a TCN extracts local (few-minute) patterns, a transformer encoder relates them across
the window, and the three heads of the transformer read the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfcast.models._modules import TemporalConvNet, TransformerEncoder, ThreeHeads, summarize
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class HybridConfig(NetConfig):
    channels: int = 48     # TCN width = transformer width
    tcn_levels: int = 2    # dilations 1, 2: a 7-minute local receptive field with kernel 3
    kernel_size: int = 3
    n_layers: int = 1      # transformer blocks after the TCN
    n_heads: int = 4
    mlp_mult: int = 2


class HybridNet(ForecastNet):
    arch = "hybrid"
    config_class = HybridConfig

    def __init__(self, n_features: int, config: HybridConfig):
        super().__init__(n_features, config)
        c = config
        self.tcn = TemporalConvNet(n_features, c.channels, c.tcn_levels, c.kernel_size, c.dropout)
        self.encoder = TransformerEncoder(c.lookback, c.channels, c.n_layers, c.n_heads, c.mlp_mult, c.dropout)
        self.heads = ThreeHeads(2 * c.channels, c.head_hidden, c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tcn(x))  # [B, T, F] -> [B, T, C] -> [B, T, C]
        return self.heads(summarize(h))  # [B, T, C] -> [B, 2C] -> [B, 4]

"""Hybrid: a TCN extracts local (few-minute) patterns, a transformer encoder relates them across
the window, and the three heads of the transformer read the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfcast.contracts import LOOKBACK
from hfcast.models._modules import GaussianHead, TemporalConvNet, TransformerEncoder, assemble, summarize
from hfcast.models.base import ForecastNet


@dataclass
class HybridConfig:
    channels: int = 48     # TCN width = transformer width
    tcn_levels: int = 2    # dilations 1, 2: a 7-minute local receptive field with kernel 3
    kernel_size: int = 3
    n_layers: int = 1      # transformer blocks after the TCN
    n_heads: int = 4
    mlp_mult: int = 2
    head_hidden: int = 32
    dropout: float = 0.1
    lookback: int = LOOKBACK


class HybridNet(ForecastNet):
    arch = "hybrid"
    config_class = HybridConfig

    def __init__(self, n_features: int, config: HybridConfig):
        super().__init__(n_features, config)
        c = config
        self.tcn = TemporalConvNet(n_features, c.channels, c.tcn_levels, c.kernel_size, c.dropout)
        self.encoder = TransformerEncoder(c.lookback, c.channels, c.n_layers, c.n_heads, c.mlp_mult, c.dropout)
        self.return_head = GaussianHead(2 * c.channels, c.head_hidden, 1, c.dropout)
        self.vol_head = GaussianHead(2 * c.channels, c.head_hidden, 1, c.dropout)
        self.confidence_head = GaussianHead(2 * c.channels, c.head_hidden, 2, c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tcn(x))  # [B, T, F] -> [B, T, C] -> [B, T, C]
        z = summarize(h)               # [B, 2C]
        ls = self.confidence_head(z)   # [B, 2]
        return assemble(self.return_head(z), ls[:, 0:1], self.vol_head(z), ls[:, 1:2])  # [B, 4]

"""The three-headed transformer: one shared encoder over the [30, F] window, three heads.

- return head: the expected 60-minute return (``ret_mu``);
- volatility head: the expected log realized volatility over the next 10 minutes (``lrv_mu``);
- confidence head: the uncertainty of both, as log-sigmas (``ret_log_sigma``, ``lrv_log_sigma``),
  trained by the heteroscedastic likelihood and turned into probabilities by the calibrator.

The confidence head shares the encoder with the other two, so "how sure" is learnt from the same
representation as "what".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfcast.models._modules import TransformerEncoder, ThreeHeads, summarize
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class TransformerConfig(NetConfig):
    d_model: int = 48      # width of the encoder
    n_layers: int = 2
    n_heads: int = 4       # must divide d_model
    mlp_mult: int = 2      # hidden width of each block's MLP = mlp_mult * d_model


class TransformerNet(ForecastNet):
    arch = "transformer"
    config_class = TransformerConfig

    def __init__(self, n_features: int, config: TransformerConfig):
        super().__init__(n_features, config)
        c = config
        self.inp = nn.Linear(n_features, c.d_model)
        self.encoder = TransformerEncoder(c.lookback, c.d_model, c.n_layers, c.n_heads, c.mlp_mult, c.dropout)
        self.heads = ThreeHeads(2 * c.d_model, c.head_hidden, c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.inp(x))  # [B, T, F] -> [B, T, D]
        return self.heads(summarize(h))  # [B, T, D] -> [B, 2D] -> [B, 4]

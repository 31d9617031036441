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

from hfcast.models._modules import ThreeHeads, TransformerEncoder
from hfcast.models.base import ForecastNet, NetConfig


@dataclass
class TransformerConfig(NetConfig):
    d_model: int = 48      # width of the encoder
    n_layers: int = 2
    n_heads: int = 4       # must divide d_model
    mlp_mult: int = 2      # hidden width of each block's MLP = mlp_mult * d_model


class TransformerNet(ForecastNet, arch="transformer", config=TransformerConfig, heads=ThreeHeads):
    def __init__(self, n_features: int, config: TransformerConfig):
        super().__init__(n_features, config)
        self.inp = nn.Linear(n_features, config.d_model)
        self.encoder = TransformerEncoder(config.lookback, config.d_model, config.n_layers, config.n_heads,
                                          config.mlp_mult, config.dropout)
        self.add_heads(config.d_model)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.inp(x))  # [B, T, F] -> [B, T, D]

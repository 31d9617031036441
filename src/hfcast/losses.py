"""Heteroscedastic likelihoods for the two targets (both in scaled units, see ``RAW_OUTPUTS``).

The return target is ``ret_60m / ret_scale``; the volatility target is the standardised log of
``rv_10m`` (a lognormal in natural units becomes Gaussian in log space). Each row's label may be
missing (a horizon that crosses the close): such a row contributes nothing to that target's loss
and does not count in its mean.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``loss`` over rows where ``mask``; 0 (with a gradient path) when no row has a label.

    ``denom`` replaces the local count: data-parallel training passes (labels in the GLOBAL batch) /
    world size, so the gradients DDP averages over ranks are those of the global batch's mean.
    """
    return (loss * mask).sum() / (mask.sum().clamp(min=1) if denom is None else denom)


class GaussianNLL(nn.Module):
    """Negative log-likelihood of y under N(mu, sigma^2), sigma = exp(log_sigma):

        nll = log_sigma + 0.5 * ((y - mu) / sigma)^2 + 0.5 * log(2 pi)

    Known failure: the gradient on mu is scaled by 1 / sigma^2, so rows the model deems noisy are
    effectively ignored and the mean fit can stall (Seitzer et al., ICLR 2022); see BetaNLL.
    """

    def per_row(self, mu: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = (y - mu) * torch.exp(-log_sigma)
        return log_sigma + 0.5 * z * z + _HALF_LOG_2PI

    def forward(self, mu: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor,
                denom: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.isfinite(y)
        y0 = torch.where(mask, y, torch.zeros_like(y))
        return _masked_mean(self.per_row(mu, log_sigma, y0), mask.to(mu.dtype), denom)


class BetaNLL(GaussianNLL):
    """beta-NLL (Seitzer et al., 2022): each row's NLL weighted by a stop-gradient sigma^(2 beta):

        loss = stopgrad(sigma^(2 beta)) * nll

    beta = 0 is the plain Gaussian NLL, beta = 1 gives mu the gradient of the MSE; 0.5 is the
    paper's recommended compromise.
    """

    def __init__(self, beta: float = 0.5):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        self.beta = float(beta)

    def per_row(self, mu: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = torch.exp(2.0 * self.beta * log_sigma).detach()
        return weight * super().per_row(mu, log_sigma, y)


class TwoTargetLoss(nn.Module):
    """Weighted sum of one likelihood per target over raw outputs [B, 4] and labels [B, 2]:

        loss = w_ret * L(ret_mu, ret_log_sigma; y_ret) + w_vol * L(lrv_mu, lrv_log_sigma; y_lrv)

    where L is BetaNLL(beta) (beta = 0: plain Gaussian NLL). ``forward`` returns the total and
    the two parts (detached tensors, so logging does not force a device sync) for logging.
    """

    def __init__(self, beta: float = 0.5, w_ret: float = 1.0, w_vol: float = 1.0):
        super().__init__()
        self.nll = BetaNLL(beta) if beta > 0 else GaussianNLL()
        self.w_ret, self.w_vol = float(w_ret), float(w_vol)

    def forward(self, out: torch.Tensor, y: torch.Tensor, counts: torch.Tensor | None = None,
                world: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``counts`` [2]: labelled rows per target in the global batch of which ``y`` is this rank's
        share (one of ``world`` ranks); None = ``y`` is the whole batch."""
        out, y = out.float(), y.float()  # the likelihood in fp32 even under autocast
        d = None if counts is None else counts.to(out.device, torch.float32).clamp(min=1) / world
        ret = self.nll(out[:, 0], out[:, 1], y[:, 0], None if d is None else d[0])
        vol = self.nll(out[:, 2], out[:, 3], y[:, 1], None if d is None else d[1])
        return self.w_ret * ret + self.w_vol * vol, {"ret": ret.detach(), "vol": vol.detach()}

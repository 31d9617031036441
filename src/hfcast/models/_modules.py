"""Building blocks shared by the architectures (attention blocks, causal convolutions, output heads).

Everything here is plain tensor ops with shapes fixed by the config, so every model exports to
ONNX with a dynamic batch axis: no data-dependent Python branches inside ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: log-sigma outputs are soft-clamped to (-LOG_SIGMA_MAX, LOG_SIGMA_MAX) in scaled units, which
#: keeps exp() finite under fp16 autocast and stops a head from "explaining away" every residual
LOG_SIGMA_MAX = 5.0


def soft_clamp(x: torch.Tensor, limit: float = LOG_SIGMA_MAX) -> torch.Tensor:
    """Smooth clamp to (-limit, limit): identity near 0, gradients never vanish abruptly."""
    return limit * torch.tanh(x / limit)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the window's minutes (all of them are past data: no mask)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        # explanations only (hfcast.explain): when True, forward also stores the attention weights
        # [B, H, T, T] in ``last_attention`` through an explicit softmax; off, the fused kernel runs
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # [B, T, 3D] -> 3 x [B, T, D]
        # [B, T, D] -> [B, H, T, D/H]
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if self.keep_attention:
            att = torch.softmax(q @ k.transpose(-2, -1) / (D // self.n_heads) ** 0.5, dim=-1)  # [B, H, T, T]
            self.last_attention = att.detach()
            y = att @ v  # [B, H, T, D/H] (eval only: no attention dropout on this path)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # [B, H, T, D/H] -> [B, T, D]
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, mult * d_model)
        self.proj = nn.Linear(mult * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class TransformerBlock(nn.Module):
    """Pre-norm residual block (as in nanoGPT): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_mult: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


class TransformerEncoder(nn.Module):
    """Learned positions + a stack of blocks + final LayerNorm over a [B, T, D] sequence."""

    def __init__(self, seq_len: int, d_model: int, n_layers: int, n_heads: int, mlp_mult: int, dropout: float):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, mlp_mult, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x + self.pos)  # [B, T, D] (T must equal seq_len)
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


def summarize(h: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, 2D]: the current minute's state next to the window average."""
    return torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)


class CausalConv1d(nn.Module):
    """Conv1d whose output at time t sees inputs <= t only (left padding of (k-1) * dilation)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.pad, 0)))  # [B, C, T] -> [B, C', T]


class TemporalBlock(nn.Module):
    """Two causal dilated convolutions with a residual connection (Bai et al., 2018)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(c_in, c_out, kernel_size, dilation)
        self.conv2 = CausalConv1d(c_out, c_out, kernel_size, dilation)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.conv1(x)))
        h = self.drop(F.gelu(self.conv2(h)))
        return F.gelu(h + self.skip(x))


class TemporalConvNet(nn.Module):
    """Stack of TemporalBlocks with dilations 1, 2, 4, ...: [B, T, F] -> [B, T, C].

    Receptive field = 1 + 2 (k - 1) (2^L - 1) minutes; k=3, L=4 covers 61 >= 30.
    """

    def __init__(self, c_in: int, channels: int, n_levels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.blocks = nn.Sequential(*(TemporalBlock(c_in if i == 0 else channels, channels, kernel_size, 2**i, dropout)
                                      for i in range(n_levels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)  # [B, T, F] -> [B, F, T] -> [B, T, C]


class GaussianHead(nn.Module):
    """A small MLP from a summary vector to k outputs (a mean or a log-sigma per target)."""

    def __init__(self, d_in: int, d_hidden: int, k: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, k))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ThreeHeads(nn.Module):
    """The return, volatility and confidence heads over one summary: [B, d_in] -> [B, 4].

    The confidence head gives both log-sigmas, so "how sure" reads the same representation as "what".
    """

    def __init__(self, d_in: int, d_hidden: int, dropout: float):
        super().__init__()
        self.return_head = GaussianHead(d_in, d_hidden, 1, dropout)
        self.vol_head = GaussianHead(d_in, d_hidden, 1, dropout)
        self.confidence_head = GaussianHead(d_in, d_hidden, 2, dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ls = self.confidence_head(z)  # [B, 2] = (ret_log_sigma, lrv_log_sigma)
        return assemble(self.return_head(z), ls[:, 0:1], self.vol_head(z), ls[:, 1:2])  # [B, 4]


class JointHead(nn.Module):
    """All four raw outputs from one MLP: [B, d_in] -> [B, 4] (ret_mu, ret_ls, lrv_mu, lrv_ls)."""

    def __init__(self, d_in: int, d_hidden: int, dropout: float):
        super().__init__()
        self.net = GaussianHead(d_in, d_hidden, 4, dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        o = self.net(z)
        return assemble(o[:, 0:1], o[:, 1:2], o[:, 2:3], o[:, 3:4])


def assemble(ret_mu: torch.Tensor, ret_ls: torch.Tensor, lrv_mu: torch.Tensor, lrv_ls: torch.Tensor) -> torch.Tensor:
    """4 x [B, 1] -> [B, 4] in RAW_OUTPUTS order, log-sigmas soft-clamped."""
    return torch.cat([ret_mu, soft_clamp(ret_ls), lrv_mu, soft_clamp(lrv_ls)], dim=-1)

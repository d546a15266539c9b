"""Small building blocks shared by the modules: masked pooling over segments and residual MLPs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B,S,C) over the real segments of mask (B,S); a row without any real segment gives zeros."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x (B,S,C) over the real segments (padding never wins); a row without any real segment gives zeros."""
    peak = x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)
    return torch.where(mask.any(1, keepdim=True), peak, torch.zeros_like(peak))


def mean_max_pool(x: Tensor, mask: Tensor) -> Tensor:
    """(B,S,C) -> (B,2C): the masked mean and max, so a module sees both the gist and the strongest segment."""
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)


class AttentionPool(nn.Module):
    """Learned softmax weights over the real segments: (B,S,C) -> (B,C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # No bias: softmax ignores a shift shared by all segments, so a bias could never receive a gradient.
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = self.score(x).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return (scores.softmax(-1).unsqueeze(-1) * x).sum(1)


class ResidualMLP(nn.Module):
    """Linear(in->width), `blocks` pre-LN residual blocks of width x width, LayerNorm, Linear(width->out).

    `width` is the one free size the budget solver turns; depth is fixed per module type.
    """

    def __init__(self, in_dim: int, width: int, out_dim: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(self.norm(h))

"""The phase networks: phase-0 emotion calibrator, phase-1 empathy learner, phase-2 community network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from redheart.model.parts import AttentionPool, ResidualMLP, mean_max_pool


class Phase0Calibrator(nn.Module):
    """Emotion logits: masked mean+max pooling, a one-block residual MLP, divided by a learned temperature."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.mlp = ResidualMLP(2 * input_dim, width, out_dim, blocks=1, dropout=dropout)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.mlp(mean_max_pool(x, mask)) / self.log_temperature.exp()


class Phase1Empathy(nn.Module):
    """A small learner: attention-pooled x through a one-hidden-layer MLP to emotion logits."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.attend = AttentionPool(input_dim)
        self.mlp = nn.Sequential(nn.Linear(input_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, out_dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.mlp(self.attend(x, mask))


class Phase2Community(nn.Module):
    """Community verdict logits from masked mean+max pooling through a two-block residual MLP."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.mlp = ResidualMLP(2 * input_dim, width, out_dim, blocks=2, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.mlp(mean_max_pool(x, mask))

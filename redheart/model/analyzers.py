"""Group B (neural analyzers) and the four advanced analyzers. Each reads the segment vectors x itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from redheart.model.parts import AttentionPool, ResidualMLP, mean_max_pool


class NeuralAnalyzer(nn.Module):
    """Group B: attention pooling + masked mean and max of x, then a residual MLP (four blocks)."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.attend = AttentionPool(input_dim)
        self.mlp = ResidualMLP(3 * input_dim, width, out_dim, blocks=4, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        pooled = torch.cat([self.attend(x, mask), mean_max_pool(x, mask)], dim=-1)
        return self.mlp(pooled)


class RecurrentAnalyzer(nn.Module):
    """Advanced emotion: a bidirectional GRU over the real segments (packed, so padding is never read)."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, width, batch_first=True, bidirectional=True)
        self.out = nn.Sequential(
            nn.LayerNorm(4 * width),
            nn.Linear(4 * width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, out_dim),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp_min(1).cpu()
        # CUDA autocast runs cuDNN RNNs in float16 whatever dtype it was asked for, and only fp16 autocast turns the
        # gradient scaler on: under bf16 autocast the GRU's gradients would be unscaled fp16 and could underflow.
        # So the GRU runs in fp32 with autocast off, on fp32 input, under every precision.
        with torch.autocast(x.device.type, enabled=False):
            packed = pack_padded_sequence(x.float(), lengths, batch_first=True, enforce_sorted=False)
            states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.out(mean_max_pool(states, mask))


class ConvAnalyzer(nn.Module):
    """Advanced regret: two 1-D convolutions (kernel 3) along the segment axis, then masked mean and max."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(input_dim, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, out_dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # Zero the padding before each convolution so a real segment's window never reads padding values.
        keep = mask.unsqueeze(1).to(x.dtype)
        h = self.dropout(self.act(self.conv1(x.transpose(1, 2) * keep)))
        h = self.dropout(self.act(self.conv2(h * keep)))
        return self.out(mean_max_pool(h.transpose(1, 2), mask))


class GatedAnalyzer(nn.Module):
    """Advanced bentham / SURD: a gated (GLU) MLP on each segment, a residual gated block, masked mean and max."""

    def __init__(self, input_dim: int, width: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(input_dim, 2 * width), nn.GLU(), nn.Dropout(dropout))
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GLU(), nn.Dropout(dropout))
        self.out = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, out_dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.block(h)
        return self.out(mean_max_pool(h, mask))

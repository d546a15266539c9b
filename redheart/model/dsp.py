"""Group C's emotion DSP simulator: the segment sequence read as a multichannel signal, seen through its spectrum."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def fft_length(max_segments: int) -> int:
    """The fixed transform length: a power of two, at least twice the segments (zero padding), at least 8."""
    n = 8
    while n < 2 * max_segments:
        n *= 2
    return n


class EmotionDSP(nn.Module):
    """Project D->C channels per segment, real FFT along the segments, log-magnitude and phase -> MLP -> logits.

    The free width is C; the MLP's hidden size is 2C.
    """

    def __init__(self, input_dim: int, max_segments: int, channels: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_fft = fft_length(max_segments)
        features = 3 * channels * (self.n_fft // 2 + 1)
        self.project = nn.Linear(input_dim, channels)
        self.mlp = nn.Sequential(
            nn.LayerNorm(features),
            nn.Linear(features, 2 * channels),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels, out_dim),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        signal = self.project(x) * mask.unsqueeze(-1).to(x.dtype)
        spectrum = torch.fft.rfft(signal.float(), n=self.n_fft, dim=1)
        # |X| with an epsilon so the gradient is finite at a zero bin; phase as (cos, sin), never a raw angle.
        magnitude = (spectrum.real.square() + spectrum.imag.square() + 1e-8).sqrt()
        features = torch.cat([magnitude.log1p(), spectrum.real / magnitude, spectrum.imag / magnitude], dim=-1)
        return self.mlp(features.flatten(1).to(x.dtype))

"""Exponential moving average of the weights, the library way (torch.optim.swa_utils)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An EMA copy updated by `ema.update_parameters(model)` after every optimizer step; None when decay is 0."""
    if decay <= 0:
        return None
    # use_buffers: buffers are averaged too, so the EMA model is complete on its own.
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

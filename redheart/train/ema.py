"""Exponential moving average of the weights, the library way (torch.optim.swa_utils)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float, device: torch.device | None = None) -> AveragedModel | None:
    """An EMA copy updated by `ema.update_parameters(model)` after every optimizer step; None when decay is 0.

    `device` keeps the copy elsewhere than the model (host memory, to spare the GPU): build it while the
    model is still on the host, or the copy is first made on the device.
    """
    if decay <= 0:
        return None
    # use_buffers: buffers are averaged too, so the EMA model is complete on its own.
    return AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

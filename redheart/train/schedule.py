"""Linear warm-up, then cosine annealing with warm restarts, counted in optimizer steps.

Built from torch's own schedulers so `state_dict()` / `load_state_dict()` resume it exactly. The
cosine starts after the warm-up: restarts fall at step W + T_0, W + T_0 + T_0 * T_mult, ...
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR, LRScheduler, SequentialLR

from redheart.config import TrainConfig


def steps_per_epoch(num_samples: int, micro_batch: int, accumulation: int) -> int:
    """Optimizer steps in one epoch: the last, possibly short, accumulation window still steps."""
    return math.ceil(math.ceil(num_samples / micro_batch) / accumulation)


def warmup_steps(config: TrainConfig, per_epoch: int) -> int:
    return round(config.warmup_epochs * per_epoch)


def restart_steps(config: TrainConfig, per_epoch: int, total_steps: int) -> list[int]:
    """Optimizer steps (0-based) at which the rate jumps back to its peak after warm-up."""
    steps, start, period = [], warmup_steps(config, per_epoch), config.restart_epochs * per_epoch
    while start + period < total_steps:
        start += period
        steps.append(start)
        period *= config.restart_mult
    return steps


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, per_epoch: int) -> LRScheduler:
    cosine = CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, config.restart_epochs * per_epoch), T_mult=config.restart_mult, eta_min=config.min_lr
    )
    warm = warmup_steps(config, per_epoch)
    if warm == 0:
        return cosine
    # start_factor 1/(W+1): the first step is already above zero and the ramp reaches the peak at step W.
    ramp = LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return SequentialLR(optimizer, schedulers=[ramp, cosine], milestones=[warm])

"""The trainer of a training run: memory strategy, precision, EMA, placement, FSDP sharding, optimizer, schedule.

The order matters: the EMA copy is made while the model is still on the host (a host-side EMA never
touches the device), and FSDP shards the model and its EMA copy before the optimizer is built on the
sharded parameters.
"""

from __future__ import annotations

import torch

from redheart.config import RunConfig
from redheart.core.faults import Faults
from redheart.model.model import RedHeartModel
from redheart.train.ema import build_ema
from redheart.train.memory.plan import fsdp_accumulates_unsharded, resolve_strategy
from redheart.train.memory.strategy import MemoryStrategy
from redheart.train.optim import build_optimizer
from redheart.train.parallel.data_parallel import DataParallelTrainer
from redheart.train.parallel.distributed import Distributed
from redheart.train.parallel.fsdp import shard, uses_fsdp
from redheart.train.precision import choose_precision
from redheart.train.schedule import build_scheduler, steps_per_epoch
from redheart.train.swap.trainer import GroupSwapTrainer
from redheart.train.trainer import Trainer


def build_trainer(
    model: RedHeartModel, config: RunConfig, lr: float, train_samples: int, distributed: Distributed, faults: Faults
) -> tuple[Trainer, MemoryStrategy]:
    """The trainer of `model` (built on the host) for this process of `distributed`, and its memory strategy."""
    tc, device = config.train, distributed.device
    sharded = uses_fsdp(config, distributed.world_size)
    memory = resolve_strategy(model, config, device, sharded)
    if memory.group_swap and distributed.world_size > 1:
        raise ValueError(
            f"memory strategy {memory.name!r} trains in one process only; with torchrun set train.memory to "
            "'standard' or 'saving', or train in one process"
        )
    precision = choose_precision(
        device, tc.amp, memory.bf16 is True, cache_weight_casts=not memory.activation_checkpointing
    )
    model.activation_checkpointing = memory.activation_checkpointing
    ema = build_ema(model, tc.ema_decay, torch.device("cpu") if memory.ema_on_host else device, tc.ema_every)
    # Planned on the host model, before it moves: whether a window's unsharded gradients fit beside the shards.
    accumulate_unsharded = sharded and fsdp_accumulates_unsharded(model, config, device, distributed.world_size)
    if not memory.group_swap:  # the swap trainer moves one group at a time itself
        model.to(device)
    if sharded:
        shard(model, ema, precision, distributed.world_size)
    optimizer = build_optimizer(model, lr, tc, memory.optimizer)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch(train_samples, tc.micro_batch, tc.accumulation))
    parts = (model, optimizer, scheduler, ema, precision, tc, faults)
    if distributed.world_size > 1:
        trainer = DataParallelTrainer(*parts, distributed=distributed)
        trainer.accumulate_unsharded = accumulate_unsharded
        return trainer, memory
    return (GroupSwapTrainer if memory.group_swap else Trainer)(*parts), memory

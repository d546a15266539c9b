"""One epoch trained by several processes: every accumulation window's micro-batches dealt among the ranks.

A window stays micro_batch x accumulation samples of the epoch order, cut into the same micro-batches
as in one process; rank r runs micro-batches r, r + N, r + 2N, ... of it, each weighted by its share of
the window (Trainer.micro_step). The gradients are then summed over the ranks (distributed.py), so
every rank holds the gradient of the window's mean and takes the step one process would take. The
window's loss sums are summed the same way, so every rank holds the tally of the whole job. Keeping
one process's micro-batches matters: a task loss is a mean over the rows of a micro-batch where its
target is present, not a sum over samples, so another cut would change the numbers. What differs from
one process is the order of the floating-point additions, and dropout (below). The cost: at most
`accumulation` ranks have work in a window, so N processes want an accumulation of at least N (the
same effective batch with a smaller micro-batch); a warning says when some would idle.

A rank with no micro-batch in a window (a short last window) still joins its collectives. Dropout:
each rank seeds its generator per window from (seed, epoch, window start, rank), so the ranks draw
different masks and a resumed run draws the masks of an uninterrupted run with the same rank count;
with dropout, runs with other rank counts differ. Out of memory on any rank: all ranks learn it from
one flag, drop the window's gradients, shrink the plan alike and redo the window from its start.

Under FSDP (sharding.py) every forward and backward is a collective: a rank with fewer micro-batches in
a window runs weight-0 repeats so that all run as many, FSDP sums the sharded gradients itself, and out
of memory ends the job, as the other ranks are waiting inside a collective that will not complete.

`after_window(samples_done, tally, micro_steps)` runs on every rank after each optimizer step: the one
moment the state is the same on all ranks with no partial gradients, so the one moment to save it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

from redheart.data.dataset import SplitTensors, epoch_order
from redheart.train.parallel.distributed import Distributed
from redheart.train.trainer import EpochTally, Trainer
from redheart.train.parallel.fsdp import is_sharded


def run_shared_epoch(
    trainer: Trainer,
    distributed: Distributed,
    split: SplitTensors,
    epoch: int,
    seed: int,
    start_sample: int = 0,
    tally: EpochTally | None = None,
    after_window: Callable[[int, EpochTally, int], None] | None = None,
) -> EpochTally:
    """Trainer.run_epoch for this rank of `distributed`, from sample `start_sample` of the epoch order.

    A start inside a window (a state saved by one process) continues it: the gradients of its first
    samples are in rank 0's parameters (the other ranks must hold none) and the rest is dealt out.
    """
    tally = tally or EpochTally()
    order = epoch_order(len(split), seed, epoch)
    size = trainer.plan.window
    if distributed.is_main and trainer.plan.accumulation < distributed.world_size:
        warnings.warn(
            f"a window has {trainer.plan.accumulation} micro-batch(es) for {distributed.world_size} processes, so "
            f"some processes idle; keep the effective batch with a smaller train.micro_batch and a train.accumulation "
            f"of at least {distributed.world_size}", stacklevel=2)
    for window_start in range(start_sample - start_sample % size, len(split), size):
        done = max(0, start_sample - window_start)
        window = order[window_start : window_start + size]
        if done == len(window):  # a state saved after the epoch's last window, before the epoch's record
            continue
        torch.manual_seed(window_seed(seed, epoch, window_start, distributed.rank))
        tally, micro_steps = _run_shared_window(trainer, distributed, split, epoch, window, window_start, done, tally)
        if after_window is not None:
            after_window(window_start + len(window), tally, micro_steps)
    return tally


def window_seed(seed: int, epoch: int, window_start: int, rank: int) -> int:
    mixed = seed
    for part in (epoch, window_start, rank):
        mixed = (mixed * 1_000_003 + part) % 2**63
    return mixed


def _run_shared_window(
    trainer: Trainer,
    distributed: Distributed,
    split: SplitTensors,
    epoch: int,
    window: torch.Tensor,
    window_start: int,
    done: int,
    tally: EpochTally,
) -> tuple[EpochTally, int]:
    """This rank's micro-batches of one window, the gradient sum and the optimizer step; returns the
    tally and the number of micro-steps of the window over all ranks."""
    trainer.begin_window(tally, done)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    sharded = is_sharded(trainer.model)
    while True:
        pieces = torch.split(window[done:], trainer.plan.micro_batch)
        local, failure = EpochTally(), None
        for index, share in _micro_steps(pieces, len(window), distributed, sharded):
            try:
                parts = trainer.micro_step(split.batch(index, trainer.precision.device), share)
            except torch.OutOfMemoryError as error:
                if sharded:  # the other ranks wait inside this micro-step's collectives; torchrun ends the job
                    raise
                # Only the message is kept: the traceback holds the failed step's activations.
                failure = str(error) or "torch.OutOfMemoryError"
                break
            if share:
                local.add(parts, len(index))
        # One collective says whether any rank failed and which parameters have a gradient on any rank.
        flags = distributed.max_ints([failure is not None, *(p.grad is not None for p in params)])
        if not flags[0]:
            break
        failure = failure or "out of memory on another rank"
        tally, done = trainer.redo_window(failure, {"epoch": epoch, "sample": window_start}), 0
    # A parameter without a gradient anywhere stays without one, as in one process (AdamW skips it).
    for param, has_grad in zip(params, flags[1:]):
        if has_grad and param.grad is None:
            param.grad = torch.zeros_like(param)
    # FSDP sums the gradients of the parameters it shards itself (sharding.py); the rest are summed here.
    distributed.sum_in_place([p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)])
    tally.grad_norms.append(trainer.optimizer_step(last_of_epoch=window_start + len(window) == len(split)))
    _add_window(tally, local, len(window) - done, distributed)
    return tally, len(pieces)


def _micro_steps(
    pieces: tuple[torch.Tensor, ...], window_size: int, distributed: Distributed, sharded: bool
) -> list[tuple[torch.Tensor, float]]:
    """This rank's micro-batches of the window and their shares of it. Sharded, a rank with fewer than the
    busiest repeats the window's first micro-batch with share 0 (no gradient, no tally), since every
    forward and backward of an FSDP model is a collective of all ranks."""
    steps = [(index, len(index) / window_size) for index in pieces[distributed.rank :: distributed.world_size]]
    if sharded:
        busiest = -(-len(pieces) // distributed.world_size)
        steps += [(pieces[0], 0.0)] * (busiest - len(steps))
    return steps


def _add_window(tally: EpochTally, local: EpochTally, samples: int, distributed: Distributed) -> None:
    """Add every rank's loss sums of the window to `tally`, identically on every rank."""
    # The loss names are the same in every window; they are exchanged only while the tally has none.
    names = sorted(tally.loss_sums) or distributed.union(list(local.loss_sums))
    sums = distributed.sum_values([local.loss_sums.get(name, 0.0) for name in names])
    tally.samples += samples
    for name, total in zip(names, sums):
        tally.loss_sums[name] = tally.loss_sums.get(name, 0.0) + total

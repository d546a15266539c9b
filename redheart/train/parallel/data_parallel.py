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

Under FSDP (fsdp.py) every forward and backward is a collective: a rank with fewer micro-batches in
a window runs weight-0 repeats so that all run as many, FSDP sums the sharded gradients itself, and out
of memory ends the job, as the other ranks are waiting inside a collective that will not complete.

The callback of `run_epoch` runs on every rank after each optimizer step only: the one moment the state
is the same on all ranks with no partial gradients, so the one moment to save it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from redheart.data.dataset import SplitTensors
from redheart.train.parallel.distributed import Distributed
from redheart.train.parallel.fsdp import is_sharded, sync_gradients
from redheart.train.trainer import EpochTally, StepCallback, Trainer


class DataParallelTrainer(Trainer):
    """A Trainer for one rank of `distributed`: each window's micro-batches dealt among the ranks, the
    gradients and the window's losses summed over them, and the window's end the only report point.

    A start inside a window (a state saved by one process) continues it: the gradients of its first
    samples are in rank 0's parameters (the other ranks must hold none) and the rest is dealt out.
    """

    def __init__(self, *args: Any, distributed: Distributed, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distributed = distributed
        self.sharded = is_sharded(self.model)
        # Under FSDP the other ranks wait inside the failed micro-step's collectives; torchrun ends the job.
        self.can_redo_window = not self.sharded
        self.window_losses = EpochTally()  # this rank's loss sums of the current window
        self.has_grad: list[int] = []  # per parameter: whether any rank has a gradient for it
        # Sharded: the window's micro-steps but the last accumulate unsharded gradients (one reduce-scatter per
        # window); False where the memory plan says the unsharded gradients do not fit (build_trainer).
        self.accumulate_unsharded = True

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def start_epoch(self) -> None:
        world = self.distributed.world_size
        if self.distributed.is_main and self.plan.accumulation < world:
            warnings.warn(
                f"a window has {self.plan.accumulation} micro-batch(es) for {world} processes, so some processes "
                f"idle; keep the effective batch with a smaller train.micro_batch and a train.accumulation of at "
                f"least {world}",
                stacklevel=3,
            )

    def start_window(self, seed: int, epoch: int, window_start: int) -> None:
        torch.manual_seed(window_seed(seed, epoch, window_start, self.distributed.rank))

    def accumulate(
        self,
        split: SplitTensors,
        window: torch.Tensor,
        window_start: int,
        done: int,
        tally: EpochTally,
        after_micro_step: StepCallback | None,
    ) -> tuple[EpochTally, int]:
        """This rank's micro-batches of the window; returns the tally unchanged (the losses are summed over
        the ranks after the step) and the number of micro-steps of the window over all ranks."""
        pieces = torch.split(window[done:], self.plan.micro_batch)
        self.window_losses = EpochTally()
        steps = _micro_steps(pieces, len(window), self.distributed, self.sharded)
        try:
            for number, (index, share) in enumerate(steps):
                # Sharded: the gradients are reduce-scattered by the last backward of the window only.
                sync_gradients(self.model, number == len(steps) - 1 or not self.accumulate_unsharded)
                batch = split.batch(index, self.precision.device)
                parts = self.micro_step(batch, share, split.verdict_only(index))
                if share:
                    self.window_losses.add(parts, len(index))
        finally:
            sync_gradients(self.model, True)  # evaluation and a state's gradients see the default again
        return tally, len(pieces)

    def agree_on_failure(self, failure: str | None) -> str | None:
        """One collective says whether any rank failed and which parameters have a gradient on any rank."""
        flags = self.distributed.max_ints([failure is not None, *(p.grad is not None for p in self.params())])
        self.has_grad = flags[1:]
        if not flags[0]:
            return None
        return failure or "out of memory on another rank"

    def join_gradients(self) -> None:
        params = self.params()
        # A parameter without a gradient anywhere stays without one, as in one process (AdamW skips it).
        for param, has_grad in zip(params, self.has_grad):
            if has_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        # FSDP sums the gradients of the parameters it shards itself (fsdp.py); the rest are summed here.
        self.distributed.sum_in_place([p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)])

    def join_tally(self, tally: EpochTally, samples: int) -> EpochTally:
        _add_window(tally, self.window_losses, samples, self.distributed)
        return tally


def window_seed(seed: int, epoch: int, window_start: int, rank: int) -> int:
    mixed = seed
    for part in (epoch, window_start, rank):
        mixed = (mixed * 1_000_003 + part) % 2**63
    return mixed


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
    # A window of verdict-only records has fewer loss names than the others, so the names are exchanged every
    # window; with them go the samples behind each sum, which its mean divides by.
    names = distributed.union(sorted(set(tally.loss_sums) | set(local.loss_sums)))
    sums = distributed.sum_values([local.loss_sums.get(name, 0.0) for name in names])
    counts = distributed.sum_values([float(local.loss_samples.get(name, 0)) for name in names])
    tally.samples += samples
    for name, total, count in zip(names, sums, counts):
        tally.loss_sums[name] = tally.loss_sums.get(name, 0.0) + total
        tally.loss_samples[name] = tally.loss_samples.get(name, 0) + round(float(count))

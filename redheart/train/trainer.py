"""The training step: micro-batches with gradient accumulation, R-Drop, AMP, clipping, AdamW, EMA.

Each feature is on by default and switched off by its config value (rdrop_alpha 0, clip_norm 0,
ema_decay 0, amp False, accumulation 1, label_smoothing 0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel
from torch.utils.checkpoint import checkpoint

from redheart.config import TrainConfig
from redheart.data.dataset import SplitTensors, epoch_order
from redheart.model.losses import Outputs, split_halves
from redheart.core.faults import NO_FAULTS, Faults
from redheart.train.oom import BatchPlan, release_memory
from redheart.train.precision import Precision

Batch = dict[str, torch.Tensor]


def forward_losses(
    model: nn.Module, batch: Batch, config: TrainConfig, memory_saving: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar to minimise and its parts (task loss per module, plus "consistency" under R-Drop).

    `memory_saving` recomputes activations in the backward pass (activation checkpointing) and runs
    the two R-Drop passes one after the other, so the peak holds one pass of one micro-batch.
    """
    x, mask = batch["x"], batch["mask"]
    forward = (lambda *args: checkpoint(model, *args, use_reentrant=False)) if memory_saving else model
    if config.rdrop_alpha <= 0:
        parts = model.losses(forward(x, mask), batch, config.label_smoothing)
        return sum(parts.values()), parts
    if memory_saving:
        out_a, out_b = forward(x, mask), forward(x, mask)
    else:
        # One forward over [x; x]: dropout draws independent masks per row, so the halves are the two passes.
        out_a, out_b = split_halves(model(torch.cat([x, x]), torch.cat([mask, mask])))
    return rdrop_losses(model, out_a, out_b, batch, config)


def rdrop_losses(
    model: nn.Module, out_a: Outputs, out_b: Outputs, batch: Batch, config: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """R-Drop's objective from the two passes: the mean task loss per module plus alpha times their consistency."""
    losses_a = model.losses(out_a, batch, config.label_smoothing)
    losses_b = model.losses(out_b, batch, config.label_smoothing)
    parts = {name: (losses_a[name] + losses_b[name]) / 2 for name in losses_a}
    consistency = sum(model.consistency(out_a, out_b).values())
    total = sum(parts.values()) + config.rdrop_alpha * consistency
    return total, {**parts, "consistency": consistency.detach()}


@dataclass
class EpochTally:
    """Running sums of one epoch, so a resumed epoch reports the same means as an uninterrupted one."""

    samples: int = 0
    # Sums stay tensors on the device until read: a float() per micro-step would stall the GPU queue.
    loss_sums: dict[str, torch.Tensor | float] = field(default_factory=dict)
    grad_norms: list[torch.Tensor | float] = field(default_factory=list)

    def add(self, parts: dict[str, torch.Tensor], size: int) -> None:
        self.samples += size
        for name, value in parts.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value.float() * size

    def means(self) -> dict[str, float]:
        return {name: float(total) / max(1, self.samples) for name, total in self.loss_sums.items()}

    def grad_norm_stats(self) -> dict[str, float | int | None]:
        """Mean, std (population), min and max of the pre-clipping gradient norm over the optimizer steps."""
        if not self.grad_norms:
            return {"steps": 0, "mean": None, "std": None, "min": None, "max": None}
        norms = torch.stack([torch.as_tensor(n, dtype=torch.float64).cpu() for n in self.grad_norms])
        return {
            "steps": len(norms), "mean": float(norms.mean()), "std": float(norms.std(correction=0)),
            "min": float(norms.min()), "max": float(norms.max()),
        }

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "loss_sums": {name: float(total) for name, total in self.loss_sums.items()},
            "grad_norms": [float(n) for n in self.grad_norms],
        }

    def copy(self) -> "EpochTally":
        return copy.deepcopy(self)

    @classmethod
    def from_json(cls, data: dict) -> "EpochTally":
        return cls(samples=data["samples"], loss_sums=dict(data["loss_sums"]), grad_norms=list(data["grad_norms"]))


class Trainer:
    """Owns the model and everything that updates it; `run_epoch` walks one epoch from any micro-step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: AveragedModel | None,
        precision: Precision,
        config: TrainConfig,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.precision, self.config, self.faults = precision, config, faults
        self.scaler = precision.scaler()
        # Called with the model right before the epoch's last zero_grad (telemetry's gradient statistics).
        self.grad_probe: Callable[[nn.Module], None] | None = None
        self.plan = BatchPlan(window=config.micro_batch * config.accumulation, micro_batch=config.micro_batch)
        # The tally as the current window began: restored when an out-of-memory error redoes the window.
        self.window_tally: EpochTally | None = None

    def micro_step(self, batch: Batch, share: float) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch whose samples are `share` of its accumulation window.

        Task losses are means over the micro-batch, so scaling by the sample share makes the summed
        gradient that of the whole window's mean, also for a short last window.
        """
        self.model.train()
        size = len(batch["x"])
        self.faults.at_step("forward", size)
        with self.precision.autocast():
            total, parts = forward_losses(self.model, batch, self.config, self.plan.memory_saving)
        self.faults.at_step("backward", size)
        self.scaler.scale(total * share).backward()
        return {**{k: v.detach() for k, v in parts.items()}, "total": total.detach()}

    def optimizer_step(self, last_of_epoch: bool = False) -> torch.Tensor:
        """Clip, step the optimizer, the schedule and the EMA; returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.config.clip_norm if self.config.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(norm, DTensor):  # FSDP: the norm over every rank's shards
            norm = norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if last_of_epoch and self.grad_probe is not None:
            self.grad_probe(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return norm.detach()

    def begin_window(self, tally: EpochTally, done: int) -> None:
        """Keep the tally as the window began (the saved one, when resuming inside the window), for a redo."""
        if done == 0 or self.window_tally is None:
            self.window_tally = tally.copy()

    def redo_window(self, failure: str, where: dict[str, int]) -> EpochTally:
        """After out-of-memory: the window's gradients go with the failed step's tensors, and the whole
        window is redone smaller from its start, so no sample is skipped or counted twice. Returns the
        tally to redo it from."""
        self.discard_window()
        release_memory(self.precision.device)
        self.plan.shrink(failure, where)
        return self.window_tally.copy()

    def discard_window(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def run_epoch(
        self,
        split: SplitTensors,
        epoch: int,
        seed: int,
        start_sample: int = 0,
        tally: EpochTally | None = None,
        after_micro_step: Callable[[int, EpochTally], None] | None = None,
    ) -> EpochTally:
        """Train on epoch `epoch` from sample `start_sample` of its order; the order depends on (seed, epoch) only.

        `after_micro_step(samples_done, tally)` runs after every micro-step; state saved there resumes exactly.
        """
        tally = tally or EpochTally()
        order = epoch_order(len(split), seed, epoch)
        size = self.plan.window
        for window_start in range(start_sample - start_sample % size, len(split), size):
            done = max(0, start_sample - window_start)  # samples already in the gradients (a resumed window)
            window = order[window_start : window_start + size]
            tally = self._run_window(split, epoch, window, window_start, done, tally, after_micro_step)
        return tally

    def _run_window(
        self,
        split: SplitTensors,
        epoch: int,
        window: torch.Tensor,
        window_start: int,
        done: int,
        tally: EpochTally,
        after_micro_step: Callable[[int, EpochTally], None] | None,
    ) -> EpochTally:
        """One accumulation window and its optimizer step; on out-of-memory, redone smaller from its start."""
        self.begin_window(tally, done)
        offset = done
        while offset < len(window):
            index = window[offset : offset + self.plan.micro_batch]
            failure = None
            try:
                parts = self.micro_step(split.batch(index, self.precision.device), len(index) / len(window))
            except torch.OutOfMemoryError as error:
                # Only the message is kept: the traceback holds the failed step's activations.
                failure = str(error) or "torch.OutOfMemoryError"
            if failure is not None:
                tally, offset = self.redo_window(failure, {"epoch": epoch, "sample": window_start}), 0
                continue
            tally.add(parts, len(index))
            offset += len(index)
            if offset == len(window):
                tally.grad_norms.append(self.optimizer_step(last_of_epoch=window_start + offset == len(split)))
            if after_micro_step is not None:
                after_micro_step(window_start + offset, tally)
        return tally

"""The training step: micro-batches with gradient accumulation, R-Drop, AMP, clipping, AdamW, EMA.

Each feature is on by default and switched off by its config value (rdrop_alpha 0, clip_norm 0,
ema_decay 0, amp False, accumulation 1, label_smoothing 0).

Trainer.run_epoch and Trainer.run_window are the one epoch loop and the one accumulation-window loop of
every trainer: the swap trainer (swap/trainer.py) and the data-parallel one (parallel/data_parallel.py)
override only the hooks below run_window (how a window is accumulated, how ranks agree and sum).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from redheart.config import TrainConfig
from redheart.core.faults import NO_FAULTS, Faults
from redheart.data.dataset import SplitTensors, training_order, verdict_only_rows
from redheart.model.losses import Outputs, split_halves
from redheart.model.model import RedHeartModel
from redheart.train.ema import EMA
from redheart.train.oom import BatchPlan, release_memory, step_out_of_memory
from redheart.train.precision import Precision

Batch = dict[str, torch.Tensor]
# Called with (samples of the epoch done, the epoch's tally) where a state saved resumes exactly.
StepCallback = Callable[[int, "EpochTally"], None]


def forward_losses(
    model: RedHeartModel,
    batch: Batch,
    config: TrainConfig,
    memory_saving: bool = False,
    verdict_only: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar to minimise and its parts (task loss per module, plus "consistency" under R-Drop).

    `memory_saving` recomputes activations in the backward pass (activation checkpointing) and runs
    the two R-Drop passes one after the other, so the peak holds one pass of one micro-batch.
    `verdict_only`: whether every record of the batch is verdict-only, when the caller knows it without
    reading the device (SplitTensors.verdict_only).
    """
    x, mask = batch["x"], batch["mask"]
    # A batch of verdict-only records (training_order makes most batches one kind) runs the verdict's modules.
    if verdict_only is None:
        verdict_only = bool(verdict_only_rows(batch).all())

    def forward(x: torch.Tensor, mask: torch.Tensor) -> Outputs:
        if memory_saving:
            return cast(Outputs, checkpoint(model, x, mask, verdict_only, use_reentrant=False))
        return model(x, mask, verdict_only)

    if config.rdrop_alpha <= 0:
        parts = model.losses(forward(x, mask), batch, config.label_smoothing)
        return cast(torch.Tensor, sum(parts.values())), parts
    if memory_saving:
        out_a, out_b = forward(x, mask), forward(x, mask)
    else:
        # One forward over [x; x]: dropout draws independent masks per row, so the halves are the two passes.
        out_a, out_b = split_halves(forward(torch.cat([x, x]), torch.cat([mask, mask])))
    return rdrop_losses(model, out_a, out_b, batch, config)


def rdrop_losses(
    model: RedHeartModel, out_a: Outputs, out_b: Outputs, batch: Batch, config: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """R-Drop's objective from the two passes: the mean task loss per module plus alpha times their consistency."""
    losses_a = model.losses(out_a, batch, config.label_smoothing)
    losses_b = model.losses(out_b, batch, config.label_smoothing)
    parts = {name: (losses_a[name] + losses_b[name]) / 2 for name in losses_a}
    consistency = cast(torch.Tensor, sum(model.consistency(out_a, out_b, batch).values()))
    total = cast(torch.Tensor, sum(parts.values())) + config.rdrop_alpha * consistency
    return total, {**parts, "consistency": consistency.detach()}


@dataclass
class EpochTally:
    """Running sums of one epoch, so a resumed epoch reports the same means as an uninterrupted one."""

    samples: int = 0
    # Sums stay tensors on the device until read: a float() per micro-step would stall the GPU queue.
    loss_sums: dict[str, torch.Tensor | float] = field(default_factory=dict)
    grad_norms: list[torch.Tensor | float] = field(default_factory=list)
    # Samples behind each loss sum: a verdict-only batch has no emotion losses, which must not dilute their mean.
    loss_samples: dict[str, int] = field(default_factory=dict)

    def add(self, parts: dict[str, torch.Tensor], size: int) -> None:
        self.samples += size
        for name, value in parts.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value.float() * size
            self.loss_samples[name] = self.loss_samples.get(name, 0) + size

    def means(self) -> dict[str, float]:
        return {
            name: float(total) / max(1, self.loss_samples.get(name, self.samples))
            for name, total in self.loss_sums.items()
        }

    def grad_norm_stats(self) -> dict[str, float | int | None]:
        """Mean, std (population), min and max of the pre-clipping gradient norm over the optimizer steps whose norm
        is finite; `non_finite` counts the others (fp16 steps the GradScaler skipped), so JSON never sees inf or nan."""
        norms = torch.tensor([float(n) for n in self.grad_norms], dtype=torch.float64)  # one read, at the epoch's end
        finite = norms[torch.isfinite(norms)]
        stats: dict[str, float | int | None] = {"steps": len(norms), "non_finite": len(norms) - len(finite)}
        if not len(finite):
            return {**stats, "mean": None, "std": None, "min": None, "max": None}
        return {
            **stats,
            "mean": float(finite.mean()),
            "std": float(finite.std(correction=0)),
            "min": float(finite.min()),
            "max": float(finite.max()),
        }

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "loss_sums": {name: float(total) for name, total in self.loss_sums.items()},
            "grad_norms": [float(n) if math.isfinite(float(n)) else None for n in self.grad_norms],
            "loss_samples": dict(self.loss_samples),
        }

    def copy(self) -> EpochTally:
        return copy.deepcopy(self)

    @classmethod
    def from_json(cls, data: dict) -> EpochTally:
        return cls(
            samples=data["samples"],
            loss_sums=dict(data["loss_sums"]),
            grad_norms=[float("nan") if n is None else n for n in data["grad_norms"]],
            loss_samples=dict(data.get("loss_samples", {})),
        )


class Trainer:
    """Owns the model and everything that updates it; `run_epoch` walks one epoch from any micro-step."""

    def __init__(
        self,
        model: RedHeartModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: EMA | None,
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
        self.micro_steps = 0  # micro-steps run so far, by every process; reported after the fact (run_epoch)

    def micro_step(self, batch: Batch, share: float, verdict_only: bool | None = None) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch whose samples are `share` of its accumulation window.

        Task losses are means over the micro-batch, so scaling by the sample share makes the summed
        gradient that of the whole window's mean, also for a short last window.
        """
        self.model.train()
        size = len(batch["x"])
        self.faults.at_step("forward", size)
        with self.precision.autocast():
            total, parts = forward_losses(self.model, batch, self.config, self.plan.memory_saving, verdict_only)
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

    def discard_window(self) -> None:
        """Drop the gradients of a window that failed (out of memory)."""
        self.optimizer.zero_grad(set_to_none=True)

    def run_epoch(
        self,
        split: SplitTensors,
        epoch: int,
        seed: int,
        start_sample: int = 0,
        tally: EpochTally | None = None,
        after_micro_step: StepCallback | None = None,
    ) -> EpochTally:
        """Train on epoch `epoch` from sample `start_sample` of its order; the order depends on (seed, epoch) only.

        `after_micro_step(samples_done, tally)` runs wherever a state saved there resumes exactly: after every
        micro-step here, at each window's end in the variants whose gradients are whole only then (swap,
        data-parallel). `micro_steps` counts the micro-steps run so far, so a caller can tell how many each
        call covers.
        """
        tally = tally or EpochTally()
        size = self.plan.window
        order = training_order(split, seed, epoch, size)
        self.start_epoch()
        for window_start in range(start_sample - start_sample % size, len(split), size):
            done = max(0, start_sample - window_start)  # samples already in the gradients (a resumed window)
            window = order[window_start : window_start + size]
            if done == len(window):  # a state saved after the epoch's last window, before the epoch's record
                continue
            self.start_window(seed, epoch, window_start)
            tally = self.run_window(split, epoch, window, window_start, done, tally, after_micro_step)
        return tally

    def run_window(
        self,
        split: SplitTensors,
        epoch: int,
        window: torch.Tensor,
        window_start: int,
        done: int,
        tally: EpochTally,
        after_micro_step: StepCallback | None,
    ) -> EpochTally:
        """One accumulation window from its sample `done` on, then its optimizer step: the one window loop of
        every trainer. The variants supply only what differs: how the window's gradients and losses are
        accumulated (`accumulate`), whether another process failed (`agree_on_failure`), what joins the
        gradients before the step (`join_gradients`) and the losses after it (`join_tally`).

        On out-of-memory the window's gradients go with the failed step's tensors, and the whole window is
        redone smaller (BatchPlan.shrink) from its start and from the tally it began with, so no sample is
        skipped or counted twice.
        """
        if done == 0 or self.window_tally is None:  # a resumed window began with the saved tally
            self.window_tally = tally.copy()
        while True:
            failure = None
            try:
                tally, steps = self.accumulate(split, window, window_start, done, tally, after_micro_step)
            except torch.OutOfMemoryError as error:
                if not self.can_redo_window:
                    raise
                # Only the message is kept: the traceback holds the failed step's activations.
                failure = str(error) or "torch.OutOfMemoryError"
            failure = self.agree_on_failure(failure)
            if failure is None:
                break
            self.discard_window()
            release_memory(self.precision.device)
            self.plan.shrink(failure, {"epoch": epoch, "sample": window_start})
            tally, done = self.window_tally.copy(), 0
        self.join_gradients()
        try:
            norm = self.optimizer_step(last_of_epoch=window_start + len(window) == len(split))
        except torch.OutOfMemoryError as error:
            release_memory(self.precision.device)
            raise step_out_of_memory(error, {"epoch": epoch, "sample": window_start}) from None
        tally.grad_norms.append(norm)
        tally = self.join_tally(tally, len(window) - done)
        self.report(after_micro_step, window_start + len(window), tally, steps)
        return tally

    def report(self, after_micro_step: StepCallback | None, samples_done: int, tally: EpochTally, steps: int) -> None:
        """Count `steps` more micro-steps, then hand the state to the caller's callback."""
        self.micro_steps += steps
        if after_micro_step is not None:
            after_micro_step(samples_done, tally)

    # What a variant supplies. The defaults train in one process, micro-step by micro-step.

    can_redo_window = True  # False where an out-of-memory error cannot be recovered from (under FSDP)

    def start_epoch(self) -> None:
        """Before an epoch's first window."""

    def start_window(self, seed: int, epoch: int, window_start: int) -> None:
        """Before a window's first attempt."""

    def accumulate(
        self,
        split: SplitTensors,
        window: torch.Tensor,
        window_start: int,
        done: int,
        tally: EpochTally,
        after_micro_step: StepCallback | None,
    ) -> tuple[EpochTally, int]:
        """Forward and backward of the window's micro-batches from sample `done` on, their losses added to
        `tally`; returns it and the number of micro-steps the window-end report covers. Here every
        micro-step but the last is reported as it ends (a state saved there resumes inside the window)."""
        offset = done
        while True:
            index = window[offset : offset + self.plan.micro_batch]
            batch = split.batch(index, self.precision.device)
            parts = self.micro_step(batch, len(index) / len(window), split.verdict_only(index))
            tally.add(parts, len(index))
            offset += len(index)
            if offset == len(window):
                return tally, 1
            self.report(after_micro_step, window_start + offset, tally, 1)

    def agree_on_failure(self, failure: str | None) -> str | None:
        """The failure message of this window's attempt, None when it succeeded."""
        return failure

    def join_gradients(self) -> None:
        """Between the window's last backward and its optimizer step."""

    def join_tally(self, tally: EpochTally, samples: int) -> EpochTally:
        """After the optimizer step: the tally with the window's `samples` samples in it."""
        return tally

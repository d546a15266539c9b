"""The training step: micro-batches with gradient accumulation, R-Drop, AMP, clipping, AdamW, EMA.

Each feature is on by default and switched off by its config value (rdrop_alpha 0, clip_norm 0,
ema_decay 0, amp False, accumulation 1, label_smoothing 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from redheart.config import TrainConfig
from redheart.data.dataset import SplitTensors, micro_batches
from redheart.model.losses import split_halves
from redheart.train.precision import Precision

Batch = dict[str, torch.Tensor]


def forward_losses(model: nn.Module, batch: Batch, config: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar to minimise and its parts (task loss per module, plus "consistency" under R-Drop)."""
    x, mask = batch["x"], batch["mask"]
    if config.rdrop_alpha <= 0:
        parts = model.losses(model(x, mask), batch, config.label_smoothing)
        return sum(parts.values()), parts
    # One forward over [x; x]: dropout draws independent masks per row, so the halves are the two passes.
    out_a, out_b = split_halves(model(torch.cat([x, x]), torch.cat([mask, mask])))
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

    def grad_norm_stats(self) -> dict[str, float | None]:
        norms = [float(n) for n in self.grad_norms]
        if not norms:
            return {"mean": None, "max": None}
        return {"mean": sum(norms) / len(norms), "max": max(norms)}

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "loss_sums": {name: float(total) for name, total in self.loss_sums.items()},
            "grad_norms": [float(n) for n in self.grad_norms],
        }

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
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.precision, self.config = precision, config
        self.scaler = precision.scaler()

    def micro_step(self, batch: Batch, share: float) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch whose samples are `share` of its accumulation window.

        Task losses are means over the micro-batch, so scaling by the sample share makes the summed
        gradient that of the whole window's mean, also for a short last window.
        """
        self.model.train()
        with self.precision.autocast():
            total, parts = forward_losses(self.model, batch, self.config)
        self.scaler.scale(total * share).backward()
        return {**{k: v.detach() for k, v in parts.items()}, "total": total.detach()}

    def optimizer_step(self) -> torch.Tensor:
        """Clip, step the optimizer, the schedule and the EMA; returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.config.clip_norm if self.config.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return norm.detach()

    def run_epoch(
        self,
        split: SplitTensors,
        epoch: int,
        seed: int,
        start_micro: int = 0,
        tally: EpochTally | None = None,
        after_micro_step: Callable[[int, EpochTally], None] | None = None,
    ) -> EpochTally:
        """Train on epoch `epoch` from micro-batch `start_micro` on; the order depends on (seed, epoch) only."""
        tally = tally or EpochTally()
        batches = micro_batches(len(split), self.config.micro_batch, seed, epoch)
        accumulation = self.config.accumulation
        for micro in range(start_micro, len(batches)):
            window_start = micro - micro % accumulation
            window = batches[window_start : window_start + accumulation]
            share = len(batches[micro]) / sum(len(index) for index in window)
            parts = self.micro_step(split.batch(batches[micro], self.precision.device), share)
            tally.add(parts, len(batches[micro]))
            if micro == window_start + len(window) - 1:
                tally.grad_norms.append(self.optimizer_step())
            if after_micro_step is not None:
                after_micro_step(micro + 1, tally)
        return tally

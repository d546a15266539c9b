"""Group-wise swap training: the fallback when the whole model does not fit on the device even in memory-saving mode.

The weights, gradients, optimizer state and EMA live in host memory; one module group at a time comes to
the device. An accumulation window runs as: the input dropout drawn once per micro-batch (all groups see
the same dropped x, as in the joint forward); then for each group (group C, which fuses the others'
detached predictions, last) forward, loss and backward over every micro-batch of the window, its
gradients sent home; then the global clipping coefficient from all groups' gradient norms; then for each
module an optimizer step on the device for its parameters only (torch's AdamW skips parameters whose
.grad is None, so the one optimizer and its state_dict stay those of the standard trainer). The result
equals the standard Trainer's step up to float summation order (tests/test_group_swap.py).

The device holds one group's weights and gradients plus one micro-batch's activations, or for an update
one module's weights, gradients and Adam moments; the price is two host-device round trips of every
weight per window.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.utils.checkpoint import checkpoint

from redheart.data.dataset import SplitTensors, verdict_only_rows
from redheart.model.losses import Outputs
from redheart.train.swap.cpu_offload import HOST, CpuOffload
from redheart.train.swap.forward import (
    SWAP_ORDER,
    detached,
    dropped_passes,
    group_loss,
    group_outputs,
    runs_on_verdict_only,
)
from redheart.train.trainer import EpochTally, StepCallback, Trainer


class GroupSwapTrainer(Trainer):
    """A Trainer that keeps the model in host memory and trains it one module group at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Trainer's arguments; the model, its gradients and the EMA move to host memory here."""
        super().__init__(*args, **kwargs)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError(
                "group swap training runs on one device; it cannot be combined with distributed (DDP) training"
            )
        if self.scaler.is_enabled():
            raise ValueError(
                "group swap training does not support fp16 loss scaling (one GradScaler step per optimizer step); "
                "use bf16 or fp32 (train.amp false)"
            )
        self.offload = CpuOffload(self.precision.device)
        self.offload.settle(self.model)
        if self.ema is not None:
            self.ema.to(HOST)
        self.modules = {group: [getattr(self.model, name) for name in self.model.groups[group]] for group in SWAP_ORDER}
        self.params = {group: [p for m in modules for p in m.parameters()] for group, modules in self.modules.items()}
        grouped = {id(p) for params in self.params.values() for p in params}
        stray = [name for name, p in self.model.named_parameters() if id(p) not in grouped]
        if stray:
            raise ValueError(
                f"group swap training needs every parameter in a group of GROUPS; these are in none: {stray[:5]}"
            )
        # Between the backward passes and the optimizer step: each group's host gradients and their norm.
        self.grads: dict[str, list[Tensor | None]] = {}
        self.norms: dict[str, Tensor] = {}

    def accumulate(
        self,
        split: SplitTensors,
        window: Tensor,
        window_start: int,
        done: int,
        tally: EpochTally,
        after_micro_step: StepCallback | None,
    ) -> tuple[EpochTally, int]:
        """The window group by group; its micro-steps are reported together at the window's end, since the
        weights hold the whole window only then: a state saved there resumes at the next window."""
        results = self._accumulate_groups(split, window[done:], len(window))
        for size, parts in results:
            tally.add(parts, size)
        return tally, len(results)

    def _accumulate_groups(
        self, split: SplitTensors, index: Tensor, window_size: int
    ) -> list[tuple[int, dict[str, Tensor]]]:
        """Forward and backward of every group over the micro-batches of `index`; (size, loss parts) of each."""
        self.model.train()
        step = self.plan.micro_batch
        batches = [split.batch(index[i : i + step], self.precision.device) for i in range(0, len(index), step)]
        rdrop = self.config.rdrop_alpha > 0
        passes = [dropped_passes(self.model, b["x"], b["mask"], rdrop, self.plan.memory_saving) for b in batches]
        # Per micro-batch and pass: the detached predictions of the groups done so far (group C fuses them).
        predictions: list[list[Outputs]] = [[{} for _ in batch_passes] for batch_passes in passes]
        parts: list[dict[str, Tensor]] = [{} for _ in batches]
        # A batch of verdict-only records runs what the joint forward runs for it (forward_losses): a module left out
        # keeps no gradient, so AdamW does not step it (momentum, weight decay) where the standard trainer would not.
        verdict_only = [bool(verdict_only_rows(batch).all()) for batch in batches]
        for group in SWAP_ORDER:
            self.offload.visit(self.modules[group])
            for batch, batch_passes, batch_predictions, batch_parts, only in zip(
                batches, passes, predictions, parts, verdict_only
            ):
                if only and not runs_on_verdict_only(self.model, group):
                    continue
                size = len(batch["x"])
                self.faults.at_step("forward", size)
                with self.precision.autocast():
                    outs = [
                        self._forward(group, x, mask, sources, only)
                        for (x, mask), sources in zip(batch_passes, batch_predictions)
                    ]
                    total, group_parts = group_loss(self.model, outs, batch, self.config)
                self.faults.at_step("backward", size)
                (total * (size / window_size)).backward()
                for sources, out in zip(batch_predictions, outs):
                    sources.update(detached(out))
                _merge(batch_parts, group_parts, total.detach())
            params = self.params[group]
            self.norms[group] = get_total_norm([p.grad for p in params if p.grad is not None])
            self.grads[group] = self.offload.take_grads(params)
            self.offload.leave(self.modules[group], updated=False)
        return [(len(batch["x"]), _in_loop_order(batch_parts)) for batch, batch_parts in zip(batches, parts)]

    def _forward(self, group: str, x: Tensor, mask: Tensor, sources: Outputs, verdict_only: bool) -> Outputs:
        if self.plan.memory_saving:
            return checkpoint(group_outputs, self.model, group, x, mask, sources, verdict_only, use_reentrant=False)
        return group_outputs(self.model, group, x, mask, sources, verdict_only)

    def discard_window(self) -> None:
        """Drop the failed window's gradients and bring home the group that was on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        for group in SWAP_ORDER:
            self.offload.leave(self.modules[group], updated=False)
        self.grads.clear()
        self.norms.clear()

    def optimizer_step(self, last_of_epoch: bool = False) -> Tensor:
        """Clip with the norm of all groups' gradients, step each group on the device, then the schedule and
        the EMA (on the host); returns the gradient norm before clipping."""
        norm = get_total_norm(list(self.norms.values()))
        max_norm = self.config.clip_norm if self.config.clip_norm > 0 else float("inf")
        probe = last_of_epoch and self.grad_probe is not None
        clipped: dict[str, list[Tensor | None]] = {group: [] for group in SWAP_ORDER}
        for group in SWAP_ORDER:
            grads = iter(self.grads.pop(group))
            # One module at a time: an update needs no other module, and the largest group (group_b, 368M
            # parameters) with its AdamW moments would need 5.5 GiB on the device, its largest module 2.3 GiB.
            for module in self.modules[group]:
                params = list(module.parameters())
                self.offload.visit([module])
                self.offload.give_grads(params, [next(grads) for _ in params])
                self.offload.visit_state(self.optimizer, params)
                clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
                self.optimizer.step()
                self.offload.leave_state(self.optimizer, params)
                # Gradients go out of the way of the next modules' steps, which step every parameter that has
                # one; the gradient probe reads the clipped gradients of the whole model at once.
                if probe:
                    clipped[group] += self.offload.take_grads(params)
                for param in params:
                    param.grad = None
                self.offload.leave([module], updated=True)
        if probe:
            for group, group_grads in clipped.items():
                self.offload.give_grads(self.params[group], group_grads)
            assert self.grad_probe is not None  # `probe` says so
            self.grad_probe(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.norms.clear()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return norm.detach()


def _merge(parts: dict[str, Tensor], group_parts: dict[str, Tensor], group_total: Tensor) -> None:
    """Add one group's loss parts to the micro-batch's: module losses, the summed consistency and the total."""
    for name, value in group_parts.items():
        parts[name] = parts[name] + value.detach() if name in parts else value.detach()
    parts["total"] = parts["total"] + group_total if "total" in parts else group_total


def _in_loop_order(parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Module losses first, then "consistency" and "total", as Trainer.micro_step reports them."""
    last = ("consistency", "total")
    return {**{k: v for k, v in parts.items() if k not in last}, **{k: parts[k] for k in last if k in parts}}

"""Measured activation memory: the bytes autograd keeps for the backward pass of one micro-batch.

Counted on the real model, not from formulas: one forward and the losses run under
`saved_tensors_hooks`, and every tensor autograd saves is counted once per storage, weights excluded
(they are counted as weights). Under bf16 autocast that includes the bf16 weight copies the backward
pass needs. The bytes are attributed to the top-level module running when they were saved, which gives
the peak with per-module checkpointing (inputs kept, one module recomputed at a time) and per group.

The model is built on the meta device and given uninitialised host memory (`to_empty`): the values do
not matter for sizes, and the 730M model takes about 2 s to build this way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from redheart.architecture import TARGET_DIMS
from redheart.config import RunConfig
from redheart.model.model import RedHeartModel

OTHER = "other"  # losses, fusion inputs and anything saved outside a named module


@dataclass(frozen=True)
class ActivationBytes:
    rows: int  # rows of the forward pass (micro-batch, doubled under R-Drop)
    bf16: bool
    per_module: dict[str, int]
    inputs: int  # the inputs every module reads (x, mask, pooled backbone output): kept under checkpointing

    @property
    def total(self) -> int:
        return sum(self.per_module.values())

    @property
    def checkpointed(self) -> int:
        """Peak with per-module checkpointing: the inputs, the losses, and the largest module recomputed."""
        modules = [size for name, size in self.per_module.items() if name != OTHER]
        return self.inputs + self.per_module.get(OTHER, 0) + max(modules, default=0)

    def of(self, modules: Sequence[str]) -> int:
        return sum(self.per_module.get(name, 0) for name in modules)


def empty_model(config: RunConfig, input_dim: int, max_segments: int) -> RedHeartModel:
    with torch.device("meta"):
        model = RedHeartModel(config.model, input_dim, max_segments)
    return model.to_empty(device="cpu")


def synthetic_batch(rows: int, input_dim: int, max_segments: int) -> dict[str, torch.Tensor]:
    """Inputs and every target at their real shapes (values irrelevant: only sizes are measured)."""
    batch = {"x": torch.zeros(rows, max_segments, input_dim), "mask": torch.ones(rows, max_segments, dtype=torch.bool)}
    for target, dim in TARGET_DIMS.items():
        batch[target] = torch.full((rows, dim), 1.0 / dim)
        batch[f"{target}_present"] = torch.ones(rows, dtype=torch.bool)
    batch["verdict_votes"] = torch.ones(rows, TARGET_DIMS["verdict"])
    return batch


def measure_activation_bytes(model: RedHeartModel, rows: int, bf16: bool) -> ActivationBytes:
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[str, int]] = {}
    running = [OTHER]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (running[-1], storage.nbytes())
        return tensor

    def enter(name: str) -> Callable[[nn.Module, Any], None]:
        return lambda module, args: running.append(name)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        running.pop()

    handles = []
    for name in model.module_names:
        module = getattr(model, name)
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    batch = synthetic_batch(rows, model.input_dim, model.max_segments)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    # fork_rng: the dropout draws of this forward must not shift the training run's random stream.
    try:
        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            out = model(batch["x"], batch["mask"])
            model.losses(out, batch, label_smoothing=0.0)
    finally:
        for handle in handles:
            handle.remove()
    per_module = {name: 0 for name in (*model.module_names, OTHER)}
    for name, size in saved.values():
        per_module[name] += size
    pooled = rows * model.backbone.width * (2 if bf16 else 4)
    inputs = batch["x"].nbytes + batch["mask"].nbytes + pooled
    return ActivationBytes(rows=rows, bf16=bf16, per_module=per_module, inputs=inputs)

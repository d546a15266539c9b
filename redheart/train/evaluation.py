"""Predictions and metrics of a model on one split, in eval mode (no dropout, no gradients), on the GPU.

A model whose weights sit in host memory (the swap strategy's, a host-side EMA, every checkpoint that
selection, crossover, calibration, the final evaluation and `predict` load) is evaluated on the GPU anyway:
whole where its weights fit beside what the device already holds (within the memory plan's budget), else
one module group at a time (each group reads the inputs itself and the fusion reads the others' outputs, so
the groups' outputs are the model's), else on the host. The weights visit the device for the pass only
(`on_device`); the split's tensors go there once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from redheart.architecture import DISTRIBUTION_TARGETS, TARGET_DIMS
from redheart.data.dataset import SplitTensors, split_targets
from redheart.model.groups import GROUPS
from redheart.model.losses import Outputs
from redheart.model.model import RedHeartModel
from redheart.scoring.metrics import evaluate_predictions, headline
from redheart.train.memory.plan import DEFAULT_RESERVE, device_memory
from redheart.train.parallel.fsdp import is_sharded
from redheart.train.precision import Precision, resolve_device
from redheart.train.swap.forward import SWAP_ORDER, group_outputs

Predictions = dict[str, dict[str, np.ndarray]]
Batch = dict[str, torch.Tensor]
# Device memory kept for an evaluation batch's activations (no gradients: a few MB per module at batch 512).
EVAL_HEADROOM = 256 * 2**20


@dataclass(frozen=True)
class Placement:
    """Where a forward pass runs: `device`, with the whole model or one module group at a time on it."""

    device: torch.device
    by_group: bool = False


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _bytes(modules: list[nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def available_bytes(device: torch.device) -> int | None:
    """What an evaluation may add on a CUDA `device`: the memory plan's budget (the card less its reserve for
    the CUDA context; or the allocator's cap, set_per_process_memory_fraction, where one is set) less what torch
    has allocated there now, and no more than the card has free plus what torch caches (another process's share
    is not free); None off CUDA."""
    total = device_memory(device)
    if total is None:
        return None
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)(device)
    budget = int(total * fraction) if fraction < 1.0 else total - DEFAULT_RESERVE
    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    return max(0, min(budget - allocated, free + cached))


def evaluation_placement(model: nn.Module, target: torch.device, free: int | None) -> Placement:
    """Where to evaluate `model` for a run on `target`, with `free` device bytes to spare (available_bytes).

    Weights already on a GPU, or sharded (a forward is then a collective of the ranks), stay where they are;
    so do weights when `target` is not a GPU. Host weights go to the GPU whole when they fit in `free` with
    EVAL_HEADROOM, else one group at a time when the largest group does, else they stay on the host.
    """
    where = _device(model)
    if target.type != "cuda" or where.type == "cuda" or is_sharded(model):
        return Placement(where)
    if free is None or _bytes([model]) + EVAL_HEADROOM <= free:
        return Placement(target)
    groups = [[getattr(model, name) for name in names] for names in GROUPS.values()]
    if isinstance(model, RedHeartModel) and max(_bytes(g) for g in groups) + EVAL_HEADROOM <= free:
        return Placement(target, by_group=True)
    return Placement(where)


def placement_for(model: nn.Module, device: torch.device | str) -> Placement:
    """evaluation_placement on `device` ("auto": a GPU where there is one) with its memory now."""
    target = resolve_device(device) if isinstance(device, str) else device
    return evaluation_placement(model, target, available_bytes(target))


@contextmanager
def on_device(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """The modules' weights and buffers on `device` for the block, back where they were after it (the host
    copies are kept, not copied back: evaluation changes no weight). A no-op where they are on `device`."""
    homes: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.device != device:
                    homes.append((tensor, tensor.data))
                    tensor.data = tensor.data.to(device, non_blocking=True)
        yield
    finally:
        for tensor, home in homes:
            tensor.data = home


@torch.no_grad()
def split_forward(
    model: nn.Module, split: SplitTensors, batch_size: int, placement: Placement, precision: Precision | None = None
) -> list[tuple[Batch, Outputs]]:
    """Every batch of the split with the model's outputs on it, in eval mode, on `placement`'s device (the
    caller sets eval mode). The split goes to the device once; by group, the outputs of the groups done so
    far stay there for the fusion."""
    device = placement.device
    whole = split.batch(torch.arange(len(split)), device)
    batches = [
        {k: v[start : start + batch_size] for k, v in whole.items()} for start in range(0, len(split), batch_size)
    ]
    autocast = precision.autocast if precision else lambda: torch.autocast(device.type, enabled=False)
    if not placement.by_group:
        with on_device([model], device), autocast():
            return [(batch, model(batch["x"], batch["mask"])) for batch in batches]
    red = cast(RedHeartModel, model)
    outputs: list[Outputs] = [{} for _ in batches]
    for group in SWAP_ORDER:
        with on_device([getattr(red, name) for name in red.groups[group]], device), autocast():
            for batch, out in zip(batches, outputs):
                out.update(group_outputs(red, group, batch["x"], batch["mask"].to(torch.bool), out))
    return list(zip(batches, outputs))


def _probabilities(out: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    # softmax of logits gives the distribution; for outputs that already are log-probs it gives the same.
    return {
        module: {t: (v.float().softmax(-1) if t in DISTRIBUTION_TARGETS else v.float()) for t, v in targets.items()}
        for module, targets in out.items()
    }


@torch.no_grad()
def _forward_split(
    model: nn.Module,
    split: SplitTensors,
    batch_size: int,
    precision: Precision | None,
    label_smoothing: float | None,
    device: torch.device | str | None,
) -> tuple[Predictions, dict[str, float]]:
    """One pass in eval mode: predictions, and the mean loss per module when `label_smoothing` is given.
    `device`: where the run evaluates (placement_for); None: where the weights are."""
    was_training = model.training
    model.eval()
    placement = Placement(_device(model)) if device is None else placement_for(model, device)
    chunks: dict[str, dict[str, list[torch.Tensor]]] = {}
    sums: dict[str, torch.Tensor] = {}
    try:
        for batch, raw in split_forward(model, split, batch_size, placement, precision):
            if label_smoothing is not None:
                for name, value in cast(RedHeartModel, model).losses(raw, batch, label_smoothing).items():
                    sums[name] = sums.get(name, 0.0) + value.double() * len(batch["x"])
            for module, targets in _probabilities(raw).items():
                for target, value in targets.items():
                    chunks.setdefault(module, {}).setdefault(target, []).append(value)
    finally:
        model.train(was_training)
    # One copy to the host per target at the end, not one wait per batch.
    predictions = {
        module: {t: torch.cat(parts).cpu().numpy() for t, parts in targets.items()}
        for module, targets in chunks.items()
    }
    return predictions, {name: float(total) / len(split) for name, total in sums.items()}


def predict(
    model: nn.Module,
    split: SplitTensors,
    batch_size: int = 256,
    precision: Precision | None = None,
    device: torch.device | str | None = None,
) -> Predictions:
    """Per module, per target: probabilities (distribution targets) or values, as (N, k) numpy arrays.
    `device`: where the run evaluates (a GPU: see the module's docstring); None: where the weights are."""
    return _forward_split(model, split, batch_size, precision, None, device)[0]


def metrics_of(predictions: Predictions, split: SplitTensors) -> dict[str, dict]:
    """evaluate_predictions per module, each on the targets that module predicts."""
    targets, present = split_targets(split)
    result = {}
    for module, preds in predictions.items():
        scored = {name: present[name] if name in preds else np.zeros_like(present[name]) for name in TARGET_DIMS}
        result[module] = evaluate_predictions(preds, targets, scored)
    return result


def evaluate(
    model: nn.Module,
    split: SplitTensors,
    batch_size: int = 256,
    label_smoothing: float = 0.0,
    device: torch.device | str | None = None,
) -> dict:
    """{"modules": metrics per module, "fused": fused metrics, "headline": fused headline, "loss": per module}."""
    predictions, losses = _forward_split(model, split, batch_size, None, label_smoothing, device)
    per_module = metrics_of(predictions, split)
    return {
        "modules": {name: m for name, m in per_module.items() if name != "fused"},
        "fused": per_module["fused"],
        "headline": headline(per_module["fused"]),
        "loss": losses,
    }

"""Per-module statistics of the weights and of the last step's gradients, written beside each checkpoint.

A module's tensors are flattened into chunks of at most CHUNK elements; each chunk is reduced on its
device to one row (sum, L2 norm, max, min, near-zero count) and the rows are stacked into a single
tensor. So the host waits once per model, never per tensor, the training step itself never waits, and
the number of device operations follows the number of modules, not of tensors. Rows are combined per
module and per group on the host in float64. Sum and norm are used rather than torch.var_mean, whose
CPU kernel is ~100x slower; the variance sum(x^2)/n - mean^2 then loses precision only where |mean|
dwarfs std (a module of nothing but normalisation gains), which weight matrices never do.

Layout of module_stats.json (every statistic block has the keys of STAT_KEYS; std is the population std,
ddof 0; a value that is not finite is written as null):
    {"epoch": int, "near_zero_threshold": float, "gradients_captured": bool, "gradients_note": str,
     "modules": {module: {"group": str, "parameters": block, "gradients": block | null}},
     "groups": {group: {"parameters": block, "gradients": block | null}}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from redheart.architecture import group_of
from redheart.model.groups import GROUPS

NEAR_ZERO = 1e-6  # |w| below this counts as a zero weight (the sparsity threshold)
CHUNK = 2**24  # elements per reduced chunk: bounds the flattening copy, and float32 counts stay exact
STAT_KEYS = ("count", "mean", "std", "norm", "max", "min", "near_zero_fraction")
GRADIENTS_NOTE = (
    "gradients of the epoch's last optimizer step, unscaled and after clipping, as the optimizer applied them"
)

Rows = tuple[list[str], Tensor, list[int]]  # (owning module per row, (R, 5) rows, element count per row)


def module_of(param_name: str) -> str:
    """The top-level module a parameter belongs to: "backbone.layers.0.weight" -> "backbone"."""
    return param_name.split(".", 1)[0]


def _chunks(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, list[Tensor]]]:
    """Consecutive tensors of one module, cut so that a chunk passes CHUNK only when it is a single tensor."""
    chunks: list[tuple[str, list[Tensor]]] = []
    size = 0
    for name, tensor in named:
        owner = module_of(name)
        if not chunks or chunks[-1][0] != owner or size + tensor.numel() > CHUNK:
            chunks.append((owner, []))
            size = 0
        chunks[-1][1].append(tensor)
        size += tensor.numel()
    return chunks


@torch.no_grad()
def stat_rows(named: Iterable[tuple[str, Tensor]], near_zero: float = NEAR_ZERO) -> Rows:
    """Rows of (sum, L2 norm, max, min, count of |x| < near_zero) per chunk, stacked on the tensors' device."""
    owners, rows, counts = [], [], []
    for owner, tensors in _chunks((name, t) for name, t in named if t.numel()):
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        low, high = torch.aminmax(flat)
        near = torch.count_nonzero(flat.abs() < near_zero).float()
        rows.append(torch.stack([flat.sum(), torch.linalg.vector_norm(flat), high, low, near]))
        owners.append(owner)
        counts.append(flat.numel())
    return owners, torch.stack(rows), counts


def combine(rows: np.ndarray, counts: np.ndarray) -> dict[str, float | int | None]:
    """One statistic block from the rows of several chunks with `counts` elements each."""
    rows, counts = rows.astype(np.float64), counts.astype(np.float64)
    total = counts.sum()
    mean = float(rows[:, 0].sum() / total)
    square_sum = float((rows[:, 1] ** 2).sum())
    block = {
        "mean": mean,
        "std": math.sqrt(max(square_sum / total - mean**2, 0.0)),
        "norm": math.sqrt(square_sum),
        "max": float(rows[:, 2].max()),
        "min": float(rows[:, 3].min()),
        "near_zero_fraction": float(rows[:, 4].sum() / total),
    }
    return {"count": int(total), **{key: value if math.isfinite(value) else None for key, value in block.items()}}


def _blocks(rows: Rows) -> tuple[dict, dict]:
    """Statistic blocks per module and per group (in the order of GROUPS), after one move to the host."""
    owners, values, counts = np.array(rows[0]), rows[1].cpu().numpy(), np.array(rows[2])
    groups = np.array([group_of(owner) for owner in owners])
    modules = {
        m: combine(values[owners == m], counts[owners == m]) for g in GROUPS for m in GROUPS[g] if (owners == m).any()
    }
    by_group = {g: combine(values[groups == g], counts[groups == g]) for g in GROUPS if (groups == g).any()}
    return modules, by_group


class GradientProbe:
    """Called with the model right before zero_grad: keeps that step's gradient rows on the device."""

    def __init__(self, near_zero: float = NEAR_ZERO) -> None:
        self.near_zero = near_zero
        self.rows: Rows | None = None

    def __call__(self, model: nn.Module) -> None:
        named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        self.rows = stat_rows(named, self.near_zero) if any(grad.numel() for _, grad in named) else None

    def take(self) -> Rows | None:
        """The captured rows, once; None when nothing was captured since the last take."""
        rows, self.rows = self.rows, None
        return rows


def module_stats(model: nn.Module, epoch: int, gradients: GradientProbe | None = None) -> dict[str, Any]:
    """The module_stats.json object of `model` now, with the probe's last gradients when it holds some."""
    near_zero = gradients.near_zero if gradients is not None else NEAR_ZERO
    param_modules, param_groups = _blocks(stat_rows(model.named_parameters(), near_zero))
    captured = gradients.take() if gradients is not None else None
    grad_modules, grad_groups = _blocks(captured) if captured is not None else ({}, {})
    return {
        "epoch": epoch,
        "near_zero_threshold": near_zero,
        "gradients_captured": captured is not None,
        "gradients_note": GRADIENTS_NOTE,
        "modules": {
            m: {"group": group_of(m), "parameters": block, "gradients": grad_modules.get(m)}
            for m, block in param_modules.items()
        },
        "groups": {g: {"parameters": block, "gradients": grad_groups.get(g)} for g, block in param_groups.items()},
    }

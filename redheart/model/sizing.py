"""Solve each module's one free width so its parameter count lands on its budget.

Candidates are built on the meta device, so sizing the 730M-parameter preset allocates no weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Solved:
    width: int
    parameters: int
    floored: bool  # True when even the smallest width exceeds the budget


def solve_width(build: Callable[[int], nn.Module], budget: int, step: int = 1, minimum: int = 1) -> Solved:
    """The width (a multiple of `step`, at least `minimum`) whose module count is closest to `budget`.

    Counts grow monotonically with width, so a doubling search then bisection over multiples of `step` finds
    the two widths that bracket the budget; the nearer one wins.
    """
    if budget <= 0:
        raise ValueError(f"parameter budget must be positive, got {budget}")
    start = max(step, -(-minimum // step) * step)

    def count(width: int) -> int:
        with torch.device("meta"):
            return count_parameters(build(width))

    low_count = count(start)
    if low_count >= budget:
        return Solved(start, low_count, floored=low_count > budget)
    low, high = start // step, 2 * (start // step)
    while count(high * step) < budget:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if count(middle * step) < budget:
            low = middle
        else:
            high = middle
    under, over = count(low * step), count(high * step)
    if budget - under <= over - budget:
        return Solved(low * step, under, floored=False)
    return Solved(high * step, over, floored=False)

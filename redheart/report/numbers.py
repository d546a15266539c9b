"""The one number format of the report's tables and sentences."""

from __future__ import annotations

from typing import Any

from redheart.train.sweep.score import format_lr


def fmt(value: Any, digits: int = 4) -> str:
    """The one number format of every table: ints with separators, floats with `digits` decimals, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def fmt_lr(value: float | None) -> str:
    """A learning rate as the config and the sweep write it (format_lr), None as a dash."""
    return fmt(value) if value is None else format_lr(value)


def fmt_ci(value: float | None, interval: list | None) -> str:
    lo, hi = interval or (None, None)
    return fmt(value) if lo is None else f"{fmt(value)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"

"""Percentile bootstrap confidence intervals for a metric over the rows of an evaluation set."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray], float | np.ndarray | None],
    n_rows: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batched: bool = False,
) -> tuple[float | None, float | None]:
    """The (alpha/2, 1 - alpha/2) percentile interval of `metric_fn` over resamples of the rows.

    `metric_fn` receives an index array drawn with replacement from range(n_rows) and returns the metric
    of those rows. With `batched=True` it receives all resamples at once, an (n_boot, n_rows) index
    matrix, and returns n_boot values: a row-mean metric is then one numpy call, e.g.
    `lambda idx: correct[idx].mean(axis=1)`. Resamples where the metric is undefined (None or NaN, as
    Pearson r on a constant sample) are left out; with none left the interval is (None, None).
    """
    if n_rows < 1:
        raise ValueError(f"bootstrap_ci: n_rows must be positive, got {n_rows}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be positive, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must lie in (0, 1), got {alpha}")
    # One draw for all resamples: the same seed gives the same intervals whether batched or not.
    indices = np.random.default_rng(seed).integers(0, n_rows, size=(n_boot, n_rows))
    if batched:
        values = np.asarray(metric_fn(indices), dtype=np.float64)
        if values.shape != (n_boot,):
            raise ValueError(f"bootstrap_ci: batched metric_fn returned shape {values.shape}, expected ({n_boot},)")
    else:
        values = np.array([np.nan if (v := metric_fn(row)) is None else v for row in indices], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)

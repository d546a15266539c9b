"""Bootstrap 95% intervals of declared metrics (redheart.scoring.metrics.METRICS), all resamples in one numpy call
per metric.

Each metric is computed on the resampled rows by its declaration's `resampled` form, on the rows where its target
is present; the headline is the default. Every metric uses the same resamples (one seeded draw over the rows), so
intervals of different metrics and of different models are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from redheart.scoring.bootstrap import bootstrap_ci
from redheart.scoring.metrics import HEADLINE, Metric, Resampled


def metric_intervals(
    preds: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    metrics: Sequence[Metric] = HEADLINE,
) -> dict[str, tuple[float | None, float | None]]:
    """{metric key: (low, high)} percentile 95% intervals; (None, None) where a target has no rows."""
    n = len(next(iter(present.values())))
    out: dict[str, tuple[float | None, float | None]] = {}
    for metric in metrics:
        resampled = metric.resampled(preds, targets, present)
        out[metric.key] = (
            (None, None) if resampled is None else bootstrap_ci(resampled, n, n_boot=n_boot, seed=seed, batched=True)
        )
    return out


def paired_difference_intervals(
    preds_a: Mapping[str, np.ndarray],
    preds_b: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    metrics: Sequence[Metric] = HEADLINE,
) -> dict[str, tuple[float | None, float | None]]:
    """{metric key: (low, high)}: the percentile 95% interval of metric(A) - metric(B), both computed on the SAME
    resampled rows in every resample, so the variation the two share (which texts are hard) cancels."""
    n = len(next(iter(present.values())))
    out: dict[str, tuple[float | None, float | None]] = {}
    for metric in metrics:
        metric_a, metric_b = metric.resampled(preds_a, targets, present), metric.resampled(preds_b, targets, present)
        if metric_a is None or metric_b is None:
            out[metric.key] = (None, None)
            continue

        def difference(idx: np.ndarray, a: Resampled = metric_a, b: Resampled = metric_b) -> np.ndarray:
            return a(idx) - b(idx)

        out[metric.key] = bootstrap_ci(difference, n, n_boot=n_boot, seed=seed, batched=True)
    return out

"""Bootstrap 95% intervals of the headline metrics, all resamples in one numpy call per metric.

The metrics match redheart.scoring.metrics.headline: emotion accuracy (a tie in the target accepts any
tied class) and macro-F1, verdict accuracy and macro-F1 against the majority vote, and the regression MAE
averaged over the 9 dimensions, each on the rows where its target is present. Every metric uses the same
resamples (one seeded draw over the rows), so intervals of different models are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from redheart.scoring.bootstrap import bootstrap_ci
from redheart.scoring.metrics import PROB_EPS, REGRESSION_NAMES, TIE_TOL


def _masked_mean(values: np.ndarray, present: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def metric(idx: np.ndarray) -> np.ndarray:
        counts = present[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, (values * present)[idx].sum(axis=1) / counts, np.nan)

    return metric


def batched_macro_f1(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """Macro-F1 over resamples (rows with true == -1 are left out); a class with no support and no
    prediction scores 0, as sklearn's f1_score(labels=all, zero_division=0) does."""

    def metric(idx: np.ndarray) -> np.ndarray:
        t, p = true[idx], predicted[idx]
        scores = []
        for c in range(n_classes):
            tp = ((t == c) & (p == c)).sum(axis=1)
            fp = ((t != c) & (t >= 0) & (p == c)).sum(axis=1)
            fn = ((t == c) & (p != c)).sum(axis=1)
            denominator = 2 * tp + fp + fn
            scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
        return np.mean(scores, axis=0)

    return metric


Metric = Callable[[np.ndarray], np.ndarray]


def headline_metrics(
    preds: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
) -> dict[str, Metric | None]:
    """{headline key: batched metric of an (n_boot, n) index matrix}, None where the target has no rows;
    plus "verdict_cross_entropy" (against the vote shares, as verdict_metrics computes it)."""
    n = len(next(iter(present.values())))
    out: dict[str, Metric | None] = {}

    rows = np.asarray(present["emotions"], dtype=bool)
    probs, target = np.asarray(preds["emotions"]), np.asarray(targets["emotions"])
    chosen = probs.argmax(axis=1)
    correct = target[np.arange(n), chosen] >= target.max(axis=1) - TIE_TOL
    any_rows = bool(rows.any())
    out["emotion_accuracy"] = _masked_mean(correct.astype(float), rows) if any_rows else None
    out["emotion_macro_f1"] = (
        batched_macro_f1(np.where(rows, target.argmax(axis=1), -1), chosen, target.shape[1]) if any_rows else None
    )

    rows = np.asarray(present["verdict"], dtype=bool)
    verdict_probs, votes = np.asarray(preds["verdict"], dtype=float), np.asarray(targets["verdict"], dtype=float)
    chosen, majority = verdict_probs.argmax(axis=1), votes.argmax(axis=1)
    any_rows = bool(rows.any())
    out["verdict_accuracy"] = _masked_mean((chosen == majority).astype(float), rows) if any_rows else None
    out["verdict_macro_f1"] = (
        batched_macro_f1(np.where(rows, majority, -1), chosen, votes.shape[1]) if any_rows else None
    )
    shares = votes / np.clip(votes.sum(axis=1, keepdims=True), PROB_EPS, None)
    cross_entropy = -(shares * np.log(np.clip(verdict_probs, PROB_EPS, 1.0))).sum(axis=1)
    out["verdict_cross_entropy"] = _masked_mean(cross_entropy, rows) if any_rows else None

    dims = []
    for name in REGRESSION_NAMES:
        mask = np.asarray(present[name], dtype=bool)
        if not mask.any():
            continue
        error = np.abs(
            np.asarray(preds[name], dtype=float).reshape(n, -1) - np.asarray(targets[name], dtype=float).reshape(n, -1)
        )
        dims += [_masked_mean(error[:, d], mask) for d in range(error.shape[1])]
    out["regression_mae"] = (lambda idx: np.mean([dim(idx) for dim in dims], axis=0)) if dims else None
    return out


def headline_intervals(
    preds: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float | None, float | None]]:
    """{headline key: (low, high)} percentile 95% intervals; (None, None) where a target has no rows."""
    n = len(next(iter(present.values())))
    metrics = headline_metrics(preds, targets, present)
    metrics.pop("verdict_cross_entropy")
    return {
        key: (None, None) if metric is None else bootstrap_ci(metric, n, n_boot=n_boot, seed=seed, batched=True)
        for key, metric in metrics.items()
    }


def paired_difference_intervals(
    preds_a: Mapping[str, np.ndarray],
    preds_b: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float | None, float | None]]:
    """{key: (low, high)}: the percentile 95% interval of metric(A) - metric(B), both computed on the SAME
    resampled rows in every resample, so the variation the two share (which texts are hard) cancels."""
    n = len(next(iter(present.values())))
    metrics_a, metrics_b = headline_metrics(preds_a, targets, present), headline_metrics(preds_b, targets, present)
    out: dict[str, tuple[float | None, float | None]] = {}
    for key, metric_a in metrics_a.items():
        metric_b = metrics_b[key]
        if metric_a is None or metric_b is None:
            out[key] = (None, None)
            continue

        def difference(idx: np.ndarray, a: Metric = metric_a, b: Metric = metric_b) -> np.ndarray:
            return a(idx) - b(idx)

        out[key] = bootstrap_ci(difference, n, n_boot=n_boot, seed=seed, batched=True)
    return out

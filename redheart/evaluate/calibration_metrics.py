"""How well calibrated one set of predicted distributions is, against target distributions.

On the rows where the target is present: top-label ECE over `n_bins` equal-width confidence bins, MCE (the
largest gap of a non-empty bin), NLL (cross-entropy against the target distribution), the Brier score (sum over
classes of the squared difference to the target distribution, mean over rows) and top-1 accuracy (a tie in the
target accepts any tied class, as the headline accuracy does). A bin's accuracy is the mean target share of the
predicted class: the chance that a label drawn from the target distribution (one LLM reading, one community
vote) agrees with the prediction. With one-hot targets this is the usual top-label ECE; with soft targets it is
the ECE the fitted cross-entropy is consistent with (predicting the target distribution itself gives ECE 0,
where an argmax "truth" would call it under-confident).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from redheart.config import CalibrationConfig
from redheart.scoring.metrics import PROB_EPS, TIE_TOL

N_BINS = CalibrationConfig().n_bins  # the calibrate phase's default


def checked(name: str, probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`probs` and `target` as float64 (N, K) arrays; ValueError naming the first row with a negative or
    non-finite value."""
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != target.shape:
        raise ValueError(f"{name}: probabilities {probs.shape} and targets {target.shape} must both be (N, K)")
    for label, values in (("probabilities", probs), ("targets", target)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1))
        if bad.size:
            raise ValueError(
                f"{name} {label}: row {int(bad[0])} has a negative or non-finite value ({bad.size} rows in all)"
            )
    return probs, target


def nll(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean cross-entropy of the predicted distributions against the target distributions."""
    return float(-(target * np.log(np.clip(probs, PROB_EPS, 1.0))).sum(axis=1).mean())


def reliability_bins(probs: np.ndarray, target: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Top-label reliability: per equal-width confidence bin, its bounds, row count, mean confidence and mean
    agreement (target share of the predicted class) as "accuracy"."""
    confidence = probs.max(axis=1)
    agreement = target[np.arange(len(target)), probs.argmax(axis=1)] / target.sum(axis=1).clip(min=PROB_EPS)
    # Bin i holds (i/n, (i+1)/n]; a confidence of exactly 0 cannot occur for a distribution.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        rows = index == i
        count = int(rows.sum())
        bins.append(
            {
                "lower": i / n_bins,
                "upper": (i + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[rows].mean()) if count else None,
                "accuracy": float(agreement[rows].mean()) if count else None,
            }
        )
    return bins


def calibration_metrics(
    probs: np.ndarray, target: np.ndarray, n_bins: int = N_BINS, name: str = "target"
) -> dict[str, Any]:
    """ECE, MCE, NLL, Brier, top-1 accuracy, n and the reliability bins of one set of predictions."""
    probs, target = checked(name, probs, target)
    if not len(probs):
        raise ValueError(f"{name}: no rows to score")
    bins = reliability_bins(probs, target, n_bins)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in bins if b["count"]]
    return {
        "ece": float(sum(count * gap for count, gap in gaps) / len(probs)),
        "mce": float(max(gap for _, gap in gaps)),
        "nll": nll(probs, target),
        "brier": float(((probs - target) ** 2).sum(axis=1).mean()),
        "accuracy": float(
            (target[np.arange(len(target)), probs.argmax(axis=1)] >= target.max(axis=1) - TIE_TOL).mean()
        ),
        "n": len(probs),
        "bins": bins,
    }

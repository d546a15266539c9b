"""The metrics: emotion accuracy/macro-F1/KL, regression errors, verdict accuracy/F1/CE.

Inputs are numpy arrays; every target comes with a `present` mask and only its rows are scored. Every
returned value is a plain Python number or None, so the result can be written as JSON unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import rel_entr
from scipy.stats import pearsonr
from sklearn.metrics import f1_score

from redheart.data.schema import BENTHAM_KEYS, EMOTIONS, SURD_KEYS, TARGET_DIMS, VERDICTS

# Predicted probabilities are clipped to at least this before a log, so one confident zero gives a large
# but finite loss instead of infinity.
PROB_EPS = 1e-12
# Two target entries within this of each other count as a tie for the top class.
TIE_TOL = 1e-9

REGRESSION_NAMES: dict[str, tuple[str, ...]] = {
    "bentham_scores": BENTHAM_KEYS,
    "regret_factor": ("regret_factor",),
    "surd_metrics": SURD_KEYS,
}


def _matrix(name: str, array: np.ndarray, width: int) -> np.ndarray:
    """`array` as a float (N, width) matrix, or a ValueError naming the field and what is wrong."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim == 1 and width == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[1] != width:
        raise ValueError(f"{name}: expected shape (N, {width}), got {np.shape(array)}")
    return out


def _pair(name: str, pred: np.ndarray, target: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    pred = _matrix(f"{name} prediction", pred, width)
    target = _matrix(f"{name} target", target, width)
    if len(pred) != len(target):
        raise ValueError(f"{name}: {len(pred)} predictions for {len(target)} targets")
    for label, values in (("prediction", pred), ("target", target)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise ValueError(f"{name} {label}: non-finite values in row {int(bad[0])} ({bad.size} rows in all)")
    return pred, target


def _macro_f1(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    # Fixed labels so a class absent from this sample still counts (as F1 0), keeping runs comparable.
    return float(f1_score(true, predicted, labels=list(range(n_classes)), average="macro", zero_division=0))


def emotion_metrics(probs: np.ndarray, target: np.ndarray) -> dict:
    """Top-1 accuracy (a tie in the target accepts any tied class), macro-F1, mean KL(target || pred), n."""
    probs, target = _pair("emotions", probs, target, len(EMOTIONS))
    predicted = probs.argmax(axis=1)
    rows = np.arange(len(target))
    correct = target[rows, predicted] >= target.max(axis=1) - TIE_TOL
    kl = rel_entr(target, np.clip(probs, PROB_EPS, 1.0)).sum(axis=1)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": _macro_f1(target.argmax(axis=1), predicted, len(EMOTIONS)),
        "kl": float(kl.mean()),
        "n": len(target),
    }


def _pearson(pred: np.ndarray, target: np.ndarray) -> float | None:
    # Undefined when either side is constant; None keeps the JSON valid where NaN would not.
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return None
    return float(pearsonr(pred, target).statistic)


def regression_metrics(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict:
    """MAE, RMSE and Pearson r per named dimension, their mean MAE/RMSE over dimensions, and n."""
    pred, target = _pair("/".join(names), pred, target, len(names))
    error = pred - target
    mae = np.abs(error).mean(axis=0)
    rmse = np.sqrt((error**2).mean(axis=0))
    dims = {
        name: {"mae": float(mae[i]), "rmse": float(rmse[i]), "pearson_r": _pearson(pred[:, i], target[:, i])}
        for i, name in enumerate(names)
    }
    return {"mae": float(mae.mean()), "rmse": float(rmse.mean()), "dims": dims, "n": len(target)}


def verdict_metrics(probs: np.ndarray, votes: np.ndarray) -> dict:
    """Accuracy and macro-F1 against the majority vote, cross-entropy against the vote distribution, n."""
    probs, votes = _pair("verdict", probs, votes, len(VERDICTS))
    totals = votes.sum(axis=1, keepdims=True)
    if (votes < 0).any() or (totals <= 0).any():
        raise ValueError("verdict target: every row needs non-negative votes with a positive total")
    predicted = probs.argmax(axis=1)
    majority = votes.argmax(axis=1)
    cross_entropy = -(votes / totals * np.log(np.clip(probs, PROB_EPS, 1.0))).sum(axis=1)
    return {
        "accuracy": float((predicted == majority).mean()),
        "macro_f1": _macro_f1(majority, predicted, len(VERDICTS)),
        "cross_entropy": float(cross_entropy.mean()),
        "n": len(votes),
    }


def evaluate_predictions(
    preds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> dict[str, dict]:
    """Metrics of every target in TARGET_DIMS on its present rows; a target with none reports {"n": 0}."""
    results: dict[str, dict] = {}
    for name in TARGET_DIMS:
        mask = np.asarray(present[name], dtype=bool)
        if mask.ndim != 1:
            raise ValueError(f"{name}_present: expected a 1-d bool mask, got shape {mask.shape}")
        if not mask.any():
            results[name] = {"n": 0}
            continue
        if name not in preds:
            raise ValueError(f"{name}: {int(mask.sum())} rows have this target but there is no prediction for it")
        pred, target = np.asarray(preds[name]), np.asarray(targets[name])
        if len(pred) != len(mask) or len(target) != len(mask):
            raise ValueError(f"{name}: mask has {len(mask)} rows, prediction {len(pred)}, target {len(target)}")
        pred, target = pred[mask], target[mask]
        if name == "emotions":
            results[name] = emotion_metrics(pred, target)
        elif name == "verdict":
            results[name] = verdict_metrics(pred, target)
        else:
            results[name] = regression_metrics(pred, target, REGRESSION_NAMES[name])
    return results


# The column label of each headline number, in every table that shows them (console, report, LaTeX).
HEADLINE_LABELS = {
    "emotion_accuracy": "emotion acc.",
    "emotion_macro_f1": "emotion F1",
    "verdict_accuracy": "verdict acc.",
    "verdict_macro_f1": "verdict F1",
    "regression_mae": "regression MAE",
}


def headline(metrics: Mapping[str, dict]) -> dict[str, float | None]:
    """The numbers every table shows; a target without rows gives None (printed as a dash)."""
    emotions, verdict = metrics.get("emotions", {}), metrics.get("verdict", {})
    dim_maes = [dim["mae"] for name in REGRESSION_NAMES for dim in metrics.get(name, {}).get("dims", {}).values()]
    return {
        "emotion_accuracy": emotions.get("accuracy"),
        "emotion_macro_f1": emotions.get("macro_f1"),
        "verdict_accuracy": verdict.get("accuracy"),
        "verdict_macro_f1": verdict.get("macro_f1"),
        # Averaged over the dimensions (4 + 1 + 4), not the targets, so regret does not weigh as much as 4 dims.
        "regression_mae": float(np.mean(dim_maes)) if dim_maes else None,
    }

"""The metrics: emotion accuracy/macro-F1/KL, regression errors, verdict accuracy/F1/CE.

Inputs are numpy arrays; every target comes with a `present` mask and only its rows are scored. Every
returned value is a plain Python number or None, so the result can be written as JSON unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy.special import rel_entr
from scipy.stats import pearsonr
from sklearn.metrics import f1_score

from redheart.architecture import EMOTIONS, REGRESSION, TARGETS, VERDICTS

# Predicted probabilities are clipped to at least this before a log, so one confident zero gives a large
# but finite loss instead of infinity.
PROB_EPS = 1e-12
# Two target entries within this of each other count as a tie for the top class.
TIE_TOL = 1e-9

# The dimension names of each regression target.
REGRESSION_NAMES: dict[str, tuple[str, ...]] = {t.name: t.fields for t in TARGETS if t.kind == REGRESSION}


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


# Per-row quantities, shared by the metrics below and by their resampled forms (the headline section).
def _emotion_correct(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row: whether the predicted top class is a top class of the target (a tie accepts any tied class)."""
    return target[np.arange(len(target)), probs.argmax(axis=1)] >= target.max(axis=1) - TIE_TOL


def _emotion_kl(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row: KL(target || prediction)."""
    return rel_entr(target, np.clip(probs, PROB_EPS, 1.0)).sum(axis=1)


def emotion_metrics(probs: np.ndarray, target: np.ndarray) -> dict:
    """Top-1 accuracy (a tie in the target accepts any tied class), macro-F1, mean KL(target || pred), n."""
    probs, target = _pair("emotions", probs, target, len(EMOTIONS))
    predicted = probs.argmax(axis=1)
    correct = _emotion_correct(probs, target)
    kl = _emotion_kl(probs, target)
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


def _verdict_cross_entropy(probs: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Per row: cross-entropy of the prediction against the vote shares. The clip only keeps a row without votes
    (an absent row, in the bootstrap's arrays of every row) finite; a scored row's total is positive."""
    shares = votes / np.clip(votes.sum(axis=1, keepdims=True), PROB_EPS, None)
    return -(shares * np.log(np.clip(probs, PROB_EPS, 1.0))).sum(axis=1)


def verdict_metrics(probs: np.ndarray, votes: np.ndarray) -> dict:
    """Accuracy and macro-F1 against the majority vote, cross-entropy against the vote distribution, n."""
    probs, votes = _pair("verdict", probs, votes, len(VERDICTS))
    totals = votes.sum(axis=1, keepdims=True)
    if (votes < 0).any() or (totals <= 0).any():
        raise ValueError("verdict target: every row needs non-negative votes with a positive total")
    predicted = probs.argmax(axis=1)
    majority = votes.argmax(axis=1)
    cross_entropy = _verdict_cross_entropy(probs, votes)
    return {
        "accuracy": float((predicted == majority).mean()),
        "macro_f1": _macro_f1(majority, predicted, len(VERDICTS)),
        "cross_entropy": float(cross_entropy.mean()),
        "n": len(votes),
    }


# Each distribution target's scorer: against a soft label (KL divergence, a tie accepting any tied class) or against
# the community's votes (accuracy of the majority, cross-entropy of the vote shares).
DISTRIBUTION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], dict]] = {
    "emotions": emotion_metrics,
    "verdict": verdict_metrics,
}


def evaluate_predictions(
    preds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> dict[str, dict]:
    """Metrics of every target in TARGETS on its present rows; a target with none reports {"n": 0}."""
    results: dict[str, dict] = {}
    for declared in TARGETS:
        name = declared.name
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
        if declared.kind == REGRESSION:
            results[name] = regression_metrics(pred, target, declared.fields)
        else:
            results[name] = DISTRIBUTION_METRICS[name](pred, target)
    return results


# ---- The declared metrics: each compared number's labels, direction, value and value on bootstrap resamples --------

Arrays = Mapping[str, np.ndarray]
# A metric on every bootstrap resample at once: an (n_boot, n) matrix of row indices in, n_boot values out.
Resampled = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One number the tables, the model card, the bootstrap and the study compare.

    `value` reads it from evaluate_predictions' per-target metrics (None where its target has no rows).
    `resampled` builds, from the predictions, targets and present masks of every row, its value on all bootstrap
    resamples at once (None where its target has no rows), from the same per-row quantities as `value`'s metric.
    """

    key: str  # its name in every JSON file (headline, intervals, final_vs_probe, study points)
    label: str  # short column label, in every table (console, report, LaTeX)
    words: str  # its name in sentences, the model card and plot titles
    higher_is_better: bool
    targets: tuple[str, ...]  # the targets whose rows it scores
    value: Callable[[Mapping[str, dict]], float | None]
    resampled: Callable[[Arrays, Arrays, Arrays], Resampled | None]
    note: str = ""  # what a reader needs besides the name, e.g. what a mean runs over
    # Scored on predictions whose verdict argmax is the decision rule's class; the caller, which holds the rule,
    # supplies them (evaluate.final).
    on_rule: bool = False

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is: a difference times it is positive when it is an improvement."""
        return 1 if self.higher_is_better else -1


def resampled_mean(values: np.ndarray, present: np.ndarray) -> Resampled:
    """The mean of per-row `values` over the present rows of each resample (NaN where a resample has none)."""

    def metric(idx: np.ndarray) -> np.ndarray:
        counts = present[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, (values * present)[idx].sum(axis=1) / counts, np.nan)

    return metric


def batched_macro_f1(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> Resampled:
    """_macro_f1 on every resample (rows with true == -1 are left out): from class counts, as sklearn's
    f1_score(labels=all, zero_division=0) computes it, so a class with no support and no prediction scores 0."""

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


def _reported(target: str, name: str) -> Callable[[Mapping[str, dict]], float | None]:
    def value(metrics: Mapping[str, dict]) -> float | None:
        return metrics.get(target, {}).get(name)

    return value


def _regression_mae(metrics: Mapping[str, dict]) -> float | None:
    dim_maes = [dim["mae"] for name in REGRESSION_NAMES for dim in metrics.get(name, {}).get("dims", {}).values()]
    # Averaged over the dimensions (4 + 1 + 4), not the targets, so regret does not weigh as much as 4 dims.
    return float(np.mean(dim_maes)) if dim_maes else None


def _rows(present: Arrays, target: str) -> np.ndarray | None:
    rows = np.asarray(present[target], dtype=bool)
    return rows if rows.any() else None


def _emotion_accuracy_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "emotions")) is None:
        return None
    correct = _emotion_correct(np.asarray(preds["emotions"]), np.asarray(targets["emotions"]))
    return resampled_mean(correct.astype(float), rows)


def _emotion_macro_f1_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "emotions")) is None:
        return None
    probs, target = np.asarray(preds["emotions"]), np.asarray(targets["emotions"])
    return batched_macro_f1(np.where(rows, target.argmax(axis=1), -1), probs.argmax(axis=1), target.shape[1])


def _emotion_kl_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "emotions")) is None:
        return None
    probs, target = np.asarray(preds["emotions"], dtype=float), np.asarray(targets["emotions"], dtype=float)
    return resampled_mean(_emotion_kl(probs, target), rows)


def _verdicts(preds: Arrays, targets: Arrays) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(preds["verdict"], dtype=float), np.asarray(targets["verdict"], dtype=float)


def _verdict_accuracy_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "verdict")) is None:
        return None
    probs, votes = _verdicts(preds, targets)
    return resampled_mean((probs.argmax(axis=1) == votes.argmax(axis=1)).astype(float), rows)


def _verdict_macro_f1_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "verdict")) is None:
        return None
    probs, votes = _verdicts(preds, targets)
    return batched_macro_f1(np.where(rows, votes.argmax(axis=1), -1), probs.argmax(axis=1), votes.shape[1])


def _verdict_cross_entropy_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    if (rows := _rows(present, "verdict")) is None:
        return None
    return resampled_mean(_verdict_cross_entropy(*_verdicts(preds, targets)), rows)


def _regression_mae_resampled(preds: Arrays, targets: Arrays, present: Arrays) -> Resampled | None:
    n = len(next(iter(present.values())))
    dims = []
    for name in REGRESSION_NAMES:
        if (rows := _rows(present, name)) is None:
            continue
        pred, target = np.asarray(preds[name], dtype=float), np.asarray(targets[name], dtype=float)
        error = np.abs(pred.reshape(n, -1) - target.reshape(n, -1))
        dims += [resampled_mean(error[:, d], rows) for d in range(error.shape[1])]
    if not dims:
        return None

    def metric(idx: np.ndarray) -> np.ndarray:
        return np.mean([dim(idx) for dim in dims], axis=0)

    return metric


_REGRESSION_OUTPUTS = sum(len(names) for names in REGRESSION_NAMES.values())

# Every declared metric. Adding one is an entry here (with its two functions) and its key in the selections below
# that should show it.
_DECLARED = (
    Metric(
        key="emotion_accuracy",
        label="emotion acc.",
        words="emotion accuracy",
        higher_is_better=True,
        targets=("emotions",),
        value=_reported("emotions", "accuracy"),
        resampled=_emotion_accuracy_resampled,
    ),
    Metric(
        key="emotion_macro_f1",
        label="emotion F1",
        words="emotion macro-F1",
        higher_is_better=True,
        targets=("emotions",),
        value=_reported("emotions", "macro_f1"),
        resampled=_emotion_macro_f1_resampled,
    ),
    Metric(
        key="emotion_kl",
        label="emotion KL",
        words="emotion KL divergence",
        higher_is_better=False,
        targets=("emotions",),
        value=_reported("emotions", "kl"),
        resampled=_emotion_kl_resampled,
    ),
    Metric(
        key="verdict_accuracy",
        label="verdict acc.",
        words="verdict accuracy",
        higher_is_better=True,
        targets=("verdict",),
        value=_reported("verdict", "accuracy"),
        resampled=_verdict_accuracy_resampled,
    ),
    Metric(
        key="verdict_macro_f1",
        label="verdict F1",
        words="verdict macro-F1",
        higher_is_better=True,
        targets=("verdict",),
        value=_reported("verdict", "macro_f1"),
        resampled=_verdict_macro_f1_resampled,
    ),
    Metric(
        key="verdict_macro_f1_rule",
        label="verdict F1 (rule)",
        words="verdict macro-F1 with the decision rule",
        higher_is_better=True,
        targets=("verdict",),
        value=_reported("verdict", "macro_f1"),
        resampled=_verdict_macro_f1_resampled,
        on_rule=True,
    ),
    Metric(
        key="verdict_cross_entropy",
        label="verdict CE",
        words="verdict cross-entropy",
        higher_is_better=False,
        targets=("verdict",),
        value=_reported("verdict", "cross_entropy"),
        resampled=_verdict_cross_entropy_resampled,
    ),
    Metric(
        key="regression_mae",
        label="regression MAE",
        words="regression MAE",
        higher_is_better=False,
        targets=tuple(REGRESSION_NAMES),
        value=_regression_mae,
        resampled=_regression_mae_resampled,
        note=f"mean over the {_REGRESSION_OUTPUTS} regression outputs",
    ),
)
METRICS: Mapping[str, Metric] = MappingProxyType({metric.key: metric for metric in _DECLARED})


def _selection(*keys: str) -> tuple[Metric, ...]:
    return tuple(METRICS[key] for key in keys)


# The selections, in the order their tables show them.
# The headline: every table of candidates and baselines, their bootstrap intervals, the model card.
HEADLINE = _selection("emotion_accuracy", "emotion_macro_f1", "verdict_accuracy", "verdict_macro_f1", "regression_mae")
# The final model against the linear probe on test (paired differences).
COMPARED = (*HEADLINE, *_selection("verdict_cross_entropy", "verdict_macro_f1_rule"))
# The three of the short summaries: the crossover's test conclusion and table, the training curves.
SUMMARY = _selection("emotion_accuracy", "verdict_macro_f1", "regression_mae")
# The learning-curve study's numbers, one curve each.
STUDIED = _selection(
    "emotion_accuracy", "emotion_macro_f1", "emotion_kl", "verdict_macro_f1", "verdict_cross_entropy", "regression_mae"
)


def headline(metrics: Mapping[str, dict]) -> dict[str, float | None]:
    """The numbers every table shows; a target without rows gives None (printed as a dash)."""
    return {metric.key: metric.value(metrics) for metric in HEADLINE}


def direction_words(metrics: Sequence[Metric]) -> str:
    """Which of `metrics` are better higher and which lower, by label, with each one's note, for a table's foot."""
    parts = []
    for higher, words in ((True, "higher is better"), (False, "lower is better")):
        labels = [m.label + (f" ({m.note})" if m.note else "") for m in metrics if m.higher_is_better == higher]
        if labels:
            parts.append(f"{words}: {', '.join(labels)}")
    return "; ".join(parts)

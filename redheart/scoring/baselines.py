"""The simple baselines every result is read against: class prior, mean predictor, linear probe.

"class_prior" and "mean_predictor" are one predictor seen from the two kinds of target: a constant equal to
the training mean. For a distribution target (emotions, verdict) the mean training distribution *is* the
class prior; for a regression target the training mean *is* the mean predictor. Both names are kept because
the tables name both, and they hold the same numbers by construction (fitted once).

"linear_probe" fits scikit-learn models on the features the training code passes (masked-mean-pooled
segment vectors): multinomial logistic regression on soft targets for the distributions, RidgeCV for the
regressions, each after standardization.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from redheart.architecture import DISTRIBUTION_TARGETS, TARGET_DIMS
from redheart.data.dataset import SplitTensors, split_targets
from redheart.scoring.metrics import evaluate_predictions

RIDGE_ALPHAS = np.logspace(-2, 4, 13)
PROBE_C = 1.0  # inverse L2 strength of the probe's logistic regression, on standardized features
PROBE_MAX_ITER = 500
SEED = 0


def _training_rows(
    name: str, targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The present mask of `name` and its present rows (distributions normalized to sum 1)."""
    mask = np.asarray(present[name], dtype=bool)
    if not mask.any():
        raise ValueError(f"{name}: no training row has this target, so no baseline can be fitted for it")
    values = np.asarray(targets[name], dtype=np.float64).reshape(len(mask), -1)[mask]
    if values.shape[1] != TARGET_DIMS[name]:
        raise ValueError(f"{name}: expected {TARGET_DIMS[name]} values per row, got {values.shape[1]}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: non-finite training target in a present row")
    if name in DISTRIBUTION_TARGETS:
        totals = values.sum(axis=1, keepdims=True)
        if (values < 0).any() or (totals <= 0).any():
            raise ValueError(f"{name}: every present training row needs non-negative values with a positive sum")
        values = values / totals  # vote counts and probabilities alike become distributions
    return mask, values


def constant_predictions(
    targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], n_eval: int
) -> dict[str, np.ndarray]:
    preds = {}
    for name in TARGET_DIMS:
        _, values = _training_rows(name, targets, present)
        preds[name] = np.tile(values.mean(axis=0), (n_eval, 1))
    return preds


def soft_logistic_regression(features: np.ndarray, distributions: np.ndarray) -> Pipeline:
    """Standardized multinomial logistic regression fitted to soft targets.

    Each row is repeated once per class it puts mass on, labelled with that class and weighted by the mass,
    so the weighted log-loss equals the cross-entropy against the full distribution, not just its argmax.
    """
    rows, classes = np.nonzero(distributions > 0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=SEED))
    model.fit(features[rows], classes, logisticregression__sample_weight=distributions[rows, classes])
    return model


def _class_probabilities(model: Pipeline, features: np.ndarray, n_classes: int) -> np.ndarray:
    # A class no training row put mass on is absent from the fitted model; it gets probability 0.
    probs = np.zeros((len(features), n_classes))
    probs[:, model.classes_] = model.predict_proba(features)
    return probs


def fit_probe(
    train_features: np.ndarray, targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> dict[str, Pipeline]:
    """The linear probe's fitted models, one per target, each on the training rows that have the target."""
    models = {}
    for name in TARGET_DIMS:
        mask, values = _training_rows(name, targets, present)
        if name in DISTRIBUTION_TARGETS:
            models[name] = soft_logistic_regression(train_features[mask], values)
        else:
            ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
            models[name] = ridge.fit(train_features[mask], values)
    return models


def probe_predict(models: Mapping[str, Pipeline], features: np.ndarray) -> dict[str, np.ndarray]:
    """Predictions of fitted probe models (fit_probe) on `features`."""
    preds = {}
    for name, width in TARGET_DIMS.items():
        if name in DISTRIBUTION_TARGETS:
            preds[name] = _class_probabilities(models[name], features, width)
        else:
            preds[name] = models[name].predict(features).reshape(-1, width)
    return preds


def probe_predictions(
    train_features: np.ndarray,
    targets: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    eval_features: np.ndarray,
) -> dict[str, np.ndarray]:
    return probe_predict(fit_probe(train_features, targets, present), eval_features)


def _features(
    split: str, features: np.ndarray, targets: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]
) -> np.ndarray:
    """`features` as a float matrix, after checking that every target and mask of the split has its rows."""
    out = np.asarray(features, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{split}_features: expected a (N, D) matrix, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"{split}_features: non-finite values in the features")
    for name in TARGET_DIMS:
        for label, array in ((f"{split}_targets", targets), (f"{split}_present", present)):
            if name not in array or len(array[name]) != len(out):
                rows = len(array[name]) if name in array else "no"
                raise ValueError(f"{label}[{name!r}]: {rows} rows for {len(out)} feature rows")
    return out


def compute_baselines(
    train_features: np.ndarray,
    train_targets: Mapping[str, np.ndarray],
    train_present: Mapping[str, np.ndarray],
    eval_features: np.ndarray,
    eval_targets: Mapping[str, np.ndarray],
    eval_present: Mapping[str, np.ndarray],
) -> dict[str, dict]:
    """Metrics (as evaluate_predictions gives them) of "class_prior", "mean_predictor" and "linear_probe"."""
    train_features = _features("train", train_features, train_targets, train_present)
    eval_features = _features("eval", eval_features, eval_targets, eval_present)
    if train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(f"features: train has {train_features.shape[1]} dimensions, eval has {eval_features.shape[1]}")
    constant = evaluate_predictions(
        constant_predictions(train_targets, train_present, len(eval_features)), eval_targets, eval_present
    )
    # These fits are small: with more BLAS/OpenMP threads they gain little alone and, beside a busy process
    # (an encoder, a training run), spin-wait 4-7x slower (measured on 2 cores). One thread is always quick.
    with threadpool_limits(limits=1):
        probe = probe_predictions(train_features, train_targets, train_present, eval_features)
    return {
        "class_prior": constant,
        "mean_predictor": copy.deepcopy(constant),
        "linear_probe": evaluate_predictions(probe, eval_targets, eval_present),
    }


def pooled_features(split: SplitTensors) -> np.ndarray:
    """Masked mean of the segment vectors: the features of the linear-probe baseline."""
    mask = split.tensors["mask"].unsqueeze(-1).float()
    return ((split.tensors["x"] * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()


def run_baselines(train_split: SplitTensors, val_split: SplitTensors) -> dict[str, Any]:
    train_targets, train_present = split_targets(train_split)
    val_targets, val_present = split_targets(val_split)
    return compute_baselines(
        pooled_features(train_split), train_targets, train_present, pooled_features(val_split), val_targets, val_present
    )

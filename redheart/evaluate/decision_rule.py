"""A decision rule for the verdict, fitted on validation: class weights applied to the predicted distribution.

Macro-F1 counts every verdict equally, so it rewards predicting the rare verdicts (INFO, NOBODY) more often
than the argmax of a calibrated distribution does. The rule predicts argmax_k(w_k * p_k); the weights are
fitted on validation alone to maximise macro-F1 against the majority vote. Only the chosen class changes:
the distribution, and so the cross-entropy and calibration measured on it, stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from redheart.scoring.metrics import PROB_EPS, _macro_f1

# The log-weights tried for one class at a time; weights are relative, so one class (the first) stays at 1.
LOG_WEIGHT_GRID = np.linspace(-3.0, 3.0, 61)
ROUNDS = 4


def apply_weights(probs: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The rule's class per row: argmax of the weighted distribution."""
    return (np.asarray(probs, dtype=np.float64) * np.asarray(weights, dtype=np.float64)).argmax(axis=1)


def reweighted(probs: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The weighted distribution renormalised: its argmax is the rule's class. For argmax metrics only;
    cross-entropy and calibration are measured on the unchanged distribution."""
    scaled = np.asarray(probs, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    return scaled / np.clip(scaled.sum(axis=1, keepdims=True), PROB_EPS, None)


def fit_class_weights(probs: np.ndarray, votes: np.ndarray) -> dict[str, Any]:
    """Coordinate search over one log-weight per class (the first fixed at 0), maximising macro-F1 of
    argmax(w * p) against the majority vote of `votes`. A move is kept only when it raises macro-F1, so
    ties keep the weights nearer plain argmax. Returns the weights and the macro-F1 before and after."""
    probs, votes = np.asarray(probs, dtype=np.float64), np.asarray(votes, dtype=np.float64)
    if probs.shape != votes.shape or probs.ndim != 2 or not len(probs):
        raise ValueError(f"decision rule: probabilities {probs.shape} and votes {votes.shape} must be equal (N, k)")
    n_classes = probs.shape[1]
    majority = votes.argmax(axis=1)
    log_probs = np.log(np.clip(probs, PROB_EPS, 1.0))

    def score(log_w: np.ndarray) -> float:
        return _macro_f1(majority, (log_probs + log_w).argmax(axis=1), n_classes)

    log_w = np.zeros(n_classes)
    plain = best = score(log_w)
    for _ in range(ROUNDS):
        improved = False
        for k in range(1, n_classes):
            for value in LOG_WEIGHT_GRID:
                trial = log_w.copy()
                trial[k] = value
                trial_score = score(trial)
                if trial_score > best + 1e-12:
                    best, log_w, improved = trial_score, trial, True
        if not improved:
            break
    return {"weights": np.exp(log_w).tolist(), "macro_f1_argmax": plain, "macro_f1_rule": best, "n": len(probs)}

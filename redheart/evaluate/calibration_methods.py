"""The calibrator kinds: each fits on probabilities p (N, K) and target distributions, and maps p to calibrated
probabilities.

  none         p unchanged;
  temperature  softmax(log p / T), one T per target (Guo et al. 2017);
  vector       softmax(w * log p + b), a weight and bias per class: vector scaling, the multi-class form
               of Platt scaling (a small L2 pull towards w = 1, b = 0 keeps classes with few rows finite);
  isotonic     one-vs-rest: per class, scikit-learn's IsotonicRegression of the class's target share on
               p_k (clipped outside the fitted range), floored at ISOTONIC_FLOOR and renormalised over the
               classes; stored as its threshold arrays and applied by linear interpolation, as
               IsotonicRegression.predict does.
The targets are distributions (LLM emotion shares, community vote shares), so fitting minimises the
cross-entropy against the target distribution, a proper score for soft labels. Parameters are plain JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax
from sklearn.isotonic import IsotonicRegression

from redheart.scoring.metrics import PROB_EPS

METHODS = ("none", "temperature", "vector", "isotonic")
ISOTONIC_FLOOR = 1e-4
VECTOR_L2 = 1e-3


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, PROB_EPS, 1.0))


def fit_temperature(probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    z = _log(probs)
    loss = lambda log_t: -(target * log_softmax(z / np.exp(log_t), axis=1)).sum(axis=1).mean()  # noqa: E731
    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return {"temperature": float(np.exp(found.x))}


def fit_vector(probs: np.ndarray, target: np.ndarray) -> dict[str, list[float]]:
    z = _log(probs)
    n, k = z.shape

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        log_q = log_softmax(z * w + b, axis=1)
        # d/dlogits of -sum(t log softmax) is softmax * sum(t) - t.
        residual = (np.exp(log_q) * target.sum(axis=1, keepdims=True) - target) / n
        value = -(target * log_q).sum(axis=1).mean() + VECTOR_L2 / 2 * (((w - 1) ** 2).sum() + (b**2).sum())
        grad = np.concatenate([(residual * z).sum(axis=0) + VECTOR_L2 * (w - 1), residual.sum(axis=0) + VECTOR_L2 * b])
        return value, grad

    found = minimize(loss_and_grad, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B")
    return {"weight": found.x[:k].tolist(), "bias": found.x[k:].tolist()}


def fit_isotonic(probs: np.ndarray, target: np.ndarray) -> dict[str, list[list[float]]]:
    xs, ys = [], []
    for k in range(probs.shape[1]):
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, k], target[:, k])
        xs.append(fitted.X_thresholds_.tolist())
        ys.append(fitted.y_thresholds_.tolist())
    return {"x": xs, "y": ys}


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, Any]]] = {
    "none": lambda probs, target: {},
    "temperature": fit_temperature,
    "vector": fit_vector,
    "isotonic": fit_isotonic,
}


def apply_method(method: str, params: dict[str, Any], probs: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (N, K) of `probs` under one fitted method."""
    probs = np.asarray(probs, dtype=np.float64)
    if method == "none":
        return probs
    if method == "temperature":
        return np.exp(log_softmax(_log(probs) / params["temperature"], axis=1))
    if method == "vector":
        return np.exp(log_softmax(_log(probs) * np.asarray(params["weight"]) + np.asarray(params["bias"]), axis=1))
    if method == "isotonic":
        columns = [np.interp(probs[:, k], x, y) for k, (x, y) in enumerate(zip(params["x"], params["y"]))]
        out = np.maximum(np.stack(columns, axis=1), ISOTONIC_FLOOR)
        return out / out.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")

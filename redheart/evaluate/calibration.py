"""Post-hoc calibration of the final model's emotion and verdict distributions, and its metrics.

`fit_calibrators` fits on VALIDATION predictions only and writes RunDir.calibration/calibrators.json
(plain JSON parameters, also copied into the final-model folder so `redheart predict` finds them there).
`calibration_report` is a pure function of given probabilities: redheart.evaluate.final calls it inside
its single read of the test split, and `write_calibration_report` saves it with the reliability diagrams.

Methods (each maps probabilities p (N, K) to calibrated probabilities):
  none         p unchanged;
  temperature  softmax(log p / T), one T per target (Guo et al. 2017);
  vector       softmax(w * log p + b), a weight and bias per class: vector scaling, the multi-class form
               of Platt scaling (a small L2 pull towards w = 1, b = 0 keeps classes with few rows finite);
  isotonic     one-vs-rest: per class, scikit-learn's IsotonicRegression of the class's target share on
               p_k (clipped outside the fitted range), floored at ISOTONIC_FLOOR and renormalised over the
               classes; stored as its threshold arrays and applied by linear interpolation, as
               IsotonicRegression.predict does.
The targets are distributions (LLM emotion shares, community vote shares), so fitting minimises the
cross-entropy against the target distribution, a proper score for soft labels. The default method of a
target is the one with the lowest NLL of k-fold cross-validation inside the validation split: the
in-sample NLL would always favour isotonic, the most flexible method.

Metrics, on the rows where the target is present: top-label ECE over N_BINS equal-width confidence bins,
MCE (the largest gap of a non-empty bin), NLL (cross-entropy against the target distribution), the Brier
score (sum over classes of the squared difference to the target distribution, mean over rows) and top-1
accuracy (a tie in the target accepts any tied class, as the headline accuracy does). A bin's accuracy is
the mean target share of the predicted class: the chance that a label drawn from the target distribution
(one LLM reading, one community vote) agrees with the prediction. With one-hot targets this is the usual
top-label ECE; with soft targets it is the ECE the fitted cross-entropy is consistent with (predicting the
target distribution itself gives ECE 0, where an argmax "truth" would call it under-confident).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

from redheart.architecture import EMOTIONS, VERDICTS
from redheart.config import RunConfig
from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import MANIFEST, sha256
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split, split_targets
from redheart.evaluate.reliability_plot import plot_reliability
from redheart.scoring.metrics import PROB_EPS, TIE_TOL
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import predict

CALIBRATED_TARGETS = {"emotions": EMOTIONS, "verdict": VERDICTS}
METHODS = ("none", "temperature", "vector", "isotonic")
N_BINS = 15
ISOTONIC_FLOOR = 1e-4
VECTOR_L2 = 1e-3
CALIBRATORS_FILE = "calibrators.json"
TEST_REPORT_FILE = "test_report.json"


@dataclass(frozen=True)
class CalibrationOptions:
    n_bins: int = N_BINS
    folds: int = 5  # cross-validation folds inside the validation split, for choosing the method
    seed: int = 0


# ---- metrics -------------------------------------------------------------------------------------


def _checked(name: str, probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    probs, target = _checked(name, probs, target)
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


# ---- methods -------------------------------------------------------------------------------------


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


# ---- fitted calibrators ----------------------------------------------------------------------------


@dataclass
class TargetCalibration:
    classes: list[str]
    method: str  # the default: lowest cross-validated NLL on validation
    reason: str
    n: int
    params: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # every method, fitted on the whole validation split
    cv_nll: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict] = field(default_factory=dict)  # {method: metrics of the out-of-fold predictions}


@dataclass
class Calibrators:
    model_sha256: str  # sha256 of the final model's manifest.json: the model these were fitted for
    n_bins: int
    folds: int
    targets: dict[str, TargetCalibration]

    def apply(self, target: str, probs: np.ndarray, method: str | None = None) -> np.ndarray:
        calibration = self.targets[target]
        chosen = calibration.method if method is None else method
        if chosen not in calibration.params:
            raise ValueError(f"{target}: no fitted {chosen!r} calibrator (fitted: {sorted(calibration.params)})")
        return apply_method(chosen, calibration.params[chosen], probs)

    def to_json(self) -> dict[str, Any]:
        return {"split": "val", **asdict(self)}

    @classmethod
    def from_json(cls, tree: dict[str, Any], source: str = CALIBRATORS_FILE) -> Calibrators:
        try:
            targets = {name: TargetCalibration(**entry) for name, entry in tree["targets"].items()}
            for name, entry in targets.items():
                if entry.method not in entry.params or name not in CALIBRATED_TARGETS:
                    raise ValueError(f"target {name!r}: default method {entry.method!r} has no parameters")
            return cls(str(tree["model_sha256"]), int(tree["n_bins"]), int(tree["folds"]), targets)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a valid calibrators file ({error})") from None


def fit_target(
    classes: tuple[str, ...], probs: np.ndarray, target: np.ndarray, options: CalibrationOptions
) -> TargetCalibration:
    """Every method fitted on all rows; the default chosen by cross-validated NLL."""
    probs, target = _checked("validation", probs, target)
    n = len(probs)
    if n < 2 * options.folds:
        return TargetCalibration(
            list(classes),
            "none",
            f"only {n} validation rows: too few for {options.folds}-fold cross-validation; left uncalibrated",
            n,
            {"none": {}},
        )
    folds = list(KFold(options.folds, shuffle=True, random_state=options.seed).split(probs))
    validation: dict[str, dict[str, Any]] = {}
    cv_nll: dict[str, float] = {}
    for method, fitter in FITTERS.items():
        out_of_fold = np.empty_like(probs)
        for train, held in folds:
            out_of_fold[held] = apply_method(method, fitter(probs[train], target[train]), probs[held])
        validation[method] = calibration_metrics(out_of_fold, target, options.n_bins, method)
        cv_nll[method] = validation[method]["nll"]
    method = min(METHODS, key=lambda m: (cv_nll[m], METHODS.index(m)))
    reason = (
        f"lowest {options.folds}-fold cross-validated NLL on validation ({cv_nll[method]:.4f}; "
        f"uncalibrated {cv_nll['none']:.4f})"
    )
    params = {m: fitter(probs, target) for m, fitter in FITTERS.items()}
    return TargetCalibration(list(classes), method, reason, n, params, cv_nll, validation)


def calibration_report(
    calibrators: Calibrators,
    probs_by_target: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Before/after metrics of every method on given (test) probabilities; pure, reads no file."""
    out: dict[str, Any] = {"n_bins": calibrators.n_bins, "targets": {}}
    for name, calibration in calibrators.targets.items():
        rows = np.asarray(present[name], dtype=bool)
        if not rows.any():
            out["targets"][name] = {"n": 0, "method": calibration.method}
            continue
        probs, target = np.asarray(probs_by_target[name])[rows], np.asarray(targets[name])[rows]
        after = {
            m: calibration_metrics(calibrators.apply(name, probs, m), target, calibrators.n_bins, name)
            for m in calibration.params
        }
        out["targets"][name] = {
            "n": int(rows.sum()),
            "method": calibration.method,
            "before": after.get("none") or calibration_metrics(probs, target, calibrators.n_bins, name),
            "after": after[calibration.method],
            "methods": after,
        }
    return out


# ---- run folder ---------------------------------------------------------------------------------------


def fit_calibrators(run: RunDir, config: RunConfig, options: CalibrationOptions = CalibrationOptions()) -> Calibrators:
    """Fit on the final model's validation predictions; write calibrators.json (run + final model) and the
    validation reliability diagrams (out-of-fold, before/after)."""
    if not (run.final_model / MANIFEST).exists():
        raise FileNotFoundError(f"{run.final_model}: no final model; run `redheart crossover --run {run.root}` first")
    model, _ = load_final_model(run.final_model)
    val = load_split(run, "val")
    probs = predict(model, val, batch_size=config.select.batch_size, device=config.train.device)["fused"]
    targets, present = split_targets(val)
    fitted = {}
    for name, classes in CALIBRATED_TARGETS.items():
        rows = np.asarray(present[name], dtype=bool)
        fitted[name] = fit_target(classes, probs[name][rows], targets[name][rows], options)
    calibrators = Calibrators(sha256(run.final_model / MANIFEST), options.n_bins, options.folds, fitted)
    for path in (run.calibration / CALIBRATORS_FILE, run.final_model / CALIBRATORS_FILE):
        write_json(path, calibrators.to_json())
    for name, calibration in fitted.items():
        if calibration.validation:
            plot_reliability(
                run.calibration / f"reliability_val_{name}.png",
                calibration.validation["none"]["bins"],
                calibration.validation[calibration.method]["bins"],
                f"{name}, validation (out-of-fold)",
                calibration.method,
            )
    return calibrators


def load_calibrators(path: Path) -> Calibrators:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no calibrators; run the calibration phase (fit_calibrators) first")
    return Calibrators.from_json(read_json(path), str(path))


def write_calibration_report(run: RunDir, report: dict[str, Any], split: str = "test") -> None:
    """RunDir.calibration/<split>_report.json and reliability_<split>_<target>.png (before/after) per target."""
    write_json(run.calibration / f"{split}_report.json", report)
    for name, entry in report["targets"].items():
        if entry.get("n"):
            plot_reliability(
                run.calibration / f"reliability_{split}_{name}.png",
                entry["before"]["bins"],
                entry["after"]["bins"],
                f"{name}, {split}",
                entry["method"],
            )

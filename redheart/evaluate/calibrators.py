"""Fitted calibrators: per calibrated target, every method fitted on validation and the default chosen there;
their JSON form (calibrators.json), and their before/after metrics on given probabilities.

The default method of a target is the one with the lowest NLL of k-fold cross-validation inside the validation
split: the in-sample NLL would always favour isotonic, the most flexible method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from redheart.architecture import DISTRIBUTION_TARGETS, target
from redheart.config import CalibrationConfig
from redheart.core.atomic import read_json
from redheart.evaluate.calibration_methods import FITTERS, METHODS, apply_method
from redheart.evaluate.calibration_metrics import calibration_metrics, checked

CALIBRATED_TARGETS = {name: target(name).fields for name in DISTRIBUTION_TARGETS}


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
    def from_json(cls, tree: dict[str, Any], source: str) -> Calibrators:
        """The calibrators of a calibrators.json tree; ValueError naming `source` (its path) if it is not one."""
        try:
            targets = {name: TargetCalibration(**entry) for name, entry in tree["targets"].items()}
            for name, entry in targets.items():
                if entry.method not in entry.params or name not in CALIBRATED_TARGETS:
                    raise ValueError(f"target {name!r}: default method {entry.method!r} has no parameters")
            return cls(str(tree["model_sha256"]), int(tree["n_bins"]), int(tree["folds"]), targets)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a valid calibrators file ({error})") from None


def fit_target(
    classes: tuple[str, ...], probs: np.ndarray, target: np.ndarray, options: CalibrationConfig
) -> TargetCalibration:
    """Every method fitted on all rows; the default chosen by cross-validated NLL."""
    probs, target = checked("validation", probs, target)
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


def load_calibrators(path: Path) -> Calibrators:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no calibrators; run the calibration phase (fit_calibrators) first")
    return Calibrators.from_json(read_json(path), str(path))

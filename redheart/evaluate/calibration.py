"""The calibrate phase's files: post-hoc calibration of the final model's emotion and verdict distributions.

`fit_calibrators` fits on VALIDATION predictions only (calibrators.py, with the run's `calibration` settings)
and writes RunDir.calibrators (plain JSON parameters, also copied into the final-model folder so
`redheart predict` finds them there) and the validation reliability diagrams. The test report is
calibrators.calibration_report, computed by redheart.evaluate.final inside its single read of the test split;
`write_calibration_report` saves it with its reliability diagrams.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from redheart.config import RunConfig
from redheart.core.atomic import write_json
from redheart.core.checkpoint_files import sha256
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split, split_targets
from redheart.evaluate.calibrators import CALIBRATED_TARGETS, Calibrators, fit_target
from redheart.evaluate.reliability_plot import plot_reliability
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import predict


def fit_calibrators(run: RunDir, config: RunConfig) -> Calibrators:
    """Fit on the final model's validation predictions; write calibrators.json (run + final model) and the
    validation reliability diagrams (out-of-fold, before/after)."""
    if not run.model_files.manifest.exists():
        raise FileNotFoundError(f"{run.final_model}: no final model; {run_first(run, run.final_model)}")
    model, _ = load_final_model(run.final_model)
    val = load_split(run, "val")
    probs = predict(model, val, batch_size=config.select.batch_size, device=config.train.device)["fused"]
    targets, present = split_targets(val)
    options = config.calibration
    fitted = {}
    for name, classes in CALIBRATED_TARGETS.items():
        rows = np.asarray(present[name], dtype=bool)
        fitted[name] = fit_target(classes, probs[name][rows], targets[name][rows], options)
    calibrators = Calibrators(sha256(run.model_files.manifest), options.n_bins, options.folds, fitted)
    for path in (run.calibrators, run.model_files.calibrators):
        write_json(path, calibrators.to_json())
    for name, calibration in fitted.items():
        if calibration.validation:
            plot_reliability(
                run.reliability_plot("val", name),
                calibration.validation["none"]["bins"],
                calibration.validation[calibration.method]["bins"],
                f"{name}, validation (out-of-fold)",
                calibration.method,
            )
    return calibrators


def write_calibration_report(run: RunDir, report: dict[str, Any], split: str = "test") -> None:
    """RunDir.calibration_report(split) and a reliability diagram (before/after) per target."""
    write_json(run.calibration_report(split), report)
    for name, entry in report["targets"].items():
        if entry.get("n"):
            plot_reliability(
                run.reliability_plot(split, name),
                entry["before"]["bins"],
                entry["after"]["bins"],
                f"{name}, {split}",
                entry["method"],
            )

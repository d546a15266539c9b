"""The final evaluation: the one time the test split is read, every candidate beside the three baselines.

Every choice (sweet spots, refinements, soups, fusions, the final model) is made on validation by
redheart.select.crossover before the test split is loaded; run here first if it has not been. The test
split is then read once, every candidate and baseline is scored on it with bootstrap 95% intervals, and
the results are written once: a second call prints them from disk instead of reading the test split again.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

from redheart.config import RunConfig
from redheart.core.atomic import read_json, write_json
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, load_split, split_targets
from redheart.evaluate.calibration import calibration_report, fit_calibrators, write_calibration_report
from redheart.model.model import RedHeartModel
from redheart.scoring.baselines import constant_predictions, pooled_features, probe_predictions, run_baselines
from redheart.scoring.metrics import HEADLINE_LABELS, evaluate_predictions, headline
from redheart.select.candidates import fused_of
from redheart.select.crossover import CROSSOVER, ENSEMBLE, REFINED, crossover, load_candidates
from redheart.select.intervals import headline_intervals
from redheart.select.outputs import SplitOutputs, as_numpy, fused_loss

CALIBRATION_METRICS = ("ece", "mce", "nll", "brier")


def _scored(preds: dict[str, np.ndarray], split: SplitTensors, n_boot: int, seed: int) -> dict[str, Any]:
    targets, present = split_targets(split)
    metrics = evaluate_predictions(preds, targets, present)
    return {"fused": metrics, "headline": headline(metrics), "intervals": headline_intervals(preds, targets, present, n_boot, seed)}


def _baseline_predictions(train: SplitTensors, test: SplitTensors) -> dict[str, dict[str, np.ndarray]]:
    targets, present = split_targets(train)
    constant = constant_predictions(targets, present, len(test))
    probe = probe_predictions(pooled_features(train), targets, present, pooled_features(test))
    return {"class_prior": constant, "mean_predictor": constant, "linear_probe": probe}


def evaluate_test(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Read the test split once; score every candidate and baseline on it with 95% intervals; write
    test_results.json."""
    path = run.test_results
    if path.exists():
        return read_json(path)
    if not (run.crossover_candidates).exists():
        crossover(run, config)  # validation only; the test split is not read before this returns
    candidates, plan = load_candidates(run)
    options = config.select
    train_split = load_split(run, "train")
    if not run.baselines.exists():
        write_json(run.baselines, run_baselines(train_split, load_split(run, "val")))
    val_baselines = read_json(run.baselines)
    calibrators = fit_calibrators(run, config)  # validation only, before the test split is read
    test_split = load_split(run, "test")

    baselines = {}
    for name, preds in _baseline_predictions(train_split, test_split).items():
        baselines[name] = {**_scored(preds, test_split, options.bootstrap_samples, options.bootstrap_seed), "val_headline": headline(val_baselines[name])}
    model = RedHeartModel(config.model, input_dim=test_split.input_dim, max_segments=test_split.max_segments)
    cache = SplitOutputs(model, test_split, options.batch_size)
    fused_by_name: dict = {}
    models = {}
    for candidate in candidates:
        fused = fused_by_name[candidate.name] = fused_of(candidate, cache, run, fused_by_name)
        models[candidate.name] = {
            **candidate.to_json(),
            **_scored(as_numpy(fused), test_split, options.bootstrap_samples, options.bootstrap_seed),
            "loss": fused_loss(fused, test_split),
        }
    test_targets, test_present = split_targets(test_split)
    calibration = calibration_report(calibrators, as_numpy(fused_by_name[plan["final_model"]]), test_targets, test_present)
    write_calibration_report(run, calibration)
    results = {
        "split": "test",
        "n": len(test_split),
        "evaluated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "bootstrap": {"samples": options.bootstrap_samples, "seed": options.bootstrap_seed, "level": 0.95},
        "final_model": plan["final_model"],
        "best_on_validation": plan["best"],
        "validation_conclusion": plan["conclusion"],
        "baselines": baselines,
        "models": models,
        "calibration": {
            target: {"method": entry["method"], **{when: {m: entry[when][m] for m in CALIBRATION_METRICS} for when in ("before", "after")}}
            for target, entry in calibration["targets"].items()
            if entry.get("n")
        },
    }
    results["test_conclusion"] = test_conclusion(results)
    write_json(path, results)
    return read_json(path)  # as a later call returns it (lists, not tuples)


def test_conclusion(results: dict[str, Any]) -> str:
    """Crossover against the best single checkpoint on the test split, in words, intervals included."""
    models = results["models"]
    single = next((n for n in models if n.startswith("best on validation")), None)
    if single is None:
        return "no best single checkpoint to compare crossover with"
    lines = []
    for name in (CROSSOVER, REFINED, ENSEMBLE):
        if name not in models:
            continue
        parts = []
        for key, better in (("emotion_accuracy", 1), ("verdict_macro_f1", 1), ("regression_mae", -1)):
            a, b = models[name]["headline"][key], models[single]["headline"][key]
            if a is None or b is None:
                continue
            word = "better" if (a - b) * better > 0 else "not better"
            lo, hi = models[name]["intervals"][key]
            parts.append(f"{HEADLINE_LABELS[key]} {a:.4f} [{lo:.4f}, {hi:.4f}] vs {b:.4f} ({word})")
        lines.append(f"{name} vs {single} on test: " + "; ".join(parts) + ".")
    return " ".join(lines)


def _cell(value: float | None) -> str:
    return f"{'—':>8}" if value is None else f"{value:>8.4f}"


def _ci_cell(value: float | None, interval: list | tuple | None) -> str:
    if value is None:
        return f"{'—':>24}"
    lo, hi = interval or (None, None)
    band = "" if lo is None else f" [{lo:.3f},{hi:.3f}]"
    return f"{value:>8.4f}{band:<16}"


def format_results(results: dict[str, Any]) -> str:
    """Validation and test tables of every candidate and baseline; test numbers with 95% bootstrap intervals."""
    baselines = dict(results["baselines"])
    # The training mean is both the class prior (distributions) and the mean predictor (regression).
    if baselines.get("class_prior", {}).get("headline") == baselines.get("mean_predictor", {}).get("headline"):
        baselines = {"class_prior / mean_predictor": baselines.pop("class_prior"), **baselines}
        baselines.pop("mean_predictor")
    rows = [(f"baseline: {name.replace('_', ' ')}", entry, entry.get("val_headline", {}), None) for name, entry in baselines.items()]
    rows += [(name, entry, entry.get("val", {}).get("headline", {}), entry.get("val", {}).get("loss")) for name, entry in results["models"].items()]
    width = max(len(name) for name, *_ in rows)
    labels = list(HEADLINE_LABELS.values())
    header = f"{'model':<{width}}  {'loss':>8}  " + "  ".join(f"{label:>8}" for label in labels)
    lines = ["Validation (every choice was made here; fusions re-fitted on it):", header, "-" * len(header)]
    for name, _, val, loss in rows:
        lines.append(f"{name:<{width}}  {_cell(loss)}  " + "  ".join(_cell(val.get(key)) for key in HEADLINE_LABELS))
    header = f"{'model':<{width}}  " + "  ".join(f"{label:<24}" for label in labels)
    lines += ["", f"Test split (n={results['n']}, read once at {results['evaluated_at']}; 95% bootstrap intervals):", header, "-" * len(header)]
    for name, entry, _, _ in rows:
        intervals = entry.get("intervals", {})
        lines.append(f"{name:<{width}}  " + "  ".join(_ci_cell(entry["headline"].get(k), intervals.get(k)) for k in HEADLINE_LABELS))
    lines.append("accuracy / F1: higher is better; MAE: mean over the 9 regression outputs, lower is better")
    if "final_model" in results:
        lines += [f"final model (best single network on validation): {results['final_model']}", results["validation_conclusion"], results["test_conclusion"]]
    for target, entry in results.get("calibration", {}).items():
        before, after = entry["before"], entry["after"]
        lines.append(
            f"calibration of {target} on test ({entry['method']}, fitted on validation): "
            + ", ".join(f"{m.upper()} {before[m]:.4f} -> {after[m]:.4f}" for m in CALIBRATION_METRICS)
        )
    return "\n".join(lines)

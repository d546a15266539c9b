"""The final evaluation: the one time the test split is read, every candidate beside the three baselines.

Every choice (sweet spots, refinements, soups, fusions, the final model, calibration) is made on validation
by the earlier phases; a missing one stops here with the command that makes it, and nothing of theirs is
redone or overwritten. The test split is then read once, every candidate and baseline is scored on it with
bootstrap 95% intervals, and the results are written with a fingerprint of what they measured
(redheart.evaluate.test_reads). A later call prints them from disk while the fingerprint matches, refuses
when it does not, and reads the test split again only when asked to, recording that read.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import numpy as np

from redheart.config import RunConfig
from redheart.core.atomic import read_json, write_json
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, load_split, split_targets
from redheart.evaluate.calibration import write_calibration_report
from redheart.evaluate.calibrators import Calibrators, calibration_report
from redheart.evaluate.decision_rule import current_rules, final_model_calibrators, reweighted, served_predictions
from redheart.evaluate.model_card import write_model_card
from redheart.evaluate.test_reads import check_fingerprint, fingerprint, format_reads, read_record
from redheart.model.model import RedHeartModel
from redheart.scoring.baselines import constant_predictions, fit_probe, pooled_features, probe_predict
from redheart.scoring.metrics import (
    COMPARED,
    HEADLINE,
    METRICS,
    SUMMARY,
    direction_words,
    evaluate_predictions,
    headline,
)
from redheart.select.candidates import Candidate, fused_of
from redheart.select.crossover import CROSSOVER, ENSEMBLE, REFINED, load_candidates
from redheart.select.intervals import metric_intervals, paired_difference_intervals
from redheart.select.outputs import SplitOutputs, as_numpy, fused_loss

CALIBRATION_METRICS = ("ece", "mce", "nll", "brier")


PROBE = "linear_probe"
RULE_SCORED = (METRICS["verdict_accuracy"], METRICS["verdict_macro_f1"])


def _with_rule(preds: dict[str, np.ndarray], weights: list[float]) -> dict[str, np.ndarray]:
    return {**preds, "verdict": reweighted(preds["verdict"], weights)}


def _rule_scores(
    preds: dict[str, np.ndarray], weights: list[float], split: SplitTensors, n_boot: int, seed: int, distribution: str
) -> dict[str, Any]:
    """Verdict accuracy and macro-F1 of the rule's classes and of plain argmax on the same distribution
    (`preds`, described by `distribution`), with the rule's bootstrap intervals."""
    targets, present = split_targets(split)
    ruled = _with_rule(preds, weights)
    metrics = evaluate_predictions(ruled, targets, present)["verdict"]
    argmax = evaluate_predictions(preds, targets, present)["verdict"]
    intervals = metric_intervals(ruled, targets, present, n_boot, seed, RULE_SCORED)
    return {
        "distribution": distribution,
        "weights": weights,
        "verdict_accuracy": metrics.get("accuracy"),
        "verdict_macro_f1": metrics.get("macro_f1"),
        "argmax_accuracy": argmax.get("accuracy"),
        "argmax_macro_f1": argmax.get("macro_f1"),
        "intervals": intervals,
    }


def paired_difference(
    final: dict[str, np.ndarray],
    probe: dict[str, np.ndarray],
    ruled_final: dict[str, np.ndarray],
    ruled_probe: dict[str, np.ndarray],
    split: SplitTensors,
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """final model - linear probe on every metric of COMPARED: the point difference and its paired 95%
    bootstrap interval (both models scored on the same resampled rows). `ruled_*`: the predictions whose
    argmax is each one's decision rule (for the final model, on the distribution predict serves), on which
    the metrics declared `on_rule` are scored."""
    targets, present = split_targets(split)
    values = {}
    for name, preds, ruled_preds in (("final", final, ruled_final), ("probe", probe, ruled_probe)):
        metrics = evaluate_predictions(preds, targets, present)
        ruled = evaluate_predictions(ruled_preds, targets, present)
        values[name] = {m.key: m.value(ruled if m.on_rule else metrics) for m in COMPARED}
    plain, on_rule = [m for m in COMPARED if not m.on_rule], [m for m in COMPARED if m.on_rule]
    intervals = {
        **paired_difference_intervals(final, probe, targets, present, n_boot, seed, plain),
        **paired_difference_intervals(ruled_final, ruled_probe, targets, present, n_boot, seed, on_rule),
    }
    out = {}
    for key in (m.key for m in COMPARED):
        a, b = values["final"][key], values["probe"][key]
        out[key] = {
            "final": a,
            "probe": b,
            "difference": None if a is None or b is None else a - b,
            "interval": list(intervals[key]),
        }
    return out


def difference_conclusion(difference: dict[str, dict[str, Any]]) -> str:
    """One sentence from the paired intervals: where the final model is better, worse, or not shown to differ."""
    better, worse, unclear = [], [], []
    for key, entry in difference.items():
        lo, hi = entry["interval"]
        if entry["difference"] is None or lo is None:
            continue
        text = f"{METRICS[key].label} {entry['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        sign = METRICS[key].sign
        if sign * lo > 0 and sign * hi > 0:
            better.append(text)
        elif sign * lo < 0 and sign * hi < 0:
            worse.append(text)
        else:
            unclear.append(text)
    parts = [
        f"better than the probe on {'; '.join(better)}" if better else "better than the probe on no metric",
        f"worse on {'; '.join(worse)}" if worse else "worse on none",
        f"not shown to differ (the interval holds 0) on {'; '.join(unclear)}" if unclear else "",
    ]
    return (
        "Final model - linear probe on test, paired bootstrap 95% intervals of the difference: the final model is "
        + ", ".join(p for p in parts if p)
        + "."
    )


def _scored(preds: dict[str, np.ndarray], split: SplitTensors, n_boot: int, seed: int) -> dict[str, Any]:
    targets, present = split_targets(split)
    metrics = evaluate_predictions(preds, targets, present)
    return {
        "fused": metrics,
        "headline": headline(metrics),
        "intervals": metric_intervals(preds, targets, present, n_boot, seed),
    }


def _baseline_predictions(train: SplitTensors, test: SplitTensors, probe: dict) -> dict[str, dict[str, np.ndarray]]:
    targets, present = split_targets(train)
    constant = constant_predictions(targets, present, len(test))
    return {"class_prior": constant, "mean_predictor": constant, PROBE: probe_predict(probe, pooled_features(test))}


@dataclass(frozen=True)
class _TestInputs:
    """What the test phase scores with: the choices the earlier phases made on validation, the probe refitted on
    the training split, and the test split, read once."""

    candidates: list[Candidate]
    plan: dict[str, Any]
    train: SplitTensors
    val_baselines: dict[str, Any]
    calibrators: Calibrators
    rules: dict[str, Any]
    probe: dict[str, Any]
    test: SplitTensors


def evaluate_test(run: RunDir, config: RunConfig, reread: bool = False) -> dict[str, Any]:
    """Score every candidate and baseline on the test split with 95% intervals; write test_results.json.

    Without `reread`, results already on disk are returned while they measured the run's current
    artefacts, and StaleTestResults is raised when they did not. With `reread`, the test split is read
    again and the read is appended to the file's `reads`.
    """
    path = run.test_results
    current = fingerprint(run, config)  # FileNotFoundError naming the phase to run first if an input is missing
    previous = read_json(path) if path.exists() else None
    if previous is not None and not reread:
        check_fingerprint(run, previous, current)
        return previous
    inputs = _read_inputs(run)
    boot = (config.select.bootstrap_samples, config.select.bootstrap_seed)
    baselines, baseline_preds = _score_baselines(inputs, boot)
    models, final_preds = _score_candidates(run, config, inputs, boot)
    # The rule is scored on what predict serves: the final-model folder's outputs, calibrated, with the rule of
    # that mode, so a user's labels reproduce this figure.
    served = served_predictions(run.final_model, inputs.test, inputs.calibrators, device=config.train.device)
    models[inputs.plan["final_model"]]["decision_rule"] = _served_rule_scores(served, inputs, boot)
    difference = _final_vs_probe(final_preds, baseline_preds[PROBE], served, inputs, boot)
    calibration = _test_calibration(run, inputs, final_preds)
    results = _results(config, inputs, baselines, models, difference, calibration)
    results["fingerprint"] = current
    results["reads"] = _reads(previous, current)
    write_json(path, results)
    write_model_card(run)
    return read_json(path)  # as a later call returns it (lists, not tuples)


def _read_inputs(run: RunDir) -> _TestInputs:
    """Every input of the test phase, the test split last, once everything else it needs is there."""
    if not run.baselines.exists():
        raise FileNotFoundError(f"{run.baselines}: no validation baselines; {run_first(run, run.baselines)}")
    candidates, plan = load_candidates(run)
    train_split = load_split(run, "train")
    val_baselines = read_json(run.baselines)
    calibrators = final_model_calibrators(run)  # the copy predict reads
    rules = current_rules(run)  # fitted on validation by the calibrate phase; never refitted here
    train_targets, train_present = split_targets(train_split)
    probe = fit_probe(pooled_features(train_split), train_targets, train_present)
    test_split = load_split(run, "test")
    return _TestInputs(candidates, plan, train_split, val_baselines, calibrators, rules, probe, test_split)


def _score_baselines(
    inputs: _TestInputs, boot: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The baselines' scores on test (the probe's with its decision rule too), and their predictions."""
    preds = _baseline_predictions(inputs.train, inputs.test, inputs.probe)
    baselines = {
        name: {**_scored(p, inputs.test, *boot), "val_headline": headline(inputs.val_baselines[name])}
        for name, p in preds.items()
    }
    baselines[PROBE]["decision_rule"] = _rule_scores(
        preds[PROBE], inputs.rules[PROBE]["weights"], inputs.test, *boot, "uncalibrated"
    )
    return baselines, preds


def _score_candidates(
    run: RunDir, config: RunConfig, inputs: _TestInputs, boot: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every candidate's scores on test, in the crossover's order, and the final model's predictions."""
    test = inputs.test
    model = RedHeartModel(config.model, input_dim=test.input_dim, max_segments=test.max_segments)
    cache = SplitOutputs(model, test, config.select.batch_size, config.train.device)
    fused_by_name: dict = {}
    models = {}
    for candidate in inputs.candidates:
        fused = fused_by_name[candidate.name] = fused_of(candidate, cache, run, fused_by_name)
        models[candidate.name] = {
            **candidate.to_json(),
            **_scored(as_numpy(fused), test, *boot),
            "loss": fused_loss(fused, test),
        }
    return models, as_numpy(fused_by_name[inputs.plan["final_model"]])


def _served_rule_scores(served: dict[str, np.ndarray], inputs: _TestInputs, boot: tuple[int, int]) -> dict[str, Any]:
    rule = inputs.rules["final_model"]["calibrated"]
    return _rule_scores(served, rule["weights"], inputs.test, *boot, rule["distribution"])


def _final_vs_probe(
    final: dict[str, np.ndarray],
    probe: dict[str, np.ndarray],
    served: dict[str, np.ndarray],
    inputs: _TestInputs,
    boot: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """The paired difference, each model's rule applied to its own distribution (the final model's: served)."""
    return paired_difference(
        final,
        probe,
        _with_rule(served, inputs.rules["final_model"]["calibrated"]["weights"]),
        _with_rule(probe, inputs.rules[PROBE]["weights"]),
        inputs.test,
        *boot,
    )


def _test_calibration(run: RunDir, inputs: _TestInputs, final: dict[str, np.ndarray]) -> dict[str, Any]:
    """The calibrators on the final model's test predictions: the full report written to the calibration folder,
    the metrics before and after per target returned for test_results.json."""
    targets, present = split_targets(inputs.test)
    calibration = calibration_report(inputs.calibrators, final, targets, present)
    write_calibration_report(run, calibration)
    return {
        target: {
            "method": entry["method"],
            **{when: {m: entry[when][m] for m in CALIBRATION_METRICS} for when in ("before", "after")},
        }
        for target, entry in calibration["targets"].items()
        if entry.get("n")
    }


def _results(
    config: RunConfig,
    inputs: _TestInputs,
    baselines: dict[str, Any],
    models: dict[str, Any],
    difference: dict[str, dict[str, Any]],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """test_results.json but its fingerprint and read log."""
    options, plan, rules = config.select, inputs.plan, inputs.rules
    final_candidate = next(c for c in inputs.candidates if c.name == plan["final_model"])
    results = {
        "split": "test",
        "n": len(inputs.test),
        "evaluated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "bootstrap": {"samples": options.bootstrap_samples, "seed": options.bootstrap_seed, "level": 0.95},
        "final_model": plan["final_model"],
        "best_on_validation": plan["best"],
        "validation_conclusion": plan["conclusion"],
        "baselines": baselines,
        "models": models,
        "decision_rule": {"fitted_on": "val", "n_val": rules["n"], **{k: rules[k] for k in ("final_model", PROBE)}},
        "final_vs_probe": difference,
        "final_vs_probe_conclusion": difference_conclusion(difference),
        "verdict_sources": final_candidate.fusion.source_weights("verdict") if final_candidate.fusion else None,
        "calibration": calibration,
    }
    results["test_conclusion"] = test_conclusion(results)
    return results


def _reads(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, Any]]:
    """The read log with this read appended."""
    earlier = list((previous or {}).get("reads", []))
    if previous is not None and not earlier:  # written before reads were logged: that was read 1
        earlier = [
            {
                "read": 1,
                "at": previous.get("evaluated_at"),
                "fingerprint": previous.get("fingerprint"),
                "why": "first read (no read log)",
            }
        ]
    return [*earlier, read_record(len(earlier) + 1, current, earlier[-1] if earlier else None)]


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
        for metric in SUMMARY:
            a, b = models[name]["headline"][metric.key], models[single]["headline"][metric.key]
            if a is None or b is None:
                continue
            word = "better" if (a - b) * metric.sign > 0 else "not better"
            lo, hi = models[name]["intervals"][metric.key]
            parts.append(f"{metric.label} {a:.4f} [{lo:.4f}, {hi:.4f}] vs {b:.4f} ({word})")
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
    rows = [
        (f"baseline: {name.replace('_', ' ')}", entry, entry.get("val_headline", {}), None)
        for name, entry in baselines.items()
    ]
    rows += [
        (name, entry, entry.get("val", {}).get("headline", {}), entry.get("val", {}).get("loss"))
        for name, entry in results["models"].items()
    ]
    width = max(len(name) for name, *_ in rows)
    labels = [metric.label for metric in HEADLINE]
    header = f"{'model':<{width}}  {'loss':>8}  " + "  ".join(f"{label:>8}" for label in labels)
    lines = ["Validation (every choice was made here; fusions re-fitted on it):", header, "-" * len(header)]
    for name, _, val, loss in rows:
        lines.append(f"{name:<{width}}  {_cell(loss)}  " + "  ".join(_cell(val.get(m.key)) for m in HEADLINE))
    header = f"{'model':<{width}}  " + "  ".join(f"{label:<24}" for label in labels)
    reads = len(results.get("reads", [])) or 1
    at = results["evaluated_at"]
    when = f"read once at {at}" if reads == 1 else f"read {reads} times, these numbers at {at}"
    lines += ["", f"Test split (n={results['n']}, {when}; 95% bootstrap intervals):", header, "-" * len(header)]
    for name, entry, _, _ in rows:
        intervals = entry.get("intervals", {})
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(_ci_cell(entry["headline"].get(m.key), intervals.get(m.key)) for m in HEADLINE)
        )
    lines.append(direction_words(HEADLINE))
    if "final_model" in results:
        lines += [
            f"final model (best single network on validation): {results['final_model']}",
            results["validation_conclusion"],
            results["test_conclusion"],
        ]
    lines += format_difference(results)
    for target, entry in results.get("calibration", {}).items():
        before, after = entry["before"], entry["after"]
        lines.append(
            f"calibration of {target} on test ({entry['method']}, fitted on validation): "
            + ", ".join(f"{m.upper()} {before[m]:.4f} -> {after[m]:.4f}" for m in CALIBRATION_METRICS)
        )
    lines.append(format_reads(results))
    return "\n".join(lines)


def format_difference(results: dict[str, Any]) -> list[str]:
    """The decision rule's test numbers and the final - probe table with paired intervals (empty if absent)."""
    if "final_vs_probe" not in results:
        return []
    lines = [
        "",
        (
            f"Verdict decision rule (class weights on the predicted distribution, fitted on validation, "
            f"n={results['decision_rule']['n_val']}); test:"
        ),
    ]
    final = results["models"][results["final_model"]]
    entries = (("final model", final), ("linear probe", results["baselines"][PROBE]))
    for name, entry in entries:
        rule = entry.get("decision_rule", {})
        lo, hi = rule.get("intervals", {}).get("verdict_macro_f1", (None, None))
        weights = ", ".join(f"{w:.2f}" for w in rule.get("weights", []))
        argmax = rule.get("argmax_macro_f1", entry["headline"]["verdict_macro_f1"])
        lines.append(
            f"  {name:<12} on the {rule.get('distribution', 'predicted')} distribution: verdict F1 argmax "
            f"{argmax:.4f}, with the rule {rule.get('verdict_macro_f1', float('nan')):.4f} [{lo:.3f},{hi:.3f}]; "
            f"weights [{weights}]"
        )
    if results.get("verdict_sources"):
        shares = ", ".join(f"{k} {v:.2f}" for k, v in results["verdict_sources"].items())
        lines.append(f"  verdict fusion weights (fitted on validation): {shares}")
    header = f"{'metric':<18}  {'final':>8}  {'probe':>8}  {'final-probe':>11}  95% interval of the difference"
    lines += [
        "",
        "Final model - linear probe on test (paired bootstrap: both scored on the same resampled rows):",
        header,
        "-" * len(header),
    ]
    for key, entry in results["final_vs_probe"].items():
        if entry["difference"] is None:
            continue
        lo, hi = entry["interval"]
        band = "—" if lo is None else f"[{lo:+.4f}, {hi:+.4f}]"
        lines.append(
            f"{METRICS[key].label:<18}  {entry['final']:>8.4f}  {entry['probe']:>8.4f}  "
            f"{entry['difference']:>+11.4f}  {band}"
        )
    lines.append(direction_words(COMPARED))
    lines.append(results["final_vs_probe_conclusion"])
    return lines

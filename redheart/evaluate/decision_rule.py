"""A decision rule for the verdict, fitted on validation: class weights applied to the predicted distribution.

Macro-F1 counts every verdict equally, so it rewards predicting the rare verdicts (INFO, NOBODY) more often
than the argmax of a calibrated distribution does. The rule predicts argmax_k(w_k * p_k); the weights are
fitted on validation alone to maximise macro-F1 against the majority vote. Only the chosen class changes:
the distribution, and so the cross-entropy and calibration measured on it, stay as they are.

The rule travels with the final model (final_model/decision_rule.json): it is fitted after calibration, in a
validation-only step of its own, on exactly the distribution `redheart predict` serves (one rule per mode:
calibrated, the default, and uncalibrated), and is bound to the model and calibrators by their sha256. The
test evaluation reads it and never refits it, so the label predict gives is the label the report scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from redheart.architecture import VERDICTS
from redheart.config import RunConfig
from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import sha256
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, load_split, split_targets
from redheart.evaluate.calibrators import Calibrators, load_calibrators
from redheart.scoring.baselines import fit_probe, pooled_features, probe_predict
from redheart.scoring.metrics import PROB_EPS, _macro_f1
from redheart.select.final_model import load_final_model
from redheart.train.evaluation import predict

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


# ---- the rule that travels with the final model ------------------------------------------------------------------

# The batch size of `redheart predict` and of the served predictions scored here: with the same batches the
# same texts give the same floats, so predict's labels reproduce the scored ones bit for bit.
SERVED_BATCH = 64
# The distributions predict serves: calibrated by default, raw with --uncalibrated. One rule is fitted per mode,
# each on exactly the distribution that mode serves.
MODES = ("calibrated", "uncalibrated")


@dataclass(frozen=True)
class DecisionRule:
    """Class weights per served distribution, bound to one final model and its calibrators by their sha256."""

    model_sha256: str
    calibrators_sha256: str | None  # None: fitted without calibrators (then only the uncalibrated mode exists)
    classes: tuple[str, ...]
    modes: dict[str, dict[str, Any]]  # mode -> {weights, macro_f1_argmax, macro_f1_rule, n, distribution}

    def weights(self, mode: str) -> list[float]:
        if mode not in self.modes:
            raise ValueError(f"the decision rule has no {mode!r} mode (fitted: {sorted(self.modes)})")
        return list(self.modes[mode]["weights"])

    def labels(self, probs: np.ndarray, mode: str) -> np.ndarray:
        """The rule's class index per row of the served distribution `probs` (N, k)."""
        return apply_weights(probs, self.weights(mode))

    def to_json(self) -> dict[str, Any]:
        return {"split": "val", **asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, tree: dict[str, Any], source: str) -> DecisionRule:
        try:
            rule = cls(str(tree["model_sha256"]), tree["calibrators_sha256"], tuple(tree["classes"]), tree["modes"])
            for mode, entry in rule.modes.items():
                if mode not in MODES or len(entry["weights"]) != len(rule.classes):
                    raise ValueError(f"mode {mode!r}: {len(entry['weights'])} weights for {len(rule.classes)} classes")
            return rule
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a valid decision-rule file ({error})") from None


def load_decision_rule(path: Path) -> DecisionRule:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no decision rule; fit it on validation (redheart calibrate) first")
    return DecisionRule.from_json(read_json(path), str(path))


def fit_modes(served: dict[str, np.ndarray], votes: np.ndarray, methods: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One rule per served distribution (rows with a verdict only); `methods` names each mode's distribution."""
    return {mode: {**fit_class_weights(probs, votes), "distribution": methods[mode]} for mode, probs in served.items()}


# ---- the validation-only step, after calibration ---------------------------------------------------------------


def served_predictions(
    model_dir: Path,
    split: SplitTensors,
    calibrators: Calibrators | None,
    batch_size: int = SERVED_BATCH,
    device: torch.device | str = "auto",
) -> dict[str, np.ndarray]:
    """The final-model folder's fused outputs on `split`, calibrated when `calibrators` are given: the
    distributions `redheart predict` serves for the same texts, in the same batches, on the device it would use."""
    model, _ = load_final_model(model_dir)
    probs = predict(model, split, batch_size=batch_size, device=device)["fused"]
    if calibrators is not None:
        probs = {**probs, **{t: calibrators.apply(t, probs[t]) for t in calibrators.targets}}
    return probs


def final_model_calibrators(run: RunDir) -> Calibrators:
    """The final model's calibrators (the run's copy, which the final model's copy must equal); FileNotFoundError
    naming the phase to run when they are missing, differ, or were fitted for another final model."""
    files = run.model_files
    run_copy = run.calibrators
    if not files.manifest.exists():
        raise FileNotFoundError(f"{run.final_model}: no final model; {run_first(run, run.final_model)}")
    for path in (run_copy, files.calibrators):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no calibrators; {run_first(run, path)}")
    calibrators = load_calibrators(run_copy)
    if calibrators.model_sha256 != sha256(files.manifest) or sha256(run_copy) != sha256(files.calibrators):
        raise FileNotFoundError(
            f"{run_copy}: fitted for another final model than {run.final_model} (or its copy there differs); "
            f"{run_first(run, run_copy)}"
        )
    return calibrators


def fit_decision_rules(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """The verdict's decision rules, fitted on validation only, after calibration: the final model's, one per
    served distribution (written to final_model/decision_rule.json, where predict reads it), and the linear
    probe's on its own predictions (for the report's comparison). Both go to RunDir.decision_rule."""
    calibrators = final_model_calibrators(run)
    files = run.model_files
    train_split, val_split = load_split(run, "train"), load_split(run, "val")
    targets, present = split_targets(val_split)
    rows = np.asarray(present["verdict"], dtype=bool)
    if not rows.any():
        raise ValueError(f"{run.split_manifest}: no validation record has a verdict to fit the decision rule on")
    votes = np.asarray(targets["verdict"])[rows]
    # One load and one forward pass: the calibrated mode serves the raw distribution through the calibrators.
    raw = served_predictions(run.final_model, val_split, None, device=config.train.device)["verdict"]
    calibrated = calibrators.apply("verdict", raw)
    method = calibrators.targets["verdict"].method
    modes = fit_modes(
        {"calibrated": calibrated[rows], "uncalibrated": raw[rows]},
        votes,
        {"calibrated": f"calibrated ({method})", "uncalibrated": "uncalibrated"},
    )
    rule = DecisionRule(sha256(files.manifest), sha256(files.calibrators), tuple(VERDICTS), modes)
    train_targets, train_present = split_targets(train_split)
    probe = fit_probe(pooled_features(train_split), train_targets, train_present)
    probe_probs = probe_predict(probe, pooled_features(val_split))["verdict"]
    rules = {
        **rule.to_json(),
        "n": int(rows.sum()),
        "final_model": rule.modes,
        "linear_probe": fit_class_weights(probe_probs[rows], votes),
    }
    write_json(files.decision_rule, rule.to_json())
    write_json(run.decision_rule, rules)
    return rules


def current_rules(run: RunDir) -> dict[str, Any]:
    """RunDir.decision_rule, checked to be fitted for the final model and calibrators on disk now;
    FileNotFoundError naming `redheart calibrate` otherwise."""
    final_model_calibrators(run)  # names the phase to run when the calibrators are missing or stale
    files = run.model_files
    if not run.decision_rule.exists() or not files.decision_rule.exists():
        raise FileNotFoundError(f"{run.decision_rule}: no verdict decision rule; {run_first(run, run.decision_rule)}")
    rules = read_json(run.decision_rule)
    if not decision_rule_is_current(run):
        raise FileNotFoundError(
            f"{run.decision_rule}: fitted for another final model or calibration; {run_first(run, run.decision_rule)}"
        )
    return rules


def decision_rule_is_current(run: RunDir) -> bool:
    """True when both copies of the rule were fitted for the final model and calibrators on disk now."""
    files = run.model_files
    if not (run.decision_rule.exists() and files.decision_rule.exists() and files.calibrators.exists()):
        return False
    if not files.manifest.exists():
        return False
    expected = (sha256(files.manifest), sha256(files.calibrators))
    trees = (read_json(run.decision_rule), read_json(files.decision_rule))
    return all((tree.get("model_sha256"), tree.get("calibrators_sha256")) == expected for tree in trees)


def format_rules(rules: dict[str, Any]) -> str:
    """The fitted rules in a few lines: validation macro-F1 of argmax and of the rule, per served distribution."""
    lines = [f"verdict decision rule fitted on validation (n={rules['n']}), by served distribution:"]
    for name, entry in [*rules["final_model"].items(), ("linear probe", rules["linear_probe"])]:
        weights = ", ".join(f"{c} {w:.2f}" for c, w in zip(rules["classes"], entry["weights"]))
        lines.append(
            f"  {entry.get('distribution', name)}: macro-F1 argmax {entry['macro_f1_argmax']:.4f} -> rule "
            f"{entry['macro_f1_rule']:.4f}; weights {weights}"
        )
    return "\n".join(lines)

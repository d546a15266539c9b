"""The architecture as data: the targets the model learns and the modules that learn them, each declared once.

Everything that lists targets or modules derives from these two tuples: the targets' widths, the model's build
order, the module groups (the unit of checkpointing and crossover), the full preset's parameter budgets, the Kalman
fusion's sources, the metrics each target is scored by and the names of its outputs. Adding a head for an existing
target is one `ModuleSpec` entry (plus a builder in `model/builders.py` when it is of a new kind).

Pure data: no torch here, so the config and the data layer can read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DISTRIBUTION = "distribution"  # soft labels; every module predicts logits, compared through log_softmax
REGRESSION = "regression"  # scores in [0,1]; every module's output goes through a sigmoid

# The order is part of the data format: the i-th float of `emotions` is EMOTIONS[i].
EMOTIONS = ("joy", "trust", "fear", "surprise", "sadness", "disgust", "anger")
VERDICTS = ("AUTHOR", "OTHER", "EVERYBODY", "NOBODY", "INFO")
BENTHAM_KEYS = ("intensity", "duration", "certainty", "propinquity")
SURD_KEYS = ("selection", "uncertainty", "risk", "decision")

REGRESSION_METRICS = ("mae", "rmse", "pearson_r")


@dataclass(frozen=True)
class Target:
    """A target the model learns: a clean record holds it as a list of `len(fields)` floats, or None."""

    name: str
    kind: str  # DISTRIBUTION or REGRESSION
    fields: tuple[str, ...]  # the name of each dimension, in the data format's order
    metrics: tuple[str, ...]  # the keys scoring/metrics.py reports for it (per dimension for a regression)

    @property
    def dim(self) -> int:
        return len(self.fields)


# The order is the order of the batch's targets and of every per-target table.
TARGETS: tuple[Target, ...] = (
    Target("emotions", DISTRIBUTION, EMOTIONS, ("accuracy", "macro_f1", "kl")),
    Target("bentham_scores", REGRESSION, BENTHAM_KEYS, REGRESSION_METRICS),
    Target("regret_factor", REGRESSION, ("regret_factor",), REGRESSION_METRICS),
    Target("surd_metrics", REGRESSION, SURD_KEYS, REGRESSION_METRICS),
    # Scored against the community's votes: accuracy and F1 of the majority, cross-entropy of the vote shares.
    Target("verdict", DISTRIBUTION, VERDICTS, ("accuracy", "macro_f1", "cross_entropy")),
)
TARGET_DIMS: dict[str, int] = {target.name: target.dim for target in TARGETS}
DISTRIBUTION_TARGETS: tuple[str, ...] = tuple(target.name for target in TARGETS if target.kind == DISTRIBUTION)
REGRESSION_TARGETS: tuple[str, ...] = tuple(target.name for target in TARGETS if target.kind == REGRESSION)


def target(name: str) -> Target:
    for candidate in TARGETS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown target {name!r}; targets: {[t.name for t in TARGETS]}")


@dataclass(frozen=True)
class ModuleSpec:
    """A top-level module of the model.

    `kind` names its builder in model/builders.py. `full_budget` is its parameter count in the full preset (the
    smaller presets scale it). `target` is the target it predicts (None for the backbone and the fusion); when
    `fused`, its prediction is one of the Kalman fusion's sources for that target.
    """

    name: str
    group: str
    target: str | None
    full_budget: int
    kind: str
    fused: bool = True


# The heads share 153.1M in all, each in the proportions of the listed head sizes (17.3 : 13.9 : 19.9 : 12.0). The
# verdict head on the backbone takes a share of 8.0 out of the same total, so the model stays at its 730M: the
# community network alone (20k parameters in `small`) was too small to learn the verdict.
_HEAD_SHARES = {"emotion_head": 17.3, "bentham_head": 13.9, "regret_head": 19.9, "surd_head": 12.0, "verdict_head": 8.0}


def _head_budget(name: str) -> int:
    return round(153_100_000 * _HEAD_SHARES[name] / sum(_HEAD_SHARES.values()))


# The order is the build order, so it fixes the random initialisation: the backbone first (the heads read it),
# the fusion last (its sources are the modules before it).
MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("backbone", "group_a", None, 90_600_000, "backbone", fused=False),
    ModuleSpec("emotion_head", "group_a", "emotions", _head_budget("emotion_head"), "pooled_head"),
    ModuleSpec("bentham_head", "group_a", "bentham_scores", _head_budget("bentham_head"), "pooled_head"),
    ModuleSpec("regret_head", "group_a", "regret_factor", _head_budget("regret_head"), "pooled_head"),
    ModuleSpec("surd_head", "group_a", "surd_metrics", _head_budget("surd_head"), "pooled_head"),
    ModuleSpec("verdict_head", "group_a", "verdict", _head_budget("verdict_head"), "pooled_head"),
    ModuleSpec("neural_emotion", "group_b", "emotions", 122_600_000, "neural"),
    ModuleSpec("neural_bentham", "group_b", "bentham_scores", 78_300_000, "neural"),
    ModuleSpec("neural_regret", "group_b", "regret_factor", 153_900_000, "neural"),
    ModuleSpec("neural_surd", "group_b", "surd_metrics", 13_500_000, "neural"),
    ModuleSpec("advanced_emotion", "advanced_emotion", "emotions", 63_000_000, "recurrent"),
    ModuleSpec("advanced_regret", "advanced_regret", "regret_factor", 44_200_000, "conv"),
    ModuleSpec("advanced_bentham", "advanced_bentham", "bentham_scores", 2_500_000, "gated"),
    ModuleSpec("advanced_surd", "advanced_surd", "surd_metrics", 2_200_000, "gated"),
    ModuleSpec("dsp", "group_c", "emotions", 2_300_000, "dsp"),
    ModuleSpec("phase0_calibrator", "phase", "emotions", 2_000_000, "phase0"),
    ModuleSpec("phase1_empathy", "phase", "emotions", 200_000, "phase1"),
    ModuleSpec("phase2_community", "phase", "verdict", 2_100_000, "phase2"),
    ModuleSpec("kalman", "group_c", None, 700, "fusion", fused=False),
)


def module_names(modules: Sequence[ModuleSpec] = MODULES) -> tuple[str, ...]:
    return tuple(spec.name for spec in modules)


def module_targets(modules: Sequence[ModuleSpec] = MODULES) -> dict[str, str]:
    """The target of each predicting module, in build order."""
    return {spec.name: spec.target for spec in modules if spec.target is not None}


def module_groups(modules: Sequence[ModuleSpec] = MODULES) -> dict[str, tuple[str, ...]]:
    """Each group's modules in build order; the groups in the order their first module is built."""
    groups: dict[str, tuple[str, ...]] = {}
    for spec in modules:
        groups[spec.group] = (*groups.get(spec.group, ()), spec.name)
    return groups


def group_of(name: str, modules: Sequence[ModuleSpec] = MODULES) -> str:
    for spec in modules:
        if spec.name == name:
            return spec.group
    raise KeyError(f"module {name!r} belongs to no group; modules: {module_names(modules)}")


def full_budgets(modules: Sequence[ModuleSpec] = MODULES) -> dict[str, int]:
    """The full preset's budget per module, listed group by group (the order config.yaml shows them in)."""
    by_name = {spec.name: spec.full_budget for spec in modules}
    return {name: by_name[name] for members in module_groups(modules).values() for name in members}


def fusion_sources(modules: Sequence[ModuleSpec] = MODULES) -> dict[str, tuple[str, ...]]:
    """The fused modules of each target in build order; the distribution targets first, then the regressions,
    each in TARGETS order (the order of the fusion's parameter dictionaries)."""
    sources = {
        name: tuple(s.name for s in modules if s.fused and s.target == name)
        for name in (*DISTRIBUTION_TARGETS, *REGRESSION_TARGETS)
    }
    return {name: members for name, members in sources.items() if members}


def verdict_modules(modules: Sequence[ModuleSpec] = MODULES) -> tuple[str, ...]:
    """What a record with a verdict and no other target needs run: the modules that predict the verdict."""
    return tuple(name for name, predicted in module_targets(modules).items() if predicted == "verdict")


def heads(modules: Sequence[ModuleSpec] = MODULES) -> tuple[str, ...]:
    """The modules that read the backbone's pooled output rather than the segment vectors."""
    return tuple(spec.name for spec in modules if spec.kind == "pooled_head")


FULL_BUDGETS: dict[str, int] = full_budgets()

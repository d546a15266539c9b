"""The report's sections in the order it shows them, each keyed by the phase whose outputs it reads; the title
and the command that makes a missing input come from that phase's declaration (redheart.core.phases)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redheart.core.phases import PHASE
from redheart.core.rundir import RunDir
from redheart.report.context import Context
from redheart.report.document import Section
from redheart.report.sections import calibration, data, model, results, study, sweep, training


@dataclass(frozen=True)
class SectionSpec:
    title: str
    build: Callable[[Context, str], Section]
    made_by: str  # what to run when its input is missing
    shown: Callable[[RunDir], bool] | None = None  # a phase outside the main job: shown only once it has run


def _phase(
    name: str, build: Callable[[Context, str], Section], shown: Callable[[RunDir], bool] | None = None
) -> SectionSpec:
    phase = PHASE[name]
    if phase.section is None or (shown is None) != phase.pipeline:
        raise ValueError(
            f"phase {name!r}: no report section declared, or a section of a phase outside the main job "
            "without the test that it has run"
        )
    return SectionSpec(phase.section, build, f"redheart {phase.command}", shown)


SECTIONS: tuple[SectionSpec, ...] = (
    _phase("prepare", data.build),
    SectionSpec("Model", model.build, "a run config (config.yaml) or a final model"),
    _phase("sweep", sweep.build),
    _phase("train", training.build),
    _phase("evaluate", results.build),
    _phase("calibrate", calibration.build),
    _phase("study", study.build, shown=lambda run: run.study_results.exists()),
)

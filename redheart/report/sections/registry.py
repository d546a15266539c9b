"""The report's sections in the order it shows them, each keyed by the phase whose outputs it shows; its title
comes from that phase's declaration (redheart.core.phases), and a missing input names the phase that writes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redheart.core.phases import PHASE, producer
from redheart.core.rundir import RunDir
from redheart.report.context import Context
from redheart.report.document import Section
from redheart.report.sections import calibration, data, model, results, study, sweep, training


@dataclass(frozen=True)
class SectionSpec:
    title: str
    build: Callable[[Context, str], Section]
    made_by: str  # what makes its input, when the missing file is no phase's output
    shown: Callable[[RunDir], bool] | None = None  # a phase outside the main job: shown only once it has run
    of_phase: bool = True  # its inputs are phase outputs, so a missing one names the phase that writes it

    def maker(self, run: RunDir, missing: Path | None) -> str:
        """What to run for the `missing` input: the phase that writes it, else `made_by`."""
        if self.of_phase and missing is not None:
            try:
                return f"redheart {producer(run, missing).command}"
            except ValueError:
                pass
        return self.made_by


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
    SectionSpec("Model", model.build, "a run config (config.yaml) or a final model", of_phase=False),
    _phase("sweep", sweep.build),
    _phase("train", training.build),
    _phase("evaluate", results.build),
    _phase("calibrate", calibration.build),
    _phase("study", study.build, shown=lambda run: run.study_results.exists()),
)

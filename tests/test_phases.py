"""The phases are declared once (redheart.core.phases); the CLI, the pipeline, the report and the messages that
say what to run read that declaration."""

from __future__ import annotations

from pathlib import Path

from redheart.cli import LOCKED, build_parser
from redheart.core.phases import PHASE, PHASES, producer, run_first
from redheart.core.rundir import RunDir
from redheart.report.sections.registry import SECTIONS


def test_help_lists_the_phases_in_pipeline_order_then_the_pipeline() -> None:
    usage = build_parser().format_help()
    listed = usage[usage.index("{") + 1 : usage.index("}")].split(",")
    assert listed[: len(PHASES) + 1] == [
        "prepare",
        "encode",
        "sweep",
        "train",
        "analyze",
        "crossover",
        "calibrate",
        "evaluate",
        "report",
        "study",
        "pipeline",
    ]
    for phase in PHASES:
        assert phase.help in " ".join(usage.split())


def test_every_output_names_its_own_phase_as_the_one_to_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for phase in PHASES:
        for path in phase.paths(run):
            assert producer(run, path) == phase
    assert run_first(run, run.crossover_candidates) == f"run `redheart crossover --run {tmp_path}` first"
    assert run_first(run, run.model_files.calibrators) == f"run `redheart calibrate --run {tmp_path}` first"


def test_the_report_titles_its_sections_by_their_phases() -> None:
    titled = {phase.section for phase in PHASES if phase.section}
    assert titled <= {spec.title for spec in SECTIONS}


def test_the_phases_that_write_a_run_folder_hold_its_lock() -> None:
    assert set(LOCKED) == {"prepare", "encode", "sweep", "train", "analyze", "crossover", "calibrate", "evaluate"} | {
        "pipeline",
        "prune",
    }


def test_a_phase_reads_declared_phases_and_the_pipeline_runs_them_first() -> None:
    order = [phase.name for phase in PHASES]
    for phase in PHASES:
        for name in phase.inputs:
            assert name in PHASE, (phase.name, name)
            if phase.pipeline and PHASE[name].pipeline:
                assert order.index(name) < order.index(phase.name), (phase.name, name)

"""The main job: every phase in order on one run folder, each from artifacts on disk to artifacts on disk.

Every phase is safe to repeat: prepare is deterministic, encode reads its cache, training resumes from
its state (a finished run is not trained again), and the test evaluation is read back once written. The
order is the strategy's: data, sweep, training, sweet spots and crossover on validation, calibration and the
verdict's decision rule on validation, then the single read of the test split, then the report. This is the
one place that chains phases, in the order redheart.core.phases declares them; each phase alone stops when
its input is missing.

Crossover and calibration are re-run only when their inputs changed (redheart.select.freshness): on the
same checkpoints they would save a final model that differs in its last bits. When the test results on disk
measured another model than the one crossover just saved (more epochs, new
data), the pipeline stops before printing them and names the command that reads the test split again;
with `reread_test` it reads it again itself and the read is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from redheart.config import RunConfig
from redheart.core.phases import PIPELINE
from redheart.core.rundir import RunDir
from redheart.data.encode import encode_run, format_encode_summary
from redheart.data.prepare import format_summary, prepare
from redheart.evaluate.final import evaluate_test, format_results
from redheart.report.build import build_report
from redheart.select.crossover import crossover, format_crossover
from redheart.train.recipe import train

T = TypeVar("T")


def _phase(title: str, work: Callable[[], T]) -> T:
    print(f"\n== {title} ==", flush=True)
    started = time.perf_counter()
    result = work()
    print(f"[{title}: {time.perf_counter() - started:.1f} s]", flush=True)
    return result


@dataclass(frozen=True)
class _Job:
    """What the steps read: the run folder, its settings and the pipeline's inputs."""

    run: RunDir
    config: RunConfig
    data: Path | Sequence[Path]
    cache_dir: Path | None
    extra: Sequence[Path]
    reread_test: bool


def run_pipeline(
    run: RunDir,
    config: RunConfig,
    data: Path | Sequence[Path],
    cache_dir: Path | None = None,
    extra: Sequence[Path] = (),
    reread_test: bool = False,
) -> None:
    if set(STEPS) != {phase.name for phase in PIPELINE}:
        raise AssertionError(f"pipeline steps {sorted(STEPS)} do not match the declared phases")
    job = _Job(run, config, data, cache_dir, extra, reread_test)
    started = time.perf_counter()
    inputs = ", ".join(str(p) for p in ([data] if isinstance(data, Path) else data))
    train_only = f", train-only {', '.join(str(p) for p in extra)}" if extra else ""
    print(f"redheart pipeline: preset {config.preset!r}, data {inputs}{train_only}, run folder {run.root}")
    for phase in PIPELINE:
        step = STEPS[phase.name]
        if step is not None:
            step(job)
    print(f"\npipeline done in {(time.perf_counter() - started) / 60:.1f} min; everything is in {run.root}/")


def _prepare(job: _Job) -> None:
    summary = _phase("prepare", lambda: prepare(job.data, job.run, job.config.data, extra=job.extra))
    print(format_summary(summary))


def _encode(job: _Job) -> None:
    encoded = _phase("encode", lambda: encode_run(job.run, job.config.encoder, cache_dir=job.cache_dir))
    print(format_encode_summary(encoded))


def _sweep(job: _Job) -> None:
    from redheart.train.sweep.run import format_choice, run_sweep

    if job.config.train.lr is None:
        swept = _phase("learning-rate sweep", lambda: run_sweep(job.run, job.config))
        print(format_choice(swept))


def _train(job: _Job) -> None:
    trained = _phase("train", lambda: train(job.run, job.config))
    print(f"trained {trained.epochs} epochs at lr {trained.lr:g} ({trained.lr_source})")


def _crossover(job: _Job) -> None:  # the sweet-spot analysis is crossover's first step
    from redheart.select.freshness import crossover_is_current

    if crossover_is_current(job.run, job.config):
        print(
            f"\n== sweet spots and crossover ==\nup to date: {job.run.crossover_candidates} was made from the "
            "checkpoints and settings on disk now; not re-run"
        )
    else:
        chosen = _phase("sweet spots and crossover (validation only)", lambda: crossover(job.run, job.config))
        print(format_crossover(chosen))


def _calibrate(job: _Job) -> None:
    from redheart.evaluate.calibration import fit_calibrators
    from redheart.evaluate.decision_rule import decision_rule_is_current, fit_decision_rules, format_rules
    from redheart.select.freshness import calibrators_are_current

    run = job.run
    if calibrators_are_current(run):
        print(f"\n== calibrate ==\nup to date: {run.calibrators} was fitted for this final model")
    else:
        calibrators = _phase("calibrate on validation", lambda: fit_calibrators(run, job.config))
        print("; ".join(f"{name}: {entry.method} ({entry.reason})" for name, entry in calibrators.targets.items()))
    if decision_rule_is_current(run):
        print(f"\n== decision rule ==\nup to date: {run.decision_rule} was fitted for this final model and calibration")
    else:
        rules = _phase("verdict decision rule on validation", lambda: fit_decision_rules(run, job.config))
        print(format_rules(rules))


def _evaluate(job: _Job) -> None:
    results = _phase("evaluate on the test split", lambda: evaluate_test(job.run, job.config, reread=job.reread_test))
    print(format_results(results))


def _report(job: _Job) -> None:
    report = _phase("report", lambda: build_report(job.run))
    print(f"report: {report}")


# The step of each declared phase; PIPELINE gives their order.
STEPS: dict[str, Callable[[_Job], None] | None] = {
    "prepare": _prepare,
    "encode": _encode,
    "sweep": _sweep,
    "train": _train,
    "analyze": None,  # run by crossover, which starts from the sweet spots
    "crossover": _crossover,
    "calibrate": _calibrate,
    "evaluate": _evaluate,
    "report": _report,
}

"""The main job: every phase in order on one run folder, each from artifacts on disk to artifacts on disk.

Every phase is safe to repeat: prepare is deterministic, encode reads its cache, training resumes from
its state (a finished run is not trained again), and the test evaluation is read back once written. The
order: data, sweep, training, sweet spots and crossover on validation, then the single read of the test
split, then the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from redheart.config import RunConfig
from redheart.core.rundir import RunDir
from redheart.data.encode import encode_run, format_encode_summary
from redheart.data.prepare import format_summary, prepare
from redheart.evaluate.final import evaluate_test, format_results
from redheart.report.build import build_report
from redheart.select.crossover import crossover, format_crossover
from redheart.train.recipe import train
from redheart.train.sweep.run import format_choice, run_sweep

T = TypeVar("T")


def _phase(title: str, work: Callable[[], T]) -> T:
    print(f"\n== {title} ==", flush=True)
    started = time.perf_counter()
    result = work()
    print(f"[{title}: {time.perf_counter() - started:.1f} s]", flush=True)
    return result


def run_pipeline(run: RunDir, config: RunConfig, data: Path, cache_dir: Path | None = None) -> None:
    started = time.perf_counter()
    print(f"redheart pipeline: preset {config.preset!r}, data {data}, run folder {run.root}")
    summary = _phase("prepare", lambda: prepare(data, run, config.data))
    print(format_summary(summary))
    encoded = _phase("encode", lambda: encode_run(run, config.encoder, cache_dir=cache_dir))
    print(format_encode_summary(encoded))
    if config.train.lr is None:
        swept = _phase("learning-rate sweep", lambda: run_sweep(run, config))
        print(format_choice(swept))
    trained = _phase("train", lambda: train(run, config))
    print(f"trained {trained.epochs} epochs at lr {trained.lr:g} ({trained.lr_source})")
    chosen = _phase("sweet spots and crossover (validation only)", lambda: crossover(run, config))
    print(format_crossover(chosen))
    results = _phase("calibrate on validation, then evaluate on the test split", lambda: evaluate_test(run, config))
    print(format_results(results))
    report = _phase("report", lambda: build_report(run))
    print(f"report: {report}")
    print(f"\npipeline done in {(time.perf_counter() - started) / 60:.1f} min; everything is in {run.root}/")

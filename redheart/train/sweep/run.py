"""Phase 1, the learning-rate sweep: independent trials on disk, then a choice made from whatever is there.

Trial numbering (so `redheart sweep --trial K` can run any trial on its own, e.g. one per cluster job):
trials 0..n-1 are the first stage, candidate `sweep.lrs[k]` at the base seed (`train.seed`); trials n..
are the reseeds: the `reseed_top` best first-stage rates, best first, each with `extra_seeds` more seeds
(base + 1, base + 2, ...), numbered rate by rate. Which rates those are depends on the first stage's
score, so a reseed trial needs every first-stage trial finished first.

Every trial trains from `train.seed`'s initial weights and data order (the recipe seeds both from the
seed, not the rate), for `sweep.epochs`, into RunDir.sweep/trial_<k>_lr<lr>_seed<s>/ (a run-folder
layout: metrics.jsonl, resume/, tensorboard/; no checkpoints). A finished trial is not run again, and an
interrupted one resumes; once finished, its resume state is dropped (its metrics are all the sweep reads)
unless `sweep.keep_trial_resume` is set.
`collect` runs nothing: it scores the finished trials (redheart.train.sweep.score)
and writes results.json, results.csv, choice.json (read by `train` when no rate is given) and curves.png.
"""

from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from redheart.config import RunConfig
from redheart.core.atomic import atomic_open, finite_or_null, write_json
from redheart.core.rundir import RunDir
from redheart.train.disk_plan import ensure_disk_space
from redheart.train.recipe import train
from redheart.train.sweep.plot import plot_curves
from redheart.train.sweep.score import Curve, Score, choose, components, explain, format_lr, rank
from redheart.train.telemetry.records import read_metrics

WINDOW = 3  # epochs at the end of a trial that the validation-loss and gap components average


@dataclass(frozen=True)
class Trial:
    index: int
    lr: float
    seed: int
    stage: str  # "first" or "reseed"

    def folder(self, run: RunDir) -> Path:
        return run.sweep / f"trial_{self.index}_lr{format_lr(self.lr)}_seed{self.seed}"


@dataclass(frozen=True)
class SweepResult:
    lr: float
    reason: str
    table: list[Score]  # every candidate with a finished trial, best first
    missing: list[str]  # trial folders still to run (empty when the sweep is complete)
    folder: Path


def first_stage(config: RunConfig) -> list[Trial]:
    return [Trial(k, float(lr), config.train.seed, "first") for k, lr in enumerate(config.sweep.lrs)]


def reseed_stage(config: RunConfig, top: list[float]) -> list[Trial]:
    sweep, base, n = config.sweep, config.train.seed, len(config.sweep.lrs)
    return [
        Trial(n + r * sweep.extra_seeds + (j - 1), lr, base + j, "reseed")
        for r, lr in enumerate(top)
        for j in range(1, sweep.extra_seeds + 1)
    ]


def trial_count(config: RunConfig) -> int:
    """How many trials a complete sweep has (first stage plus reseeds): --trial takes 0..count-1."""
    return config.sweep.trials


def finished_records(run: RunDir, trial: Trial, epochs: int) -> list[dict[str, Any]] | None:
    """The trial's first `epochs` epoch records, or None when it has not finished them."""
    records = read_metrics(RunDir(trial.folder(run)).metrics_log)
    if [r["epoch"] for r in records[:epochs]] != list(range(1, epochs + 1)):
        return None
    return records[:epochs]


def top_rates(run: RunDir, config: RunConfig) -> list[float]:
    """The `reseed_top` best first-stage rates, best first; every first-stage trial must have finished."""
    first = first_stage(config)
    done = {t: finished_records(run, t, config.sweep.epochs) for t in first}
    unfinished = [t.index for t, records in done.items() if records is None]
    if unfinished:
        raise ValueError(
            f"the reseed trials (--trial {len(first)} and up) depend on the first stage's ranking, but first-stage "
            f"trials {unfinished} in {run.sweep} have not finished; run them first (redheart sweep --trial K)"
        )
    finished = cast(dict[Trial, list[dict[str, Any]]], done)  # every record list is there (checked above)
    table = rank({t.lr: [trial_components(t, r)] for t, r in finished.items()}, config.sweep.weights)
    return [s.lr for s in table[: max(0, config.sweep.reseed_top)]]


def trial_of(run: RunDir, config: RunConfig, k: int) -> Trial:
    n, count = len(config.sweep.lrs), trial_count(config)
    if not 0 <= k < count:
        raise ValueError(f"trial {k} does not exist: this sweep has trials 0..{count - 1} ({n} first-stage)")
    return (
        first_stage(config)[k]
        if k < n
        else next(t for t in reseed_stage(config, top_rates(run, config)) if t.index == k)
    )


def run_trial(run: RunDir, config: RunConfig, k: int, progress: bool = True) -> Trial:
    """Train trial `k` alone (skipped when finished, resumed when interrupted)."""
    trial = trial_of(run, config, k)
    if finished_records(run, trial, config.sweep.epochs) is None:
        ensure_disk_space(run, config, f"sweep trial {trial.index}")
        folder = RunDir(trial.folder(run))
        if folder.metrics_log.exists() and not folder.resume.exists():
            # Finished for fewer epochs, its resume state dropped: retrained from the start, which gives the same
            # first epochs again (same seed, same data order), rather than appending to the old records.
            print(
                f"sweep trial {trial.index}: no resume state to extend; training it again from the start",
                file=sys.stderr,
            )
            shutil.rmtree(folder.root)
        train(
            run,
            config,
            lr=trial.lr,
            epochs=config.sweep.epochs,
            seed=trial.seed,
            output=folder,
            save_checkpoints=False,
            progress=progress,
        )
    if not config.sweep.keep_trial_resume:
        shutil.rmtree(RunDir(trial.folder(run)).resume, ignore_errors=True)
    return trial


def run_sweep(run: RunDir, config: RunConfig, progress: bool = True) -> SweepResult:
    """The single-machine path: every first-stage trial, the reseeds of the best rates, then `collect`."""
    for trial in first_stage(config):
        run_trial(run, config, trial.index, progress)
    for trial in reseed_stage(config, top_rates(run, config)):
        run_trial(run, config, trial.index, progress)
    return collect(run, config)


def collect(run: RunDir, config: RunConfig) -> SweepResult:
    """Score the finished trials on disk, choose a rate and write the sweep's outputs; trains nothing."""
    epochs = config.sweep.epochs
    first = first_stage(config)
    complete_first = all(finished_records(run, t, epochs) is not None for t in first)
    finalists = top_rates(run, config) if complete_first else None
    planned = first + (reseed_stage(config, finalists) if finalists is not None else [])
    done = {t: finished_records(run, t, epochs) for t in planned}
    records = {t: r for t, r in done.items() if r is not None}
    if not records:
        raise ValueError(f"no finished sweep trial in {run.sweep}; run `redheart sweep` (or --trial K) first")
    missing = [t.folder(run).name for t, r in done.items() if r is None]
    if not complete_first:
        missing.append("the reseed trials (they follow the complete first stage)")

    per_trial = {t: trial_components(t, r) for t, r in records.items()}
    per_lr: dict[float, list[dict[str, float]]] = {}
    for t, values in per_trial.items():
        per_lr.setdefault(t.lr, []).append(values)
    table = rank(per_lr, config.sweep.weights)
    chosen = choose(table, finalists if finalists and config.sweep.extra_seeds > 0 else None)
    reason = explain(chosen, table, epochs, WINDOW)
    if missing:
        reason += f" Incomplete sweep, missing: {', '.join(missing)}."
    result = SweepResult(chosen.lr, reason, table, missing, run.sweep)
    write_outputs(run, config, result, records, per_trial)
    return result


def trial_components(trial: Trial, records: list[dict[str, Any]]) -> dict[str, float]:
    try:
        return components(curve_of(records), WINDOW)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"sweep trial {trial.index} (lr {format_lr(trial.lr)}, seed {trial.seed}): bad metrics.jsonl: {error}"
        ) from None


def curve_of(records: list[dict[str, Any]]) -> Curve:
    """Per-epoch training and validation task losses; the training side leaves out R-Drop's consistency term."""
    val = [sum(r["val"]["loss"].values()) for r in records]
    train = [sum(r["train_loss"][name] for name in r["val"]["loss"]) for r in records]
    return Curve(tuple(train), tuple(val))


def epoch_rows(trial: Trial, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    curve = curve_of(records)
    return [
        {
            "trial": trial.index,
            "stage": trial.stage,
            "lr": trial.lr,
            "seed": trial.seed,
            "epoch": r["epoch"],
            "scheduled_lr": r["lr"],
            "train_loss": train,
            "train_objective": r["train_loss"].get("total"),
            "val_loss": val,
            **{f"grad_norm_{k}": v for k, v in r["grad_norm"].items()},
            "seconds": r.get("seconds"),
            "samples_per_second": r.get("samples_per_second"),
            "peak_memory_bytes": r.get("peak_memory_bytes"),
            "peak_host_memory_bytes": r.get("telemetry", {}).get("peak_host_memory_bytes"),
            **{f"val_{k}": v for k, v in r["val"]["headline"].items()},
        }
        for r, train, val in zip(records, curve.train, curve.val)
    ]


def write_outputs(
    run: RunDir,
    config: RunConfig,
    result: SweepResult,
    records: dict[Trial, list[dict[str, Any]]],
    per_trial: dict[Trial, dict[str, float]],
) -> None:
    ordered = sorted(records, key=lambda t: t.index)
    rows = {t: epoch_rows(t, records[t]) for t in ordered}
    chosen = next(s for s in result.table if s.lr == result.lr)
    summary = {
        "lr": result.lr,
        "reason": result.reason,
        "score": chosen.total,
        "seeds": chosen.trials,
        "complete": not result.missing,
    }
    write_json(
        run.sweep_results,
        finite_or_null(
            {
                "choice": summary,
                "weights": dict(zip(("val_loss", "stability", "efficiency", "overfit_gap"), config.sweep.weights)),
                "window_epochs": WINDOW,
                "epochs": config.sweep.epochs,
                "missing": result.missing,
                "candidates": [
                    {
                        "lr": s.lr,
                        "trials": s.trials,
                        "diverged": s.diverged,
                        "components": s.raw,
                        "normalized": s.normalized,
                        "total": s.total,
                    }
                    for s in result.table
                ],
                "trials": [
                    {
                        "trial": t.index,
                        "stage": t.stage,
                        "lr": t.lr,
                        "seed": t.seed,
                        "folder": t.folder(run).name,
                        "components": per_trial[t],
                        "epochs": rows[t],
                    }
                    for t in ordered
                ],
            }
        ),
    )
    flat = [row for t in ordered for row in rows[t]]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    with atomic_open(run.sweep_table, encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    write_json(run.sweep_choice, finite_or_null(summary))
    plot_curves(run.sweep_curves, [(t.lr, rows[t]) for t in ordered], result.lr)


def format_choice(result: SweepResult) -> str:
    lines = [f"{'lr':>8} {'trials':>6} {'score':>6}  val_loss  instability  inefficiency  overfit_gap"]
    for s in result.table:
        raw = s.raw
        lines.append(
            f"{format_lr(s.lr):>8} {s.trials:>6} {s.total:6.3f}  {raw['val_loss']:8.4f}  {raw['instability']:11.4f}"
            f"  {raw['inefficiency']:12.4f}  {raw['overfit_gap']:11.4f}"
        )
    lines += ["", result.reason, f"written to {result.folder}/ (choice.json, results.json, results.csv, curves.png)"]
    return "\n".join(lines)

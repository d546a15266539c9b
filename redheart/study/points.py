"""The study's points: which model and which training records each one trains, and one point run alone.

Point numbering (so `redheart study --point K` can run any point on its own, e.g. one per cluster job):
the sizes in order (`study.sizes`, then "full" when CUDA is present), and within a size its fractions in
order, then, when the run holds training records from a source outside its validation split (verdict-only
records), one more point on every training record. K = size position x points per size + position in size.

A point is a run folder of its own, RunDir.study/point_K_SIZE_FRACTION/, whose split manifest names its
training subset and the run's validation ids (never the test ids); the records and embeddings are the
run's. It trains with the run's recipe (`redheart.train.recipe.train`) at its size's learning rate (a short
sweep per size, RunDir.study/lr_SIZE/) one epoch at a time until the validation loss stops improving
(`study.patience_steps`) or the step cap (`study.max_steps`) is reached: resumable and atomic.

A finished point (point.json) carries a fingerprint: its config section, learning rate, training ids,
validation ids and the embeddings' index. It is reused only while all five still hold; otherwise `run_point`
trains it again and `collect` refuses it, naming what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from redheart.config import RunConfig, preset, save_config
from redheart.core.atomic import read_json, write_json
from redheart.core.faults import NO_FAULTS, Faults
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.data.dataset import clean_records
from redheart.scoring.metrics import STUDIED

EXTRA = "all+extra"  # the fraction label of a point on every training record, verdict-only ones included
# The keys of the study's numbers (scoring.metrics.STUDIED), each a column of its table and a curve.
SCORES = tuple(metric.key for metric in STUDIED)
# Those scored on the verdict: their curves count only the training records that carry one.
VERDICT_METRICS = tuple(metric.key for metric in STUDIED if metric.targets == ("verdict",))
FINGERPRINT_PARTS = ("config", "lr", "train_ids", "val_ids", "embeddings")


@dataclass(frozen=True)
class Point:
    index: int
    size: str
    fraction: float | None  # of the training records from the validation split's sources; None: every record

    @property
    def label(self) -> str:
        if self.fraction is None:
            return EXTRA
        return "all" if self.fraction == 1 else str(Fraction(self.fraction).limit_denominator(1000))

    @property
    def file_label(self) -> str:
        """The label in a file name: "1of2", "all_extra"."""
        return self.label.replace("/", "of").replace("+", "_")

    def folder(self, run: RunDir) -> Path:
        return run.study_point(self.index, self.size, self.file_label)


class PointRun(RunDir):
    """A point's run folder: its own split manifest and outputs; the parent run's records and embeddings."""

    parent: RunDir

    def __init__(self, root: str | Path, parent: RunDir) -> None:
        super().__init__(root)
        object.__setattr__(self, "parent", parent)

    @property
    def clean_records(self) -> Path:
        return self.parent.clean_records

    @property
    def embeddings(self) -> Path:
        return self.parent.embeddings


def study_sizes(config: RunConfig, cuda: bool) -> list[str]:
    """The configured sizes, and "full" after them when CUDA is present and `full_with_cuda` is on."""
    for name in config.study.sizes:
        preset(name)  # an unknown preset fails here, before anything trains
    sizes = list(config.study.sizes)
    if cuda and config.study.full_with_cuda and "full" not in sizes:
        sizes.append("full")
    return sizes


def plan(run: RunDir, config: RunConfig, cuda: bool | None = None) -> list[Point]:
    """Every point of the study on this run (the "all+extra" ones only when the run has extra records)."""
    fractions = config.study.fractions
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or len(set(fractions)) != len(fractions):
        raise ValueError(f"study.fractions: each must lie in (0, 1] and appear once, got {list(fractions)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    extra = bool(training_ids(run, config)[1])
    per_size: list[float | None] = [*fractions, *([None] if extra else [])]
    return [
        Point(s * len(per_size) + j, size, fraction)
        for s, size in enumerate(study_sizes(config, cuda))
        for j, fraction in enumerate(per_size)
    ]


def point_of(run: RunDir, config: RunConfig, k: int) -> Point:
    points = plan(run, config)
    if not 0 <= k < len(points):
        raise ValueError(f"point {k} does not exist: this study has points 0..{len(points) - 1}")
    return points[k]


def record_sources(run: RunDir) -> dict[str, str]:
    """id -> source of every clean record; a record without a source field came from the one input file."""
    sources: dict[str, str] = {}
    for line_no, record in clean_records(run):
        source = record.get("source", "")
        if not isinstance(source, str):
            raise ValueError(
                f"{run.clean_records}:{line_no}: record {record.get('id')!r}: field 'source' must be "
                f"a string, got {source!r}"
            )
        sources[record["id"]] = source
    return sources


def training_ids(run: RunDir, config: RunConfig) -> tuple[list[str], list[str]]:
    """(training ids from the validation split's sources in the study's seeded order, the other training ids).

    The data axis takes prefixes of the first list, so every smaller subset lies inside every larger one and
    the curve's steps are not confounded with which records were drawn. The second list is the records of
    other sources (verdict-only records), which only the "all+extra" points add.
    """
    manifest = read_json(run.split_manifest)
    sources = record_sources(run)
    missing = [i for i in (*manifest["train"], *manifest["val"]) if i not in sources]
    if missing:
        raise ValueError(f"{run.split_manifest}: {len(missing)} ids are not clean records, e.g. {missing[:3]}")
    primary = {sources[i] for i in manifest["val"]}
    main = [i for i in manifest["train"] if sources[i] in primary]
    other = [i for i in manifest["train"] if sources[i] not in primary]
    order = np.random.default_rng(config.study.seed).permutation(len(main))
    return [main[k] for k in order], other


def point_train_ids(run: RunDir, config: RunConfig, point: Point) -> list[str]:
    """The point's training ids, in the run's manifest order (the recipe's data order comes from its seed)."""
    main, other = training_ids(run, config)
    chosen = set(main + other if point.fraction is None else main[: max(1, round(point.fraction * len(main)))])
    return [i for i in read_json(run.split_manifest)["train"] if i in chosen]


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def embedding_key(run: RunDir) -> str:
    """The embeddings' identity: their index (encoder key, shapes, record ids in row order), hashed."""
    index = run.embedding_index
    if not index.exists():
        raise ValueError(f"{index}: the run has no embeddings; {run_first(run, index)}")
    return hashlib.sha256(index.read_bytes()).hexdigest()


def fingerprint(run: RunDir, cfg: RunConfig, lr: float, train_ids: list[str], study: dict[str, Any]) -> dict[str, str]:
    """What a point's numbers depend on, part by part, so a mismatch can be named."""
    from redheart.config import to_dict

    tree = to_dict(cfg)
    tree["train"]["lr"] = None  # a part of its own
    section = {"preset": cfg.preset, **{k: tree[k] for k in ("encoder", "model", "train")}, "study": study}
    return {
        "config": _sha(section),
        "lr": repr(float(lr)),
        "train_ids": _sha(train_ids),
        "val_ids": _sha(read_json(run.split_manifest)["val"]),
        "embeddings": embedding_key(run),
    }


def stale_parts(stored: dict[str, Any] | None, current: dict[str, str]) -> list[str]:
    """The fingerprint parts that differ (every part when the stored point has none: made by older code)."""
    if not isinstance(stored, dict):
        return list(FINGERPRINT_PARTS)
    return [part for part in FINGERPRINT_PARTS if stored.get(part) != current[part]]


def _schedule(config: RunConfig, train_records: int, main_records: int) -> tuple[int, int, float]:
    """(optimizer steps per epoch, epochs under the step cap, warm-up in the point's epochs).

    The warm-up spans the same number of steps at every data size (the run's warm-up on all the records).
    """
    from redheart.train.schedule import steps_per_epoch

    tc = config.train
    per_epoch = steps_per_epoch(train_records, tc.micro_batch, tc.accumulation)
    cap_epochs = max(1, config.study.max_steps // per_epoch)
    warmup = tc.warmup_epochs * steps_per_epoch(main_records, tc.micro_batch, tc.accumulation) / per_epoch
    return per_epoch, cap_epochs, min(warmup, cap_epochs / 2)


def point_config(config: RunConfig, size: str, lr: float, epochs: int, warmup_epochs: float) -> RunConfig:
    """The run's recipe with the size preset's model for at most `epochs` epochs, one cosine cycle over them.

    The cycle spans the cap, so a point stopped early stopped at a rate the cap decided; the convergence check
    (twice the cap) measures how much that matters. The point's own disk check replaces the pipeline's.
    """
    train = dataclasses.replace(
        config.train,
        lr=lr,
        epochs=epochs,
        restart_epochs=epochs,
        restart_mult=1,
        warmup_epochs=warmup_epochs,
        telemetry=False,
        check_disk=False,
    )
    return dataclasses.replace(config, preset=size, model=preset(size).model, train=train)


def stop_rule(
    val_losses: list[float], per_epoch: int, patience_steps: int, cap_epochs: int, min_improvement: float = 0.0
) -> dict[str, Any]:
    """Where a point stands after the epochs in `val_losses`: its best epoch and whether it stops, and why.

    An epoch becomes the best when its loss is below the best so far by more than `min_improvement` of it. It
    stops once the best epoch lies `patience_steps` optimizer steps (at least one epoch) behind the last one
    ("patience": converged), or at the cap ("cap": not converged, the loss may still have been falling).
    A non-finite loss never counts as best.
    """
    best, best_loss = 0, math.inf
    for epoch, loss in enumerate(val_losses, start=1):
        if math.isfinite(loss) and (best == 0 or loss < best_loss - min_improvement * abs(best_loss)):
            best, best_loss = epoch, loss
    done = len(val_losses)
    patience_epochs = max(1, math.ceil(patience_steps / per_epoch))
    reason = "patience" if done - best >= patience_epochs else "cap" if done >= cap_epochs else None
    return {"best_epoch": best, "epochs": done, "stop": reason is not None, "reason": reason}


def point_disk_bytes(cfg: RunConfig, input_dim: int, max_segments: int) -> int:
    """What a point writes: two resume slots at most (the live one and the previous), plus its small files."""
    from redheart.model.model import RedHeartModel
    from redheart.train.disk_plan import resume_slot_bytes

    model = RedHeartModel(cfg.model, input_dim=input_dim, max_segments=max_segments)
    small_files = 2_000_000  # metrics.jsonl, tensorboard events, split manifest, baselines: measured well below
    return 2 * resume_slot_bytes(model, "adamw", cfg.train.ema_decay > 0) + small_files


def ensure_point_space(
    folder: Path, cfg: RunConfig, input_dim: int, max_segments: int, what: str, check: bool = True
) -> None:
    """Refuse to start `what` when the free space is below what it still writes (`check` False: no check)."""
    from redheart.train.disk_plan import GB, NotEnoughDisk, folder_bytes, free_bytes

    if not check:
        return
    needed = max(0, point_disk_bytes(cfg, input_dim, max_segments) - (folder_bytes(folder) if folder.exists() else 0))
    free = free_bytes(folder)
    if free < needed:
        raise NotEnoughDisk(
            f"{what} not started: it writes up to {needed / GB:.2f} GB in {folder} but {free / GB:.2f} GB are free "
            "there; --set train.check_disk=false skips this check."
        )


def size_sweep_run(run: RunDir, size: str) -> PointRun:
    return PointRun(run.study_lr_sweep(size), run)


def sweep_config(config: RunConfig, size: str, train_records: int, main_records: int) -> RunConfig:
    """The sweep phase's settings for one size: `study.lrs` for `study.sweep_epochs` epochs of the sweep subset,
    one seed per rate, each trial annealed over its epochs."""
    from redheart.config import SweepConfig

    _, _, warmup = _schedule(config, train_records, main_records)
    epochs = config.study.sweep_epochs
    cfg = point_config(config, size, config.train.default_lr, epochs, min(warmup, epochs / 2))
    sweep = SweepConfig(lrs=config.study.lrs, epochs=epochs, reseed_top=0, extra_seeds=0, weights=config.sweep.weights)
    return dataclasses.replace(cfg, sweep=sweep)


def lr_trials(config: RunConfig) -> list[tuple[str, int]]:
    """Every (size, trial) of the per-size sweeps: `--lr-trial K` runs the K-th."""
    return [(size, k) for size in study_sizes(config, torch.cuda.is_available()) for k in range(len(config.study.lrs))]


def _prepare_sweep(run: RunDir, config: RunConfig, size: str, progress: bool) -> tuple[PointRun, RunConfig]:
    """The size's sweep folder with its subset's manifest; a sweep made on other inputs is discarded, naming why."""
    main, _ = training_ids(run, config)
    chosen = set(main[: max(1, round(config.study.sweep_fraction * len(main)))])
    ids = [i for i in read_json(run.split_manifest)["train"] if i in chosen]
    cfg = sweep_config(config, size, len(ids), len(main))
    sweep_run = size_sweep_run(run, size)
    print_ = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    study = {"sweep": dataclasses.asdict(cfg.sweep)}
    current = fingerprint(run, cfg, 0.0, ids, study)
    stamp = sweep_run.inputs_fingerprint
    if stamp.exists():
        stale = stale_parts(read_json(stamp), current)
        if stale:
            print_(f"learning-rate sweep of {size}: made with other {', '.join(stale)}; running it again")
            shutil.rmtree(sweep_run.root)
    if not stamp.exists():
        write_json(sweep_run.split_manifest, {"train": ids, "val": read_json(run.split_manifest)["val"]})
        write_json(stamp, current)
    return sweep_run, cfg


def run_lr_trial(run: RunDir, config: RunConfig, k: int, progress: bool = True) -> str:
    """Train one trial of one size's sweep (skipped when finished); returns its folder."""
    from redheart.train.sweep.run import run_trial

    trials = lr_trials(config)
    if not 0 <= k < len(trials):
        raise ValueError(f"learning-rate trial {k} does not exist: this study has trials 0..{len(trials) - 1}")
    size, trial = trials[k]
    sweep_run, cfg = _prepare_sweep(run, config, size, progress)
    ensure_point_space(
        sweep_run.root, cfg, *_input_shape(run), f"learning-rate trial {k} ({size})", config.train.check_disk
    )
    return str(run_trial(sweep_run, cfg, trial, progress).folder(sweep_run))


def size_lr(run: RunDir, config: RunConfig, size: str, progress: bool = True) -> tuple[float, str]:
    """The size's learning rate: its sweep's choice (the missing trials are run first) and the reason in words."""
    from redheart.train.sweep.run import collect as collect_sweep
    from redheart.train.sweep.run import run_trial

    sweep_run, cfg = _prepare_sweep(run, config, size, progress)
    for trial in range(len(cfg.sweep.lrs)):
        ensure_point_space(
            sweep_run.root, cfg, *_input_shape(run), f"learning-rate trial {trial} ({size})", config.train.check_disk
        )
        run_trial(sweep_run, cfg, trial, progress)
    result = collect_sweep(sweep_run, cfg)
    return result.lr, result.reason


def chosen_lr(run: RunDir, size: str) -> float | None:
    """The size's finished sweep choice, read only (None when its sweep has not been collected)."""
    choice = size_sweep_run(run, size).sweep_choice
    return float(read_json(choice)["lr"]) if choice.exists() else None


def _input_shape(run: RunDir) -> tuple[int, int]:
    index = read_json(run.embedding_index)
    return int(index["dim"]), int(index["max_segments"])


def scores(metrics: dict[str, dict]) -> dict[str, float | None]:
    """The study's numbers from evaluate_predictions-style metrics (a target without rows gives None)."""
    return {metric.key: metric.value(metrics) for metric in STUDIED}


def finished_point(run: RunDir, point: Point, folder: Path | None = None) -> dict[str, Any] | None:
    path = RunDir(folder or point.folder(run)).point_record
    return read_json(path) if path.exists() else None


def _probe(run: RunDir, point: PointRun, file_label: str) -> dict[str, Any]:
    """The baselines fitted on the point's training records: shared by every size of one fraction."""
    from redheart.data.dataset import load_split
    from redheart.scoring.baselines import run_baselines

    shared = run.study_probe(file_label)
    if shared.exists():
        cached = read_json(shared)
        if cached["train_ids"] == read_json(point.split_manifest)["train"] and cached.get("embeddings") == (
            embedding_key(run)
        ):
            return dict(cached["baselines"])
    baselines = run_baselines(load_split(point, "train"), load_split(point, "val"))
    write_json(
        shared,
        {
            "train_ids": read_json(point.split_manifest)["train"],
            "embeddings": embedding_key(run),
            "baselines": baselines,
        },
    )
    return baselines


@dataclass(frozen=True)
class PointPlan:
    """Everything a point's training is decided by, computed before it trains (and again by `collect`)."""

    point: Point
    folder: Path
    ids: list[str]
    config: RunConfig
    lr: float
    per_epoch: int
    cap_epochs: int
    max_steps: int
    fingerprint: dict[str, str]


def point_plan(run: RunDir, config: RunConfig, point: Point, lr: float, cap_factor: int = 1) -> PointPlan:
    """The point's subset, config and fingerprint at learning rate `lr`; `cap_factor` 2 is the convergence check."""
    ids = point_train_ids(run, config, point)
    main = len(training_ids(run, config)[0])
    max_steps = config.study.max_steps * cap_factor
    capped = dataclasses.replace(config, study=dataclasses.replace(config.study, max_steps=max_steps))
    per_epoch, cap_epochs, warmup = _schedule(capped, len(ids), main)
    cfg = point_config(config, point.size, lr, cap_epochs, warmup)
    study = {
        "max_steps": max_steps,
        "patience_steps": config.study.patience_steps,
        "min_improvement": config.study.min_improvement,
    }
    folder = point.folder(run) if cap_factor == 1 else run.study_check(cap_factor, point.folder(run).name)
    return PointPlan(
        point, folder, ids, cfg, lr, per_epoch, cap_epochs, max_steps, fingerprint(run, cfg, lr, ids, study)
    )


def estimate_step_seconds(cfg: RunConfig, input_dim: int, max_segments: int, repeats: int = 2) -> float:
    """Seconds per optimizer step of `cfg`'s model on this machine: a few steps on random inputs (forward twice,
    as R-Drop does, backward, AdamW), after one untimed step."""
    from redheart.model.model import RedHeartModel

    torch.manual_seed(0)
    model = RedHeartModel(cfg.model, input_dim=input_dim, max_segments=max_segments)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = cfg.train.micro_batch * cfg.train.accumulation
    x, mask = torch.randn(batch, max_segments, input_dim), torch.ones(batch, max_segments, dtype=torch.bool)
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        loss = sum(
            (_sum_outputs(model(x, mask)) for _ in range(2 if cfg.train.rdrop_alpha > 0 else 1)), torch.zeros(())
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds[1:]))


def _sum_outputs(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs.float().mean()
    if isinstance(outputs, dict):
        return sum((_sum_outputs(v) for v in outputs.values()), torch.zeros(()))
    if isinstance(outputs, (list, tuple)):
        return sum((_sum_outputs(v) for v in outputs), torch.zeros(()))
    return torch.zeros(())


def announce(run: RunDir, p: PointPlan) -> str:
    """The point's time per step, measured, and its longest time under the cap: printed before it starts."""
    point = p.point
    per_step = estimate_step_seconds(p.config, *_input_shape(run))
    return (
        f"study point {point.index} ({point.size}, {point.label}): about {per_step:.2f} s per optimizer step here "
        f"(measured), {p.per_epoch} steps an epoch, at most {p.cap_epochs * p.per_epoch} steps: at most "
        f"{per_step * p.cap_epochs * p.per_epoch / 60:.1f} min of training before validation"
    )


def run_point(
    run: RunDir,
    config: RunConfig,
    k: int,
    progress: bool = True,
    resume_every: int = 0,
    faults: Faults = NO_FAULTS,
    cap_factor: int = 1,
) -> dict[str, Any]:
    """Train point `k` alone until its validation loss stops improving, and write its point.json.

    A finished point with today's fingerprint is returned as it is; one with another fingerprint is trained again
    (the reason printed). An interrupted point resumes. `cap_factor` 2 trains it with twice the step cap into a
    folder of its own (the convergence check).
    """
    point = point_of(run, config, k)
    lr, lr_reason = size_lr(run, config, point.size, progress)
    p = point_plan(run, config, point, lr, cap_factor)
    folder = PointRun(p.folder, run)
    done = _current_record(run, folder, p, progress)
    if done is not None:
        return done
    if progress:
        print(announce(run, p), file=sys.stderr)
    started = time.perf_counter()
    _start_folder(run, config, folder, p, f"study point {k}")
    state = _train_until_stopped(folder, config, p, progress, resume_every, faults)
    record = _point_record(run, config, folder, p, state, lr_reason, started)
    write_json(folder.point_record, record)
    return record


def _current_record(run: RunDir, folder: PointRun, p: PointPlan, progress: bool) -> dict[str, Any] | None:
    """The point's finished record when it was made from today's inputs; otherwise None, with a folder that
    cannot be continued (finished on other inputs, or begun on them) removed."""
    done = finished_point(run, p.point, p.folder)
    if done is not None:
        stale = stale_parts(done.get("fingerprint"), p.fingerprint)
        if not stale:
            return done
        if progress:
            print(f"{p.folder.name}: made with other {', '.join(stale)}; training it again", file=sys.stderr)
    if p.folder.exists() and (done is not None or _resume_stale(folder, p)):
        shutil.rmtree(p.folder)
    return None


def _start_folder(run: RunDir, config: RunConfig, folder: PointRun, p: PointPlan, what: str) -> None:
    """The point's split manifest, fingerprint, config and probe, once the disk is known to hold its training."""
    manifest = read_json(run.split_manifest)
    ensure_point_space(p.folder, p.config, *_input_shape(run), what, config.train.check_disk)
    write_json(folder.split_manifest, {"train": p.ids, "val": manifest["val"]})  # no test ids: never read here
    write_json(folder.inputs_fingerprint, p.fingerprint)
    save_config(p.config, folder.config)
    if not folder.baselines.exists():
        write_json(folder.baselines, _probe(run, folder, p.point.file_label))


def _val_losses(folder: PointRun) -> list[float]:
    """The validation loss of every epoch trained so far, the sum over targets."""
    from redheart.train.telemetry.records import read_metrics

    return [sum(r["val"]["loss"].values()) for r in read_metrics(folder.metrics_log)]


def _train_until_stopped(
    folder: PointRun, config: RunConfig, p: PointPlan, progress: bool, resume_every: int, faults: Faults
) -> dict[str, Any]:
    """Train the point a few epochs at a time until the stop rule says stop (from where it stopped when
    interrupted); returns the stop rule's last state."""
    from redheart.train.recipe import train

    study = config.study
    state = stop_rule(_val_losses(folder), p.per_epoch, study.patience_steps, p.cap_epochs, study.min_improvement)
    # Epochs per call: half the patience, so a stop is seen at most that many epochs late (the best epoch is the
    # same: every epoch is validated); one call per epoch would repeat the call's fixed cost on small subsets.
    chunk = max(1, math.ceil(study.patience_steps / p.per_epoch) // 2)
    while not state["stop"]:
        train(
            folder,
            p.config,
            lr=p.lr,
            epochs=min(p.cap_epochs, state["epochs"] + chunk),
            seed=p.config.train.seed,
            output=RunDir(p.folder),
            save_checkpoints=False,
            progress=progress,
            resume_every=resume_every,
            faults=faults,
        )
        state = stop_rule(_val_losses(folder), p.per_epoch, study.patience_steps, p.cap_epochs, study.min_improvement)
    shutil.rmtree(folder.resume, ignore_errors=True)  # only metrics are read from here on
    return state


def _point_record(
    run: RunDir,
    config: RunConfig,
    folder: PointRun,
    p: PointPlan,
    state: dict[str, Any],
    lr_reason: str,
    started: float,
) -> dict[str, Any]:
    """point.json: the point, its schedule and stop, and its best epoch's scores beside its probe's."""
    from redheart.model.model import parameter_table
    from redheart.train.telemetry.records import read_metrics

    records = read_metrics(folder.metrics_log)
    best = records[state["best_epoch"] - 1]
    baselines = read_json(folder.baselines)
    rows = parameter_table(p.config.model, config.encoder.dim, config.encoder.max_segments)
    point = p.point
    return {
        "index": point.index,
        "size": point.size,
        "fraction": point.fraction,
        "label": point.label,
        "train_records": len(p.ids),
        "verdict_train_records": _verdict_count(run, p.ids),
        "val_records": len(read_json(folder.split_manifest)["val"]),
        "parameters": sum(r["parameters"] for r in rows),
        "lr": p.lr,
        "lr_reason": lr_reason,
        "steps_per_epoch": p.per_epoch,
        "max_steps": p.max_steps,
        "patience_steps": config.study.patience_steps,
        "min_improvement": config.study.min_improvement,
        "cap_steps": p.cap_epochs * p.per_epoch,
        "epochs": state["epochs"],
        "steps": state["epochs"] * p.per_epoch,
        "best_epoch": state["best_epoch"],
        "steps_to_best": state["best_epoch"] * p.per_epoch,
        "converged": state["reason"] == "patience",
        "stopped_by": state["reason"],
        "train_seconds": sum(float(r.get("seconds", 0.0)) for r in records),
        "wall_seconds_last_call": time.perf_counter() - started,
        "val_loss": sum(best["val"]["loss"].values()),
        "model": scores(best["val"]["fused"]),
        "probe": scores(baselines["linear_probe"]),
        "prior": scores(baselines["class_prior"]),
        "fingerprint": p.fingerprint,
        "epochs_val": [
            {"epoch": r["epoch"], "val_loss": sum(r["val"]["loss"].values()), **scores(r["val"]["fused"])}
            for r in records
        ],
    }


def _resume_stale(folder: PointRun, p: PointPlan) -> bool:
    """An unfinished point folder made with another fingerprint: its epochs cannot be continued."""
    stamp = folder.inputs_fingerprint
    return not stamp.exists() or bool(stale_parts(read_json(stamp), p.fingerprint))


def _verdict_count(run: RunDir, ids: list[str]) -> int:
    """How many of `ids` carry a verdict (votes or a label): the data size of the verdict curves."""
    wanted = set(ids)
    return sum(
        1
        for _, record in clean_records(run)
        if record.get("id") in wanted and (record.get("label_scores") or record.get("label") is not None)
    )


def data_size(point: dict[str, Any], metric: str) -> int:
    """The x of a point: its training records, or, on a verdict curve, those that carry a verdict."""
    return int(point["verdict_train_records"] if metric in VERDICT_METRICS else point["train_records"])

"""The study's points: which model and which training records each one trains, and one point run alone.

Point numbering (so `redheart study --point K` can run any point on its own, e.g. one per cluster job):
the sizes in order (`study.sizes`, then "full" when CUDA is present), and within a size its fractions in
order, then, when the run holds training records from a source outside its validation split (verdict-only
records), one more point on every training record. K = size position x points per size + position in size.

A point is a run folder of its own, RunDir.study/point_K_SIZE_FRACTION/, whose split manifest names its
training subset and the run's validation ids (never the test ids); the records and embeddings are the
run's. It trains with the run's recipe (`redheart.train.recipe.train`): resumable, atomic, and a finished
point (point.json written) is not run again.
"""

from __future__ import annotations

import dataclasses
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
from redheart.core.rundir import RunDir
from redheart.data.dataset import clean_records

POINT_FILE = "point.json"
EXTRA = "all+extra"  # the fraction label of a point on every training record, verdict-only ones included
SCORES = ("emotion_accuracy", "emotion_macro_f1", "verdict_macro_f1", "verdict_cross_entropy", "regression_mae")


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

    def folder(self, run: RunDir) -> Path:
        return run.study / f"point_{self.index}_{self.size}_{self.label.replace('/', 'of').replace('+', '_')}"


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


def point_epochs(config: RunConfig, train_records: int, main_records: int) -> int:
    """`study.epochs` passes over the main training records' worth of samples, as whole epochs of the point's own.

    Every point then takes about the same number of optimizer steps, so the data axis compares how many
    distinct records the model saw, not how long it trained: a 1/8 subset is seen 8x as often.
    """
    return max(1, round(config.study.epochs * main_records / train_records))


def point_config(config: RunConfig, point: Point, lr: float, epochs: int) -> RunConfig:
    """The run's recipe with the size preset's model for `epochs` epochs in one cosine cycle.

    The cycle is fitted to the point's length so every point ends annealed to `min_lr`; with the main run's
    restart period a short point would stop at a high rate and its score would depend on where it stopped.
    The warm-up is scaled with the epochs, so it spans the same number of steps at every data size.
    """
    warmup = config.train.warmup_epochs * epochs / config.study.epochs
    train = dataclasses.replace(
        config.train, lr=lr, epochs=epochs, restart_epochs=epochs, restart_mult=1, warmup_epochs=warmup, telemetry=False
    )
    return dataclasses.replace(config, preset=point.size, model=preset(point.size).model, train=train)


def scores(metrics: dict[str, dict]) -> dict[str, float | None]:
    """The study's five numbers from evaluate_predictions-style metrics (a target without rows gives None)."""
    from redheart.scoring.metrics import headline

    head = headline(metrics)
    return {
        "emotion_accuracy": head["emotion_accuracy"],
        "emotion_macro_f1": head["emotion_macro_f1"],
        "verdict_macro_f1": head["verdict_macro_f1"],
        "verdict_cross_entropy": metrics.get("verdict", {}).get("cross_entropy"),
        "regression_mae": head["regression_mae"],
    }


def finished_point(run: RunDir, point: Point) -> dict[str, Any] | None:
    path = point.folder(run) / POINT_FILE
    return read_json(path) if path.exists() else None


def _probe(run: RunDir, point: PointRun, label: str) -> dict[str, Any]:
    """The baselines fitted on the point's training records: shared by every size of one fraction."""
    from redheart.data.dataset import load_split
    from redheart.scoring.baselines import run_baselines

    shared = run.study / "probes" / f"{label.replace('/', 'of').replace('+', '_')}.json"
    if shared.exists():
        cached = read_json(shared)
        if cached["train_ids"] == read_json(point.split_manifest)["train"]:
            return dict(cached["baselines"])
    baselines = run_baselines(load_split(point, "train"), load_split(point, "val"))
    write_json(shared, {"train_ids": read_json(point.split_manifest)["train"], "baselines": baselines})
    return baselines


def run_point(
    run: RunDir,
    config: RunConfig,
    k: int,
    progress: bool = True,
    resume_every: int = 0,
    faults: Faults = NO_FAULTS,
) -> dict[str, Any]:
    """Train point `k` alone (skipped when finished, resumed when interrupted) and write its point.json."""
    from redheart.model.model import parameter_table
    from redheart.train.recipe import resolve_lr, train

    point = point_of(run, config, k)
    done = finished_point(run, point)
    if done is not None:
        return done
    started = time.perf_counter()
    lr, lr_source = resolve_lr(run, config, None)
    folder = PointRun(point.folder(run), run)
    manifest = read_json(run.split_manifest)
    ids = point_train_ids(run, config, point)
    cfg = point_config(config, point, lr, point_epochs(config, len(ids), len(training_ids(run, config)[0])))
    write_json(folder.split_manifest, {"train": ids, "val": manifest["val"]})  # no test ids: never read here
    save_config(cfg, folder.config)
    if not folder.baselines.exists():
        write_json(folder.baselines, _probe(run, folder, point.label))
    result = train(
        folder,
        cfg,
        lr=lr,
        epochs=cfg.train.epochs,
        seed=cfg.train.seed,
        save_checkpoints=False,
        progress=progress,
        resume_every=resume_every,
        faults=faults,
    )
    from redheart.train.telemetry import read_metrics

    records = read_metrics(folder.metrics_log)
    baselines = read_json(folder.baselines)
    rows = parameter_table(cfg.model, config.encoder.dim, config.encoder.max_segments)
    verdicts = _verdict_count(run, ids)
    record = {
        "index": point.index,
        "size": point.size,
        "fraction": point.fraction,
        "label": point.label,
        "train_records": len(ids),
        "verdict_train_records": verdicts,
        "val_records": len(manifest["val"]),
        "parameters": sum(r["parameters"] for r in rows),
        "lr": lr,
        "lr_source": lr_source,
        "epochs": result.epochs,
        "train_seconds": sum(float(r.get("seconds", 0.0)) for r in records),
        "wall_seconds_last_call": time.perf_counter() - started,
        "model": scores(result.final["val"]["fused"]),
        "probe": scores(baselines["linear_probe"]),
        "prior": scores(baselines["class_prior"]),
        "epochs_val": [
            {"epoch": r["epoch"], "val_loss": sum(r["val"]["loss"].values()), **scores(r["val"]["fused"])}
            for r in records
        ],
    }
    write_json(folder.root / POINT_FILE, record)
    return record


def _verdict_count(run: RunDir, ids: list[str]) -> int:
    """How many of `ids` carry a verdict (votes or a label): the data size of the verdict curves."""
    wanted = set(ids)
    return sum(
        1
        for _, record in clean_records(run)
        if record.get("id") in wanted and (record.get("label_scores") or record.get("label") is not None)
    )


# Each metric's label and direction (+1: higher is better).
METRICS: dict[str, tuple[str, int]] = {
    "emotion_accuracy": ("emotion accuracy", 1),
    "emotion_macro_f1": ("emotion macro-F1", 1),
    "verdict_macro_f1": ("verdict macro-F1", 1),
    "verdict_cross_entropy": ("verdict cross-entropy", -1),
    "regression_mae": ("regression MAE", -1),
}
VERDICT_METRICS = ("verdict_macro_f1", "verdict_cross_entropy")


def data_size(point: dict[str, Any], metric: str) -> int:
    """The x of a point: its training records, or, on a verdict curve, those that carry a verdict."""
    return int(point["verdict_train_records"] if metric in VERDICT_METRICS else point["train_records"])

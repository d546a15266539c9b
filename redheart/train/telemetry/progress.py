"""The progress report written at every checkpoint: where the run stands, and whether it over-fits.

Built from the metrics log alone (one record per epoch), so a resumed run reports the same as an
uninterrupted one. The gap of a module is its validation loss minus its training loss (both as
model.losses defines them; positive means validation is worse); a group's loss is the sum of its
modules' losses.

Layout of progress/epoch_NNN.json and progress/latest.json:
    {"epoch": int, "epochs_total": int, "fraction_done": float, "checkpoints": [int],
     "best_checkpoint": {"epoch": int, "val_loss": float, "criterion": str} | null,
     "best_by_group": {group: {"epoch": int, "val_loss": float}},
     "overfitting": {"window": int, "groups": {group: {"epochs": [int], "gaps": [float],
                     "slope_per_epoch": float | null, "widened_3_in_a_row": bool}}},
     "time": {"elapsed_seconds": float, "mean_epoch_seconds": float, "estimated_seconds_left": float},
     "written_at": ISO-8601 UTC}
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from redheart.core.atomic import write_json
from redheart.core.rundir import RunDir
from redheart.model.groups import GROUPS

TREND_WINDOW = 5  # checkpoints the gap slope is fitted over
WIDENING_RUN = 3  # consecutive widenings that flag over-fitting


def group_losses(losses: dict[str, float]) -> dict[str, float]:
    """Per group, the sum of its modules' losses; groups without a loss (none of their modules predicts) are
    left out."""
    return {
        g: sum(losses[m] for m in modules if m in losses)
        for g, modules in GROUPS.items()
        if any(m in losses for m in modules)
    }


def loss_gaps(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{"modules": {module: val - train}, "groups": {group: val - train}} of one epoch record."""
    train, val = record["train_loss"], record["val"]["loss"]
    shared = {m: (train[m], val[m]) for m in val if m in train}
    modules = {m: v - t for m, (t, v) in shared.items()}
    train_g = group_losses({m: t for m, (t, _) in shared.items()})
    val_g = group_losses({m: v for m, (_, v) in shared.items()})
    return {"modules": modules, "groups": {g: val_g[g] - train_g[g] for g in val_g}}


def gap_trend(epochs: list[int], gaps: list[float]) -> dict[str, Any]:
    """Least-squares slope of the gap per epoch over the points given, and whether it rose WIDENING_RUN times
    running."""
    slope = float(np.polyfit(epochs, gaps, 1)[0]) if len(gaps) >= 2 else None
    tail = gaps[-(WIDENING_RUN + 1) :]
    widened = len(tail) == WIDENING_RUN + 1 and all(b > a for a, b in zip(tail, tail[1:]))
    return {"epochs": epochs, "gaps": gaps, "slope_per_epoch": slope, "widened_3_in_a_row": widened}


def _epoch_seconds(record: dict[str, Any]) -> float:
    return float(record.get("telemetry", {}).get("wall_seconds", record["seconds"]))


def progress_report(rows: list[dict[str, Any]], checkpoints: list[int], epochs_total: int) -> dict[str, Any]:
    """The report after the last record of `rows`; `checkpoints` are the epochs saved as checkpoints so far."""
    if not rows:
        raise ValueError("progress_report needs at least one epoch record in the metrics log")
    by_epoch = {row["epoch"]: row for row in rows}
    saved = [e for e in sorted(checkpoints) if e in by_epoch]
    best = None
    best_by_group: dict[str, dict[str, Any]] = {}
    for epoch in saved:
        val = by_epoch[epoch]["val"]["loss"]
        total = sum(val.values())
        if best is None or total < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": total, "criterion": "lowest sum of per-module validation losses"}
        for group, loss in group_losses(val).items():
            if group not in best_by_group or loss < best_by_group[group]["val_loss"]:
                best_by_group[group] = {"epoch": epoch, "val_loss": loss}
    window = saved[-TREND_WINDOW:]
    gaps = {epoch: loss_gaps(by_epoch[epoch])["groups"] for epoch in window}
    trends = {
        g: gap_trend(window, [gaps[e][g] for e in window])
        for g in GROUPS
        if window and all(g in gaps[e] for e in window)
    }
    epoch = rows[-1]["epoch"]
    seconds = [_epoch_seconds(row) for row in rows]
    mean_seconds = sum(seconds) / len(seconds)
    return {
        "epoch": epoch,
        "epochs_total": epochs_total,
        "fraction_done": epoch / epochs_total,
        "checkpoints": saved,
        "best_checkpoint": best,
        "best_by_group": best_by_group,
        "overfitting": {"window": TREND_WINDOW, "groups": trends},
        "time": {
            "elapsed_seconds": sum(seconds),
            "mean_epoch_seconds": mean_seconds,
            "estimated_seconds_left": mean_seconds * max(0, epochs_total - epoch),
        },
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_progress(run: RunDir, report: dict[str, Any]) -> Path:
    """Write the epoch's progress report and the latest copy; returns the epoch's."""
    path = run.progress_report(report["epoch"])
    write_json(path, report)
    write_json(run.progress_latest, report)
    return path

"""Deleting the epoch checkpoints nobody needs any more, on request, through the pins contract.

`prunable_checkpoints` names the unpinned checkpoints once the analysis has pinned its sweet spots. This
phase also waits for the crossover: its refinement, greedy soup and last-k average read every saved
checkpoint, so pruning before it would change what it chooses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.select.pins import prunable_checkpoints, read_pins
from redheart.train.disk_plan import folder_bytes


@dataclass(frozen=True)
class Pruned:
    folders: list[Path]
    bytes: int
    kept: list[Path]


def prune_checkpoints(run: RunDir, dry_run: bool = False) -> Pruned:
    """Delete (or with `dry_run` only list) the prunable checkpoint folders; ValueError before the crossover."""
    owners = read_pins(run)
    if "crossover" not in owners:
        done = "the analysis has" if "analysis" in owners else "neither the analysis nor the crossover has"
        raise ValueError(
            f"{run.checkpoints}: not pruned: {done} pinned its checkpoints yet, and the crossover reads every saved "
            f"checkpoint (refinement, greedy soup, last-k average); {run_first(run, run.crossover)}"
        )
    folders = prunable_checkpoints(run)
    size = sum(folder_bytes(folder) for folder in folders)
    if not dry_run:
        for folder in folders:
            shutil.rmtree(folder)
    kept = sorted(p for p in run.checkpoints.glob("epoch_*") if p not in folders)
    return Pruned(folders, size, kept)


def format_pruned(pruned: Pruned, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    names = ", ".join(p.name for p in pruned.folders) or "nothing"
    return (
        f"{verb} {len(pruned.folders)} checkpoints ({pruned.bytes / 1e9:.3f} GB): {names}\n"
        f"kept (pinned): {', '.join(p.name for p in pruned.kept) or 'none'}"
    )

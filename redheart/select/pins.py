"""Pinned checkpoints: the contract that keeps the epochs later phases need.

RunDir.checkpoints/pins.json maps an owner (a phase: "analysis", "crossover") to {reason: epoch}. Any
clean-up of checkpoints must ask `prunable_checkpoints`, which never returns a pinned epoch, and returns
nothing at all before the analysis has pinned its choices (until then no epoch is known to be unneeded).
"""

from __future__ import annotations

from pathlib import Path

from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import MANIFEST
from redheart.core.rundir import RunDir


def read_pins(run: RunDir) -> dict[str, dict[str, int]]:
    path = run.pins
    return read_json(path)["pins"] if path.exists() else {}


def pin_checkpoints(run: RunDir, owner: str, reasons: dict[str, int]) -> None:
    """Replace `owner`'s pins by `reasons` ({why: epoch}); other owners' pins are kept."""
    missing = sorted({e for e in reasons.values() if not (run.checkpoint(e) / MANIFEST).exists()})
    if missing:
        raise FileNotFoundError(f"{run.checkpoints}: cannot pin epochs {missing}: no complete checkpoint")
    pins = read_pins(run)
    pins[owner] = {why: int(epoch) for why, epoch in sorted(reasons.items())}
    write_json(run.pins, {"pins": pins})


def pinned_epochs(run: RunDir) -> dict[int, list[str]]:
    """{epoch: ["owner: reason", ...]} of every pinned epoch."""
    out: dict[int, list[str]] = {}
    for owner, reasons in read_pins(run).items():
        for why, epoch in reasons.items():
            out.setdefault(int(epoch), []).append(f"{owner}: {why}")
    return dict(sorted(out.items()))


def saved_epochs(run: RunDir) -> list[int]:
    """Epochs with a complete (manifest-sealed) checkpoint, ascending."""
    return sorted(int(p.name.split("_")[1]) for p in run.checkpoints.glob("epoch_*") if (p / MANIFEST).exists())


def prunable_checkpoints(run: RunDir) -> list[Path]:
    """Checkpoint folders that may be deleted: none before the analysis pinned its choices, never a pinned one."""
    if "analysis" not in read_pins(run):
        return []
    pinned = pinned_epochs(run)
    return [run.checkpoint(epoch) for epoch in saved_epochs(run) if epoch not in pinned]

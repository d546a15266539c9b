"""Checkpoint and resume-state files: the one atomic writer that turns a full disk into a named error, and the
sha256 manifest that marks a checkpoint folder complete (written last) and is checked before any file is read.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redheart.core.atomic import read_json, write_with
from redheart.core.faults import NO_FAULTS, Faults

MANIFEST = "manifest.json"
METRICS = "metrics.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, tampered with, or made for another model."""


class DiskFullError(OSError):
    """No space left while writing a state file; every earlier file is intact."""


def stored_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The header metadata a safetensors file of ours carries: the facts as one key holding sorted JSON.

    safetensors writes the metadata keys in a hash order that changes from one file to the next, so with several
    keys the same tensors gave different bytes, checksums and fingerprints (a re-saved, identical final model
    looked new, and its test results stale). One key has one order.
    """
    return {"redheart": json.dumps(metadata, sort_keys=True, separators=(",", ":"))}


def write_state_file(path: Path, writer: Callable[[Path], object], faults: Faults = NO_FAULTS) -> None:
    """Atomically write `path` with `writer(tmp)`; a full disk becomes an error that names the file."""

    def write(tmp: Path) -> None:
        writer(tmp)
        faults.at_write(Path(path))

    try:
        write_with(path, write)
    except OSError as error:
        if error.errno != errno.ENOSPC or isinstance(error, DiskFullError):
            raise
        raise DiskFullError(
            errno.ENOSPC,
            f"{path}: no space left on the device while writing it; the file was not replaced and every "
            f"earlier checkpoint and resume state is intact. Free some space, then resume",
        ) from error


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The manifest, after checking that every file it lists exists and matches its sha256."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise CheckpointError(f"{folder}: no {MANIFEST}; the checkpoint is incomplete (interrupted while saving?)")
    manifest = read_json(folder / MANIFEST)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        if sha256(path) != expected:
            raise CheckpointError(f"{path}: sha256 does not match the manifest; the file is corrupt or was modified")
    return manifest

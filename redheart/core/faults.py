"""Failure points a test can trigger, and the one way training writes its state files.

Production runs pass `NO_FAULTS`. Tests pass hooks that raise (an injected out-of-memory error, a full
disk) or sleep (so a subprocess can be killed mid-save) at the named points; the code under test runs
exactly as in production around them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redheart.core.atomic import write_with


@dataclass(frozen=True)
class Faults:
    # Called at "forward" and "backward" of every micro-step with the micro-batch size.
    step: Callable[[str, int], None] | None = None
    # Called with the target path once its temporary file is complete, before the rename.
    write: Callable[[Path], None] | None = None

    def at_step(self, stage: str, size: int) -> None:
        if self.step is not None:
            self.step(stage, size)

    def at_write(self, path: Path) -> None:
        if self.write is not None:
            self.write(path)


NO_FAULTS = Faults()


class DiskFullError(OSError):
    """No space left while writing a state file; every earlier file is intact."""


def write_state_file(path: Path, writer: Callable[[Path], None], faults: Faults = NO_FAULTS) -> None:
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

"""Failure points a test can trigger.

Production runs pass `NO_FAULTS`. Tests pass hooks that raise (an injected out-of-memory error, a full
disk) or sleep (so a subprocess can be killed mid-save) at the named points; the code under test runs
exactly as in production around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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

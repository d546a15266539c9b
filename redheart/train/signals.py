"""SIGINT and SIGTERM stop training at the next micro-step boundary instead of killing it mid-update.

The handler only records the request; the loop saves the resume state, prints the command that
resumes, and exits with 128 + the signal number (130 for Ctrl+C, 143 for SIGTERM). A further signal
while that happens is acknowledged and ignored, so a second Ctrl+C cannot cut a save in half.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving its resume state; `code` is the conventional exit code."""

    def __init__(self, request: StopRequest, message: str) -> None:
        super().__init__(request.exit_code)
        self.message = message


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded request instead of interrupting the code."""
    request = StopRequest()
    # Handlers can only be installed from the main thread; elsewhere signals keep their default effect.
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: object) -> None:
        if request.requested:
            print(
                f"\n{signal.Signals(signum).name} again: already stopping, the resume state is being saved; "
                "please wait",
                file=sys.stderr,
                flush=True,
            )
            return
        request.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this micro-step and saving the resume state",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interruption(request: StopRequest, resume_folder: Path, command: str) -> TrainingInterrupted:
    """Tell the user where the state is and how to resume; the returned exception exits with the right code."""
    message = f"stopped by {request.name}: the resume state is saved in {resume_folder}\nto resume, run: {command}"
    print(message, file=sys.stderr, flush=True)
    return TrainingInterrupted(request, message)

"""One process at a time per run folder: an advisory `fcntl.flock` on the folder's lock file.

Two phases writing one run folder at once leave it holding a mix of two runs (checkpoints, resume state and
config of each), so every command that writes a run folder holds its lock for as long as it runs. The lock
belongs to the open file, so the kernel releases it when the process ends, however it ends (kill -9
included): a lock file left behind by a dead process is not a lock, and the next process takes it at once.
The file's text (pid, command, start time) only says who holds it; it is rewritten by every new holder.

A torchrun job is one holder: its rank 0 takes the lock, the other ranks join the job rank 0 holds.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from redheart.core.rundir import RunDir


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    text = handle.read()
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"


@contextmanager
def run_lock(run: RunDir, command: str, lock: Path | None = None) -> Iterator[None]:
    """Hold `run`'s lock (or the narrower `lock` file in it, e.g. one sweep trial's) for the block;
    RunFolderBusy at once, naming the holder, when another process has it."""
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun worker: rank 0 holds the lock for the whole job
        yield
        return
    path = run.lock if lock is None else lock
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the block: the lock is the fd)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{run.root} is in use by {_holder(handle)}; wait for it to finish or stop it "
                f"(the lock is {path}, released when that process ends)"
            ) from None
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": command, "since": since}) + "\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock

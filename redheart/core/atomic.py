"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every artifact of a run goes through these helpers: write to a temporary file in the same folder,
fsync it, rename it over the target, then fsync the folder so the rename itself survives a crash.
"""

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The suffix keeps the real extension last, for writers that pick a format from it (savefig).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` only when the block ends cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
        yield handle
        handle.flush()


def finite_or_null(tree: Any) -> Any:
    """`tree` with every non-finite float (NaN, infinity) replaced by None: JSON has no such values, and
    write_json refuses them rather than write a file other readers reject."""
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else None
    if isinstance(tree, dict):
        return {k: finite_or_null(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [finite_or_null(v) for v in tree]
    return tree


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, allow_nan=False)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> None:
    """Atomically produce `path` with a library writer that takes a file name (safetensors, savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A disk cache of segment embeddings, keyed by encoder key and the sha256 of the document text.

One sqlite3 file (in write-ahead-log mode) holds everything: each write is a transaction, so a crash mid-write
leaves the cache as it was before that write. Vectors are stored as raw float32, so a cached value is
bit-identical to a fresh one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np

# Stays below SQLITE_MAX_VARIABLE_NUMBER of old sqlite builds (999).
_LOOKUP_CHUNK = 900


def default_cache_dir() -> Path:
    return Path(os.environ.get("REDHEART_CACHE") or Path.home() / ".cache" / "redheart")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Bulk get/put of (segments, dim) float32 vectors and (segments,) bool masks."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "embeddings.sqlite"
        # A generous timeout lets two processes (say, training and inference) share the file.
        self._db = sqlite3.connect(self.path, timeout=60)
        # Write-ahead log without an fsync per commit: a rolled-back or lost last write only costs a re-encode (the
        # file stays consistent), while a synced commit cost about 20 ms, paid by every batch predict and serve encode.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (encoder TEXT NOT NULL, sha256 TEXT NOT NULL,"
                " segments INTEGER NOT NULL, dim INTEGER NOT NULL, vectors BLOB NOT NULL, mask BLOB NOT NULL,"
                " PRIMARY KEY (encoder, sha256)) WITHOUT ROWID"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, encoder_key: str, hashes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The cached (vectors, mask) of every hash found; missing hashes are simply absent."""
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            rows = self._db.execute(
                "SELECT sha256, segments, dim, vectors, mask FROM embeddings"
                f" WHERE encoder = ? AND sha256 IN ({','.join('?' * len(chunk))})",
                [encoder_key, *chunk],
            )
            for sha, segments, dim, vectors, mask in rows:
                found[sha] = (
                    np.frombuffer(vectors, dtype=np.float32).reshape(segments, dim).copy(),
                    np.frombuffer(mask, dtype=np.bool_).copy(),
                )
        return found

    def put_many(self, encoder_key: str, hashes: list[str], vectors: np.ndarray, mask: np.ndarray) -> None:
        """Store rows of (N, S, D) vectors and (N, S) masks under their hashes, all in one transaction."""
        if vectors.ndim != 3 or mask.shape != vectors.shape[:2] or len(hashes) != len(vectors):
            raise ValueError(f"put_many: {len(hashes)} hashes, vectors {vectors.shape}, mask {mask.shape} do not match")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        _, segments, dim = vectors.shape
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (encoder_key, sha, segments, dim, vectors[i].tobytes(), mask[i].tobytes())
                    for i, sha in enumerate(hashes)
                ],
            )

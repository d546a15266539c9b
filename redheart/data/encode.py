"""Phase 0 embeddings: every clean record's document text as segment vectors, served from the disk cache.

`encode_run` writes `embeddings/embeddings.safetensors` (`vectors` (N,S,D) float32, `mask` (N,S) bool) and
`embeddings/index.json` (encoder key, sizes, record ids in row order); later phases read them with
`load_embeddings`. Inference uses `encode_texts` with the encoder recorded in the index.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from redheart.config import EncoderConfig
from redheart.core.atomic import read_json, write_json, write_with
from redheart.core.rundir import RunDir
from redheart.data.embedding_cache import EmbeddingCache, text_sha256
from redheart.data.encoders import Encoder, build_encoder, document_text

# Misses are encoded and stored in chunks, so an interrupted run keeps what it already computed.
_STORE_CHUNK = 1024


@dataclass(frozen=True)
class EncodeSummary:
    texts: int
    cache_hits: int
    encoded: int
    seconds: float
    encoder_key: str
    path: Path

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else float("inf")


def _encode_cached(
    texts: list[str], encoder: Encoder, cache: EmbeddingCache, progress: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """(vectors, mask, number of texts served from the cache); each distinct missing text is encoded once."""
    hashes = [text_sha256(text) for text in texts]
    found = cache.get_many(encoder.key, hashes)
    hits = sum(sha in found for sha in hashes)
    missing = {sha: text for sha, text in zip(hashes, texts) if sha not in found}
    pending = list(missing.items())
    with tqdm(total=len(pending), desc="encode", unit="text", disable=not progress or not pending) as bar:
        for start in range(0, len(pending), _STORE_CHUNK):
            chunk = pending[start : start + _STORE_CHUNK]
            vectors, mask = encoder.encode([text for _, text in chunk], progress=progress)
            expected = (len(chunk), encoder.max_segments, encoder.dim)
            if vectors.shape != expected or mask.shape != expected[:2]:
                raise RuntimeError(f"encoder {encoder.key} returned {vectors.shape}/{mask.shape}, expected {expected}")
            cache.put_many(encoder.key, [sha for sha, _ in chunk], vectors, mask)
            found.update({sha: (vectors[i], mask[i]) for i, (sha, _) in enumerate(chunk)})
            bar.update(len(chunk))
    out_vectors = np.zeros((len(texts), encoder.max_segments, encoder.dim), dtype=np.float32)
    out_mask = np.zeros((len(texts), encoder.max_segments), dtype=bool)
    for row, sha in enumerate(hashes):
        out_vectors[row], out_mask[row] = found[sha]
    return out_vectors, out_mask, hits


def encode_texts(
    texts: list[str],
    encoder: Encoder,
    cache_dir: Path | None = None,
    progress: bool = False,
    cache: EmbeddingCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment vectors (N,S,D) and mask (N,S) of raw texts, through the cache (for inference): `cache`, an open
    one a caller keeps for many batches, else the one in `cache_dir`, opened for this call."""
    if cache is not None:
        vectors, mask, _ = _encode_cached(texts, encoder, cache, progress)
        return vectors, mask
    with EmbeddingCache(cache_dir) as opened:
        vectors, mask, _ = _encode_cached(texts, encoder, opened, progress)
    return vectors, mask


def _read_clean_records(path: Path) -> tuple[list[str], list[str]]:
    """Ids and document texts of the clean records, in file order."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the data phase first")
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            record_id = record.get("id")
            if not isinstance(record_id, str) or not record_id:
                raise ValueError(f"{path}:{line_no}: field 'id' must be a non-empty string, got {record_id!r}")
            if record_id in seen:
                raise ValueError(f"{path}:{line_no}: record {record_id!r}: field 'id' is a duplicate")
            seen.add(record_id)
            ids.append(record_id)
            texts.append(document_text(record))
    return ids, texts


def encode_run(
    run: RunDir, config: EncoderConfig, cache_dir: Path | None = None, progress: bool = True
) -> EncodeSummary:
    """Embed every clean record of the run and write the embedding file and its index atomically."""
    started = time.perf_counter()
    ids, texts = _read_clean_records(run.clean_records)
    encoder = build_encoder(config)
    with EmbeddingCache(cache_dir) as cache:
        vectors, mask, hits = _encode_cached(texts, encoder, cache, progress)
    path = run.embedding_vectors
    write_with(path, lambda tmp: save_file({"vectors": vectors, "mask": mask}, str(tmp)))
    write_json(
        run.embedding_index,
        {
            "encoder_key": encoder.key,
            "dim": encoder.dim,
            "max_segments": encoder.max_segments,
            "file": path.name,
            "ids": ids,
        },
    )
    return EncodeSummary(len(texts), hits, len(texts) - hits, time.perf_counter() - started, encoder.key, path)


def load_embeddings(run: RunDir, expected_key: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids in row order, vectors (N,S,D) float32, mask (N,S) bool) written by `encode_run`."""
    index_path = run.embedding_index
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path} not found: run the encode phase first")
    index = read_json(index_path)
    if expected_key is not None and index["encoder_key"] != expected_key:
        raise ValueError(f"{index_path}: embeddings were made by {index['encoder_key']!r}, expected {expected_key!r}")
    arrays = load_file(str(run.embeddings / index["file"]))
    vectors, mask = arrays["vectors"], arrays["mask"]
    if vectors.shape != (len(index["ids"]), index["max_segments"], index["dim"]) or mask.shape != vectors.shape[:2]:
        raise ValueError(f"{index_path}: arrays {vectors.shape}/{mask.shape} do not match the index")
    return list(index["ids"]), vectors, mask


def format_encode_summary(summary: EncodeSummary) -> str:
    return (
        f"encoder {summary.encoder_key}: {summary.texts} texts, {summary.cache_hits} cache hits, "
        f"{summary.encoded} encoded, {summary.seconds:.1f} s, {summary.texts_per_second:.1f} texts/s -> {summary.path}"
    )

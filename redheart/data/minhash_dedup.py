"""Keep-first near-duplicate removal for large sets: MinHash LSH proposes pairs, fuzz.ratio decides.

The definition is `dedup.reference_near_duplicates` (keep-first, rapidfuzz fuzz.ratio of the `text` at
least the threshold); every pair is decided by fuzz.ratio itself, so the only possible difference is a
pair LSH fails to propose. Memory holds one signature row per text (bands * rows uint32), a character
histogram per text and the pairs that survive the bounds, never a structure over all pairs.

Shingles. fuzz.ratio = 100 (1 - d / (la + lb)) with d the Indel distance, so at 92 the texts differ
by up to 0.08 (la + lb) insertions and deletions. A text becomes its q-grams (q = 6) of the lower-cased,
space-collapsed text, each gram numbered by occurrence (a multiset). One insertion or deletion changes
that multiset by at most 2q - 1 grams, so the Jaccard similarity is at least (S - (2q - 1) d) /
(S + (2q - 1) d) with S = la + lb (normalising can only remove edits). Bunched edits (an added
paragraph) keep J high; the hard case is edits spread through the text, where a gram survives with
probability about (1 - p)^q at edit rate p. Measured on Scruples texts edited at random positions
down to fuzz.ratio 92: J of 0.23 and more (0.30 on average) at q = 6, against 0.04 on average for
unrelated texts; at q = 4 copies keep 0.39 but unrelated texts share 0.12, a poorer separation.
Grams in more than 5% of the texts (`_COMMON_SHARE`, counted on a sample) are common words, no
evidence of copying: dropping them brings unrelated texts to 0.005 and the edited copies to 0.18 and
above. The price: a text copied into more than 5% of the set loses the grams its copies share.

Bands. A pair of similarity J shares one of b bands of r rows with probability 1 - (1 - J^r)^b.
r = 2, b = 128 (256 permutations): 0.995 at J = 0.2, 0.99999 at J = 0.3, 0.006 at J = 0.007; r = 3
would need about 2,000 permutations for the same recall at J = 0.2. A threshold well below 92 leaves
copies with lower J and needs more bands. On 5,000 Scruples texts with 1,500 copies edited at random
down to fuzz.ratio 92, all 1,500 pairs were proposed (1,496 with deletions only);
`bench/dedup.py --large` measures recall against the exact method.

Bounds. A proposed pair is scored only if its lengths (fuzz.ratio <= 200 min / (la + lb)) and then its
character counts allow the threshold: each insertion or deletion changes one count by one, so d is at
least the L1 distance of the histograms (characters folded into bins: still a lower bound). About 2.5%
of the proposed pairs pass. datasketch's MinHashLSH keeps a Python set per bucket: 128 bands of 30,923
texts took 1.2 GiB, so the bands here are sorted numpy arrays, one band at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasketch import MinHash
from rapidfuzz import fuzz
from tqdm import tqdm

from redheart.data.dedup import DedupResult, Duplicate, check_threshold
from redheart.data.qgrams import MIX, qgram_hashes
from redheart.data.reader import DataError, DataFile

BANDS = 128
ROWS = 2
_Q = 6
_COMMON_SHARE = 0.05  # a gram in more than this share of the texts is not evidence of duplication
_COMMON_MIN_TEXTS = 20  # ... and never one in fewer texts: small sets keep all their grams
_FREQUENCY_SAMPLE = 4096  # texts whose grams are counted: plenty to tell a 5% gram from a rare one
_FREQUENCY_BITS = 22  # hashed document-frequency table: a collision can only make a gram look common
_HISTOGRAM_BINS = 128


@dataclass(frozen=True)
class Candidates:
    pairs: np.ndarray  # (earlier, later) rows proposed by LSH and allowed by the bounds, sorted by later, earlier
    collisions: int  # pairs sharing a band, once per band shared: the work LSH left to the bounds


def minhash_near_duplicates(
    texts: Sequence[str], threshold: float, bands: int = BANDS, rows: int = ROWS, seed: int = 1, progress: bool = False
) -> DedupResult:
    """Keep-first near-duplicate removal: the result of `reference_near_duplicates` for every pair LSH finds."""
    candidates = candidate_pairs(texts, threshold, bands, rows, seed, progress)
    return keep_first(texts, candidates.pairs, threshold, progress)


def candidate_pairs(
    texts: Sequence[str], threshold: float, bands: int = BANDS, rows: int = ROWS, seed: int = 1, progress: bool = False
) -> Candidates:
    """The pairs that share at least one LSH band and pass the length and character-count bounds."""
    check_threshold(threshold)
    signatures = _signatures(texts, bands * rows, seed, progress)
    bounds = _Bounds(texts, threshold)
    found, collisions = [], 0
    for band in range(bands):
        keys = np.zeros(len(texts), dtype=np.uint64)
        with np.errstate(over="ignore"):  # a hash of the band's rows: a collision only adds a candidate
            for column in signatures[:, band * rows : (band + 1) * rows].T:
                keys = keys * MIX + column
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        # Equal keys are contiguous once sorted: pairs d apart within a run, for d = 1, 2, ... until none.
        for d in range(1, len(texts)):
            same = np.flatnonzero(ordered[d:] == ordered[:-d])
            if not len(same):
                break
            collisions += len(same)
            pairs = np.sort(np.stack([order[same], order[same + d]], axis=1), axis=1)
            found.append(pairs[bounds.allow(pairs)])
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), dtype=np.intp)
    return Candidates(pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))], collisions)


def keep_first(texts: Sequence[str], pairs: np.ndarray, threshold: float, progress: bool = False) -> DedupResult:
    """The reference loop over candidate pairs ordered by later then earlier text.

    The later text of a pair is removed by the first earlier text that is kept and scores at least the
    threshold; a pair with an already removed text cannot change anything and is not scored."""
    removed: dict[int, Duplicate] = {}
    for earlier, later in tqdm(pairs.tolist(), desc="verify", unit="pair", disable=not progress):
        if later in removed or earlier in removed:
            continue
        score = fuzz.ratio(texts[earlier], texts[later], score_cutoff=threshold)
        if score >= threshold:
            removed[later] = Duplicate(later, earlier, score)
    kept = [i for i in range(len(texts)) if i not in removed]
    return DedupResult(kept, [removed[j] for j in sorted(removed)])


def read_texts(path: str | Path) -> list[str]:
    """The `text` of every record of a JSON array or JSON Lines file (plain or gzip), in file order; other fields
    are ignored. DataError names the first record that does not parse or has no string `text`."""
    texts = []
    with DataFile.open(path) as data:
        for line, _, record, problems in data.items():
            if problems:
                raise DataError(f"{path}, {problems[0].message}")
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{path}, line {line}: expected a JSON object with a string 'text' field")
            texts.append(record["text"])
    return texts


def _signatures(texts: Sequence[str], num_perm: int, seed: int, progress: bool) -> np.ndarray:
    """One MinHash row per text over its uncommon grams, found first by document frequency in a sample."""
    sample = texts[:: max(1, len(texts) // _FREQUENCY_SAMPLE)]
    frequency = np.zeros(1 << _FREQUENCY_BITS, dtype=np.int64)
    for start in range(0, len(sample), 1024):
        prefixes = [_grams(t) >> np.uint64(64 - _FREQUENCY_BITS) for t in sample[start : start + 1024]]
        frequency += np.bincount(np.concatenate(prefixes).astype(np.intp), minlength=1 << _FREQUENCY_BITS)
    common = frequency > max(_COMMON_SHARE * len(sample), _COMMON_MIN_TEXTS)
    permutations = MinHash(num_perm=num_perm, seed=seed).permutations
    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, text in enumerate(tqdm(texts, desc="minhash", unit="text", disable=not progress)):
        grams = _grams(text)
        grams = grams[~common[(grams >> np.uint64(64 - _FREQUENCY_BITS)).astype(np.intp)]]
        sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, permutations=permutations, scheme="affine32")
        sketch.update_batch((grams >> np.uint64(32)).tolist())
        signatures[i] = sketch.hashvalues
    return signatures


def _grams(text: str) -> np.ndarray:
    """The q-gram hashes of the lower-cased, space-collapsed text, padded so its first and last characters
    start and end grams of their own."""
    padded = "\x02" * (_Q - 1) + " ".join(text.lower().split()) + "\x03" * (_Q - 1)
    return qgram_hashes(padded, _Q)


class _Bounds:
    """Upper bounds of fuzz.ratio from lengths and character counts (folded into bins), both proven."""

    def __init__(self, texts: Sequence[str], threshold: float) -> None:
        self.threshold = threshold
        self.lengths = np.array([len(t) for t in texts], dtype=np.int64)
        self.histograms = np.zeros((len(texts), _HISTOGRAM_BINS), dtype=np.int32)
        for i, text in enumerate(texts):
            codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) % _HISTOGRAM_BINS
            self.histograms[i] = np.bincount(codes, minlength=_HISTOGRAM_BINS)

    def allow(self, pairs: np.ndarray) -> np.ndarray:
        """Whether each (a, b) row may still reach the threshold."""
        a, b = pairs[:, 0], pairs[:, 1]
        total = self.lengths[a] + self.lengths[b]
        allowed = self._reachable(np.abs(self.lengths[a] - self.lengths[b]), total)
        a, b, total = a[allowed], b[allowed], total[allowed]
        allowed[allowed] = self._reachable(np.abs(self.histograms[a] - self.histograms[b]).sum(axis=1), total)
        return allowed

    def _reachable(self, distance: np.ndarray, total: np.ndarray) -> np.ndarray:
        """Whether fuzz.ratio = 100 (1 - d / total) can reach the threshold with d at least `distance`."""
        # A hair of slack: float rounding at the bound may only keep a pair, never drop one.
        return 100.0 * (total - distance) >= self.threshold * total - 1e-6 * np.maximum(total, 1)

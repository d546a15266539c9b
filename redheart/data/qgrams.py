"""Hashed q-gram multisets: one 64-bit hash per q-gram occurrence, shared by the exact near-duplicate bound
(`dedup`) and the MinHash shingles (`minhash_dedup`).

A gram seen for the k-th time in a text hashes (gram, k), so the multiset of a text's grams becomes a set of
hashes, and the hashes two texts share count the occurrences of grams they share.
"""

from __future__ import annotations

import numpy as np

# Odd 64-bit constants (the first is 2^64 over the golden ratio): multiplying by an odd number permutes uint64,
# so a hash step maps distinct values to distinct values.
MIX = np.uint64(0x9E3779B97F4A7C15)
_OCCURRENCE_MIX = np.uint64(0xD6E8FEB86659FD93)


def qgram_hashes(text: str, q: int) -> np.ndarray:
    """One uint64 hash per q-gram occurrence of `text` (code points, no normalising), sorted by gram; empty when
    the text is shorter than `q`. Lone surrogates hash as their code points."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    n = len(codes) - q + 1
    if n < 1:
        return np.zeros(0, dtype=np.uint64)
    grams = codes[:n].copy()
    with np.errstate(over="ignore"):
        for k in range(1, q):
            grams = grams * MIX + codes[k : n + k]
        grams.sort()
        starts = np.flatnonzero(np.r_[True, grams[1:] != grams[:-1]])
        copy = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        return (grams ^ (copy.astype(np.uint64) * _OCCURRENCE_MIX)) * MIX

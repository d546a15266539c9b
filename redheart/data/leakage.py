"""How close validation and test come to training, measured on what the model reads.

Near-duplicate removal keeps the first of any two records whose `text` reaches the dedup threshold, so no
pair across splits can reach it on `text` afterwards (`split.check_leakage` guards that invariant and is
zero by construction). This module measures what that guarantee leaves open, on the title and text as the
encoder sees them (`encoders.document_text`), every validation and test record against every training one:

  fuzz.ratio >= the dedup threshold   titles can make two texts closer than their bodies alone
  fuzz.ratio >= LOOSE_RATIO           near-copies that dedup let through (a rewritten sentence or two)
  Jaccard >= JACCARD of word shingles the same story told with reordered or inserted passages, which
                                      an edit distance scores low

The shingle Jaccard is computed exactly for every pair (a sparse product of the shingle sets, `close_pairs`),
so its count is exhaustive. fuzz.ratio is computed for the pairs whose Jaccard reaches PROPOSAL: scoring every
pair is quadratic in characters (about 20 minutes of one core on the bundled split), so a near-copy whose edits
touch every third word, sharing fewer shingles than that, is not scored: the fuzz.ratio counts are lower bounds.

The counts are reported, not enforced: a pair above these looser thresholds is a reason to look at it,
not proof of a duplicate. The first pairs of each kind are listed with their scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from rapidfuzz import fuzz
from scipy import sparse

from redheart.data.encoders import document_text
from redheart.data.split import Split

LOOSE_RATIO = 80.0
JACCARD = 0.5
PROPOSAL = 0.2
SHINGLE_WORDS = 3
ROWS_PER_BLOCK = 256  # held-out rows per dense block of the pair counts (256 x train records int32)
LISTED = 20
_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[str]:
    """The set of `size`-word windows of the lower-cased words of `text` (the whole text when shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _incidence(sets: Sequence[set[str]], vocabulary: dict[str, int]) -> sparse.csr_matrix:
    rows = [i for i, words in enumerate(sets) for _ in words]
    cols = [vocabulary.setdefault(w, len(vocabulary)) for words in sets for w in words]
    return sparse.csr_matrix(
        (np.ones(len(cols), dtype=np.int32), (rows, cols)), shape=(len(sets), max(1, len(vocabulary)))
    )


def close_pairs(
    queries: Sequence[str], choices: Sequence[str], proposal: float = PROPOSAL
) -> list[tuple[int, int, float, float]]:
    """(query index, choice index, shingle Jaccard, fuzz.ratio) of every pair whose Jaccard reaches `proposal`.

    Every pair's shared-shingle count comes from one sparse product of the two incidence matrices, so the
    Jaccard of every pair is exact; fuzz.ratio is computed for the pairs kept.
    """
    query_sets, choice_sets = [shingles(t) for t in queries], [shingles(t) for t in choices]
    vocabulary: dict[str, int] = {}
    right = _incidence(choice_sets, vocabulary)
    left = _incidence(query_sets, vocabulary)
    right = sparse.csr_matrix((right.data, right.indices, right.indptr), shape=(right.shape[0], left.shape[1]))
    sizes_q = np.array([len(s) for s in query_sets], dtype=np.int64)
    sizes_c = np.array([len(s) for s in choice_sets], dtype=np.int64)
    pairs = []
    for start in range(0, len(queries), ROWS_PER_BLOCK):
        shared = (left[start : start + ROWS_PER_BLOCK] @ right.T).toarray().astype(np.int64)
        union = sizes_q[start : start + ROWS_PER_BLOCK, None] + sizes_c[None, :] - shared
        similarity = shared / np.maximum(union, 1)
        for q, c in zip(*np.nonzero(similarity >= proposal)):
            q_all = start + int(q)
            pairs.append((q_all, int(c), float(similarity[q, c]), float(fuzz.ratio(queries[q_all], choices[c]))))
    return pairs


def leakage_report(records: Sequence[dict[str, Any]], split: Split, dedup_threshold: float) -> dict[str, Any]:
    """Pair counts between validation/test and train on title + text at each threshold, with the first pairs."""
    by_id = {record["id"]: record for record in records}
    train = [document_text(by_id[i]) for i in split.train]
    held_ids = [(name, i) for name in ("val", "test") for i in getattr(split, name)]
    held = [document_text(by_id[i]) for _, i in held_ids]
    pairs = close_pairs(held, train)

    def kept(jaccard_at: float = 2.0, ratio_at: float = 101.0) -> list[tuple[int, int, float, float]]:
        return [p for p in pairs if p[2] >= jaccard_at or p[3] >= ratio_at]

    def listed(found: list[tuple[int, int, float, float]], key: int) -> list[dict[str, Any]]:
        return [
            {
                "split": held_ids[q][0],
                "id": held_ids[q][1],
                "train_id": split.train[c],
                "jaccard": round(j, 4),
                "fuzz_ratio": round(r, 2),
            }
            for q, c, j, r in sorted(found, key=lambda p: -p[key])[:LISTED]
        ]

    strict, loose, shared = kept(ratio_at=dedup_threshold), kept(ratio_at=LOOSE_RATIO), kept(jaccard_at=JACCARD)
    return {
        "compared": "title + text, every validation and test record against every training record",
        "proposed_by": f"word {SHINGLE_WORDS}-shingle Jaccard exact for every pair; fuzz.ratio for the {len(pairs)} "
        f"pairs with Jaccard >= {PROPOSAL:g}, so the fuzz.ratio counts are lower bounds",
        "lower_bounds": [f"fuzz.ratio >= {dedup_threshold:g}", f"fuzz.ratio >= {LOOSE_RATIO:g}"],
        "pairs": {
            f"fuzz.ratio >= {dedup_threshold:g}": len(strict),
            f"fuzz.ratio >= {LOOSE_RATIO:g}": len(loose),
            f"shingle Jaccard >= {JACCARD:g}": len(shared),
        },
        "held_out_records": {
            f"fuzz.ratio >= {LOOSE_RATIO:g}": len({q for q, *_ in loose}),
            f"shingle Jaccard >= {JACCARD:g}": len({q for q, *_ in shared}),
        },
        "examples": {"fuzz.ratio": listed(loose, 3), "jaccard": listed(shared, 2)},
    }


def format_leakage(report: dict[str, Any]) -> str:
    """One line: the pair count at each threshold."""
    bounds = report.get("lower_bounds", [])
    counts = "; ".join(
        f"{name}: {'at least ' if name in bounds else ''}{count}" for name, count in report["pairs"].items()
    )
    return f"closeness of val/test to train ({report['compared'].split(',')[0]}), pairs: {counts}"

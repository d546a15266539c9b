"""How close validation and test come to training, measured on what the model reads.

Near-duplicate removal keeps the first of any two records whose `text` reaches the dedup threshold, so no
pair across splits can reach it on `text` afterwards (`split.check_leakage` guards that invariant and is
zero by construction). This module measures what that guarantee leaves open, on the title and text as the
encoder sees them (`encoders.document_text`), every validation and test record against every training one:

  fuzz.ratio >= the dedup threshold   titles can make two texts closer than their bodies alone
  fuzz.ratio >= LOOSE_RATIO           near-copies that dedup let through (a rewritten sentence or two)
  Jaccard >= JACCARD of word shingles the same story told with reordered or inserted passages, which
                                      an edit distance scores low

Pairs are proposed by MinHash LSH (datasketch) on word shingles and both scores computed exactly for
each proposed pair (`close_pairs`).

The counts are reported, not enforced: a pair above these looser thresholds is a reason to look at it,
not proof of a duplicate. The first pairs of each kind are listed with their scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from datasketch import MinHash, MinHashLSH
from rapidfuzz import fuzz

from redheart.data.encoders import document_text
from redheart.data.split import Split

LOOSE_RATIO = 80.0
JACCARD = 0.5
PROPOSAL = 0.2
SHINGLE_WORDS = 3
NUM_PERM = 128
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


def close_pairs(
    queries: Sequence[str], choices: Sequence[str], proposal: float = PROPOSAL, num_perm: int = NUM_PERM
) -> list[tuple[int, int, float, float]]:
    """(query index, choice index, shingle Jaccard, fuzz.ratio) of every pair MinHash LSH proposes at `proposal`.

    Scoring every pair with fuzz.ratio is quadratic in characters (minutes on the bundled set), so LSH on
    word shingles picks the pairs that share at least about `proposal` of their shingles and both scores
    are computed exactly for those. A near-copy whose edits touch every third word can share fewer
    shingles than that and is then not scored: the counts are lower bounds.
    """

    def sketch(words: set[str]) -> MinHash:
        minhash = MinHash(num_perm=num_perm, seed=1)
        minhash.update_batch([w.encode("utf-8") for w in words])
        return minhash

    choice_sets = [shingles(text) for text in choices]
    lsh = MinHashLSH(threshold=proposal, num_perm=num_perm)
    for index, words in enumerate(choice_sets):
        lsh.insert(index, sketch(words))
    pairs = []
    for q, text in enumerate(queries):
        words = shingles(text)
        for c in sorted(lsh.query(sketch(words))):
            pairs.append((q, int(c), jaccard(words, choice_sets[c]), float(fuzz.ratio(text, choices[c]))))
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
        "proposed_by": f"MinHash LSH on word {SHINGLE_WORDS}-shingles ({NUM_PERM} permutations, Jaccard about "
        f"{PROPOSAL:g} or more); {len(pairs)} pairs proposed and scored exactly",
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
    counts = "; ".join(f"{name}: {count}" for name, count in report["pairs"].items())
    return f"closeness of val/test to train ({report['compared'].split(',')[0]}), pairs: {counts}"

"""Seeded train/val/test split, stratified by verdict x text-length bin, and the leakage check.

Stratifying on the verdict crossed with a text-length quantile bin keeps both the class balance and
the length distribution of every split close to the whole set's. scikit-learn's `train_test_split`
does the work in two stages (test off the whole set, then val off the rest); a stratum too small for
it is merged into its label's stratum, then into one shared stratum, and a stage that still cannot be
stratified falls back to the label alone, then to a plain seeded shuffle. The manifest records which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from redheart.config import DataConfig
from redheart.data.dedup import cross_pairs

NO_LABEL = "none"  # the stratum (and the distribution key) of records without a verdict


class LeakageError(RuntimeError):
    """A val/test text is a near-duplicate of a train text."""


@dataclass(frozen=True)
class Split:
    train: list[str]  # ids, in input order
    val: list[str]
    test: list[str]
    stratified_by: dict[str, str]  # stage ("test", "val") -> "label x length", "label" or "none"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_records(records: Sequence[dict[str, Any]], config: DataConfig) -> Split:
    """Split clean records into train/val/test by `config.split` fractions, seeded by `config.seed`."""
    fractions = np.asarray(config.split, dtype=float)
    if len(fractions) != 3 or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {config.split}")
    n = len(records)
    n_test = round(n * fractions[2])
    n_val = round(n * fractions[1])
    fine = _length_strata(records, config.length_bins)
    coarse = [record["label"] or NO_LABEL for record in records]
    positions = np.arange(n)
    rest, test, test_by = _stage(positions, n_test, fine, coarse, config.seed)
    train, val, val_by = _stage(rest, n_val, fine, coarse, config.seed)
    ids = [record["id"] for record in records]
    return Split(
        train=[ids[i] for i in sorted(train)],
        val=[ids[i] for i in sorted(val)],
        test=[ids[i] for i in sorted(test)],
        stratified_by={"test": test_by, "val": val_by},
    )


def leakage_pairs(
    records: Sequence[dict[str, Any]], split: Split, threshold: float, progress: bool = False
) -> list[dict[str, Any]]:
    """Every val/test record whose text is a near-duplicate (fuzz.ratio >= threshold) of a train text."""
    by_id = {record["id"]: record for record in records}
    train = [by_id[i]["text"] for i in split.train]
    held_ids = [(name, i) for name in ("val", "test") for i in getattr(split, name)]
    held = [by_id[i]["text"] for _, i in held_ids]
    return [
        {"split": held_ids[q][0], "id": held_ids[q][1], "train_id": split.train[c], "score": score}
        for q, c, score in cross_pairs(held, train, threshold, progress=progress)
    ]


def check_leakage(records: Sequence[dict[str, Any]], split: Split, threshold: float, progress: bool = False) -> int:
    """Return the number of leaking pairs, which is 0; raise LeakageError naming them otherwise."""
    leaks = leakage_pairs(records, split, threshold, progress=progress)
    if leaks:
        listed = "\n".join(
            f"  {leak['split']} {leak['id']!r} ~ train {leak['train_id']!r} (fuzz.ratio {leak['score']:.1f})"
            for leak in leaks[:20]
        )
        raise LeakageError(
            f"{len(leaks)} val/test text(s) are near-duplicates of train texts (threshold {threshold}):\n{listed}"
        )
    return 0


def _length_strata(records: Sequence[dict[str, Any]], bins: int) -> list[str]:
    lengths = np.array([len(record["text"]) for record in records], dtype=float)
    edges: np.ndarray | list[float] = (
        np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1])) if len(lengths) and bins > 1 else []
    )
    length_bin = np.searchsorted(edges, lengths, side="right")
    return [f"{record['label'] or NO_LABEL}|{b}" for record, b in zip(records, length_bin)]


def _stage(
    positions: np.ndarray, n_out: int, fine: list[str], coarse: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Take `n_out` of `positions` out, stratified as finely as the counts allow."""
    if n_out == 0:
        return positions, positions[:0], "none"
    if n_out >= len(positions):
        return positions[:0], positions, "none"
    for name, keys in (("label x length", fine), ("label", coarse)):
        strata = _merge_small([keys[p] for p in positions], [coarse[p] for p in positions])
        try:
            keep, out = train_test_split(positions, test_size=n_out, random_state=seed, stratify=strata)
            return keep, out, name
        except ValueError:  # a stratum or a side too small to stratify
            continue
    keep, out = train_test_split(positions, test_size=n_out, random_state=seed, shuffle=True)
    return keep, out, "none"


def _merge_small(keys: list[str], labels: list[str], minimum: int = 2) -> list[str]:
    """Strata with fewer than `minimum` members join their label's stratum, then one shared stratum."""
    counts = Counter(keys)
    keys = [key if counts[key] >= minimum else label for key, label in zip(keys, labels)]
    counts = Counter(keys)
    keys = [key if counts[key] >= minimum else "rare" for key in keys]
    counts = Counter(keys)
    if counts.get("rare", minimum) < minimum:  # a single leftover joins the largest stratum
        largest = max((k for k in counts if k != "rare"), key=counts.__getitem__, default="rare")
        keys = [largest if key == "rare" else key for key in keys]
    return keys

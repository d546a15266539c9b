"""Per-split training tensors built from a run folder, and the seeded data order.

Everything lives in memory (the full set is ~10k x 4 x 384 floats), so a batch is a gather by index
and the data position of a run is just (epoch, micro-step): the order of an epoch is a permutation
seeded from (seed, epoch), which is what makes resume exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from redheart.architecture import TARGET_DIMS, VERDICTS
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.encode import load_embeddings

SPLITS = ("train", "val", "test")
VOTES = "verdict_votes"  # (N, 5) raw vote counts beside the normalised "verdict" distribution


@dataclass(frozen=True)
class SplitTensors:
    """One split in memory: "x", "mask", every target of TARGET_DIMS and its "<name>_present" flag, and the
    verdict's raw vote counts ("verdict_votes")."""

    name: str
    ids: tuple[str, ...]
    tensors: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if self.tensors["mask"].device.type == "cpu":  # once, on the host: the model reads masks unchecked on a GPU
            check_prefix_mask(self.tensors["mask"])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_dim(self) -> int:
        return int(self.tensors["x"].shape[2])

    @property
    def max_segments(self) -> int:
        return int(self.tensors["x"].shape[1])

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The rows `index` (a host tensor) of every tensor, on `device`: gathered where the split lives (on
        the device after `to`, so only the index crosses)."""
        where = self.tensors["x"].device
        index = index.to(where, non_blocking=True)
        return {key: value[index].to(device, non_blocking=True) for key, value in self.tensors.items()}

    def to(self, device: torch.device | str) -> SplitTensors:
        """The split with its tensors on `device`: a whole training split is tens of MB, so on a GPU it lives
        there and a batch is a gather on the device, not a copy from pageable host memory per micro-step. The
        presence flags stay on the host too (verdict_only, training_order read them)."""
        moved = SplitTensors(self.name, self.ids, {k: v.to(device) for k, v in self.tensors.items()})
        object.__setattr__(moved, "_host_presence", {k: v.copy() for k, v in self._presence().items()})
        return moved

    def _presence(self) -> dict[str, np.ndarray]:
        """Every target's presence flags on the host: views of a host split's tensors (so they follow changes),
        the copies `to` made for a split on a device."""
        if self.tensors["x"].device.type == "cpu":
            return {f"{name}_present": self.tensors[f"{name}_present"].numpy() for name in TARGET_DIMS}
        return cast(dict[str, np.ndarray], self.__dict__["_host_presence"])

    def verdict_only_rows(self) -> np.ndarray:
        """(N,) bool on the host: verdict_only_rows of the split's tensors, without reading the device."""
        presence = self._presence()
        others = np.stack([presence[f"{name}_present"] for name in TARGET_DIMS if name != "verdict"]).any(0)
        return cast(np.ndarray, presence["verdict_present"] & ~others)

    def verdict_only(self, index: torch.Tensor) -> bool:
        """Whether every row of `index` (a host tensor) is verdict-only, read on the host: no wait for a GPU."""
        return bool(self.verdict_only_rows()[index.numpy()].all())


def check_prefix_mask(mask: torch.Tensor) -> None:
    """Real segments come first in every row, and every row has one: the recurrent analyzer packs sequences
    by their length."""
    lengths = mask.sum(1, keepdim=True)
    if not bool(lengths.min() > 0):
        raise ValueError("every row of mask needs at least one real segment")
    if not torch.equal(mask.to(torch.bool), torch.arange(mask.shape[1], device=mask.device) < lengths):
        raise ValueError("mask must mark a prefix of real segments in every row (True, ..., True, False, ...)")


def load_split(run: RunDir, name: str) -> SplitTensors:
    """Tensors of one split; only that split's records are read (the test split only when asked for)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
    manifest = read_json(run.split_manifest)
    if name not in manifest:
        raise ValueError(f"{run.split_manifest}: the split manifest has no {name!r} list")
    ids = tuple(manifest[name])
    wanted = set(ids)
    records = _read_records(run, wanted)
    missing = [record_id for record_id in ids if record_id not in records]
    if missing:
        raise ValueError(
            f"{run.clean_records}: {len(missing)} ids of split {name!r} are not clean records, e.g. {missing[:3]}"
        )

    emb_ids, vectors, mask = load_embeddings(run)
    row_of = {record_id: row for row, record_id in enumerate(emb_ids)}
    absent = [record_id for record_id in ids if record_id not in row_of]
    if absent:
        raise ValueError(f"{run.embeddings}: {len(absent)} ids of split {name!r} have no embedding, e.g. {absent[:3]}")
    rows = torch.as_tensor([row_of[record_id] for record_id in ids], dtype=torch.long)
    tensors: dict[str, torch.Tensor] = {
        "x": torch.as_tensor(vectors, dtype=torch.float32)[rows].contiguous(),
        "mask": torch.as_tensor(mask, dtype=torch.bool)[rows].contiguous(),
    }
    tensors.update(targets_tensors([records[record_id] for record_id in ids]))
    return SplitTensors(name=name, ids=ids, tensors=tensors)


def split_hash(run: RunDir) -> str:
    """Identity of the split (ids of every split, in order), so a resume on another split is refused."""
    manifest = read_json(run.split_manifest)
    lists = {name: manifest.get(name, []) for name in SPLITS}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


def targets_tensors(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Targets of clean records as (N, k) float tensors plus (N,) "<name>_present" masks."""
    out: dict[str, torch.Tensor] = {}
    for name, width in TARGET_DIMS.items():
        values = torch.zeros(len(records), width, dtype=torch.float32)
        present = torch.zeros(len(records), dtype=torch.bool)
        for row, record in enumerate(records):
            target = record_target(record, name)
            if target is not None:
                values[row] = torch.as_tensor(target, dtype=torch.float32)
                present[row] = True
        out[name] = values
        out[f"{name}_present"] = present
    # The raw vote counts beside the normalised "verdict", for the Dirichlet-multinomial loss; a record with a
    # label and no counts gives one vote to its label.
    votes = torch.zeros(len(records), TARGET_DIMS["verdict"], dtype=torch.float32)
    for row, record in enumerate(records):
        counts = verdict_votes(record)
        if counts is not None:
            votes[row] = torch.as_tensor(counts, dtype=torch.float32)
    out[VOTES] = votes
    return out


def verdict_votes(record: dict[str, Any]) -> list[float] | None:
    """The community's vote counts in VERDICTS order, or one vote for `label` when there are no counts."""
    shares = _verdict(record)
    if shares is None:
        return None
    scores = record.get("label_scores")
    if scores and sum(float(scores.get(verdict, 0)) for verdict in VERDICTS) > 0:
        return [float(scores.get(verdict, 0)) for verdict in VERDICTS]
    return shares


def verdict_only_rows(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) bool: the rows with a verdict and no other target (they need only the verdict's modules)."""
    others = [tensors[f"{name}_present"] for name in TARGET_DIMS if name != "verdict"]
    return tensors["verdict_present"] & ~torch.stack(others).any(0)


def training_order(split: SplitTensors, seed: int, epoch: int, window: int) -> torch.Tensor:
    """The order of epoch `epoch` as the trainer walks it, in windows of `window` samples.

    Without verdict-only rows this is `epoch_order` unchanged. With them, the epoch's order is cut into
    windows of one kind each (verdict-only, or the rest), whose order is shuffled by (seed, epoch): a
    verdict-only window runs only the verdict's modules. The two partial windows go last, so at most the
    final windows mix the kinds. Like `epoch_order`, a function of its arguments only, so resume is exact.
    """
    order = epoch_order(len(split), seed, epoch)
    only = torch.from_numpy(split.verdict_only_rows())
    if not bool(only.any()) or bool(only.all()):
        return order
    chunks, tails = [], []
    for part in (order[~only[order]], order[only[order]]):
        whole = len(part) - len(part) % window
        chunks += list(torch.split(part[:whole], window))
        tails.append(part[whole:])
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    shuffled = [chunks[int(i)] for i in torch.randperm(len(chunks), generator=generator)]
    return torch.cat([*shuffled, *tails])


def record_target(record: dict[str, Any], name: str) -> list[float] | None:
    """One target of a clean record as a list of TARGET_DIMS[name] floats, or None when absent."""
    if name == "verdict":
        return _verdict(record)
    value = record.get(name)
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or len(values) != TARGET_DIMS[name]:
        raise ValueError(
            f"record {record.get('id')!r}: field {name!r} must hold {TARGET_DIMS[name]} floats, got {value!r}"
        )
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(
            f"record {record.get('id')!r}: field {name!r} holds a non-finite or non-numeric value: {value!r}"
        )
    return [float(v) for v in values]


def _verdict(record: dict[str, Any]) -> list[float] | None:
    scores = record.get("label_scores")
    if scores:
        unknown = set(scores) - set(VERDICTS)
        if unknown:
            raise ValueError(
                f"record {record.get('id')!r}: field 'label_scores' has unknown verdicts {sorted(unknown)}"
            )
        votes = [float(scores.get(verdict, 0)) for verdict in VERDICTS]
        if any(v < 0 for v in votes):
            raise ValueError(f"record {record.get('id')!r}: field 'label_scores' has negative votes: {scores!r}")
        total = sum(votes)
        if total > 0:
            return [v / total for v in votes]
    label = record.get("label")
    if label is None:
        return None
    if label not in VERDICTS:
        raise ValueError(f"record {record.get('id')!r}: field 'label' is {label!r}, not one of {VERDICTS}")
    return [1.0 if verdict == label else 0.0 for verdict in VERDICTS]


def clean_records(run: RunDir) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every record in the run's clean.jsonl, in order; a line that is not JSON is an
    error naming it."""
    with open(run.clean_records, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{run.clean_records}:{line_no}: not valid JSON ({error})") from None


def _read_records(run: RunDir, wanted: set[str]) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for _, record in clean_records(run) if record.get("id") in wanted}


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch `epoch`: a function of (seed, epoch) only, so any position can be recomputed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


def micro_batches(size: int, micro_batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index tensors of the micro-batches of one epoch, in order (the last one may be smaller)."""
    return list(torch.split(epoch_order(size, seed, epoch), micro_batch))


def split_targets(split: SplitTensors) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every target of the split and its presence flags, as numpy arrays by target name."""
    targets = {name: split.tensors[name].numpy() for name in TARGET_DIMS}
    present = {name: split.tensors[f"{name}_present"].numpy() for name in TARGET_DIMS}
    return targets, present

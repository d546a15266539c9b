"""Phase 0 as one function: load + validate, near-duplicate removal, split, leakage check, statistics.

Reads one or more data files and writes the run's data artifacts (all through redheart.core.atomic):
clean records, rejected records, duplicates, split manifest and the statistics for the paper.

Every clean record carries `source`, the stem of the file it came from. The `data` files are the fully
labelled sets: validation and test are drawn from them alone. The `extra` files (e.g. community verdicts
without the other targets) only ever join the training split, so validation and test, and every table
scored on them, stay those of the labelled sets. Near-duplicates are removed over the union (the first
occurrence is kept, and the labelled sets come first) and ids must be unique over the union.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

from redheart.architecture import EMOTIONS, VERDICTS
from redheart.config import DataConfig
from redheart.core.atomic import write_json, write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.dedup import DedupResult, near_duplicates
from redheart.data.leakage import format_leakage, leakage_report
from redheart.data.minhash_dedup import minhash_near_duplicates
from redheart.data.records import load_records
from redheart.data.split import NO_LABEL, Split, check_leakage, split_records

_SAMPLE_PAIRS = 10
_PREVIEW_CHARS = 200


@dataclass(frozen=True)
class PrepareSummary:
    data_path: str  # the input files, joined by ", "
    records_read: int
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicates_removed: int
    split_sizes: dict[str, int]
    label_distribution: dict[str, dict[str, int]]  # split -> verdict (or "none") -> count
    leaks: int
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time
    leakage: dict[str, Any] = field(default_factory=dict)  # leakage.leakage_report: closeness at looser thresholds
    rejected_path: str = ""
    rejected_lines: list[str] = field(default_factory=list)  # the first few rejections, one line each
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> role, clean records, train rows


def source_name(path: str | Path) -> str:
    """The `source` recorded on a file's records: its name without directory and data suffixes."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


@dataclass
class _Loaded:
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    records_read: int
    rejected_by_reason: Counter
    ignored_fields: Counter
    roles: dict[str, str]  # source -> "labelled" | "extra", in input order


def _load_sources(data: Sequence[Path], extra: Sequence[Path], config: DataConfig, strict: bool) -> _Loaded:
    """Every file's records, each tagged with its source; an id already used by an earlier file is rejected."""
    out = _Loaded([], [], 0, Counter(), Counter(), {})
    first_source: dict[str, str] = {}
    for path, role in [*((p, "labelled") for p in data), *((p, "extra") for p in extra)]:
        name = source_name(path)
        if name in out.roles:
            raise ValueError(f"{path}: two input files share the source name {name!r}; rename one")
        out.roles[name] = role
        loaded = load_records(path, config, strict=strict)
        out.records_read += loaded.records_read
        out.rejected_by_reason.update(loaded.rejected_by_reason)
        out.ignored_fields.update(loaded.ignored_fields)
        out.rejected += [{**row, "source": name} for row in loaded.rejected]
        for record in loaded.records:
            earlier = first_source.get(record["id"])
            if earlier is not None:
                problem = {
                    "field": "id",
                    "reason": "duplicate_id",
                    "message": f"id {record['id']!r} is already used by a record of source {earlier!r}",
                }
                if strict:
                    raise ValueError(f"{path}: record {record['id']!r}: id: {problem['message']}")
                out.rejected.append(
                    {"index": None, "line": None, "id": record["id"], "problems": [problem], "raw": "", "source": name}
                )
                out.rejected_by_reason["id: duplicate_id"] += 1
                continue
            first_source[record["id"]] = name
            out.records.append({**record, "source": name})
    return out


def _paths(given: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(given)] if isinstance(given, (str, Path)) else [Path(p) for p in given]


def prepare(
    data_path: str | Path | Sequence[str | Path],
    run: RunDir,
    config: DataConfig,
    strict: bool = False,
    extra: Sequence[str | Path] = (),
) -> PrepareSummary:
    """Run phase 0 on the labelled file(s) `data_path` plus the train-only `extra` files, writing the artifacts
    into `run`; see the module docstring."""
    data, extras = _paths(data_path), _paths(extra)
    if not data:
        raise ValueError("prepare needs at least one labelled data file")
    seconds: dict[str, float] = {}
    with _timed(seconds, "load"):
        loaded = _load_sources(data, extras, config, strict)
    with _timed(seconds, "dedup"):
        dedup = remove_near_duplicates([record["text"] for record in loaded.records], config)
        records = [loaded.records[i] for i in dedup.kept]
    with _timed(seconds, "split"):
        split = _split(records, loaded.roles, config)
    with _timed(seconds, "leakage"):
        leaks = check_leakage(records, split, config.dedup_threshold, progress=True)
        closeness = leakage_report(records, split, config.dedup_threshold)
    shown_path = ", ".join(str(p) for p in [*data, *extras])
    stats = _stats(shown_path, loaded, dedup, records, split, leaks, closeness, seconds, config)
    _write_artifacts(run, loaded, dedup, records, split, stats, config)
    return PrepareSummary(
        data_path=shown_path,
        records_read=loaded.records_read,
        rejected=len(loaded.rejected),
        rejected_by_reason=stats["rejected_by_reason"],
        duplicates_removed=len(dedup.removed),
        split_sizes=split.sizes(),
        label_distribution=stats["label_distribution"],
        leaks=leaks,
        leakage=closeness,
        seconds=seconds,
        rejected_path=str(run.rejected_records),
        rejected_lines=[_rejection_line(row) for row in loaded.rejected[:_SHOWN_REJECTIONS]],
        sources=stats["sources"],
    )


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Records the step's wall time in `seconds` when it finishes."""
    started = time.perf_counter()
    yield
    seconds[step] = round(time.perf_counter() - started, 3)


def _split(records: Sequence[dict[str, Any]], roles: dict[str, str], config: DataConfig) -> Split:
    """The labelled records split; the extra records join train only, after the labelled ones, so validation
    and test are the labelled set's."""
    labelled = [record for record in records if roles[record["source"]] == "labelled"]
    split = split_records(labelled, config)
    return Split(
        train=split.train + [r["id"] for r in records if roles[r["source"]] == "extra"],
        val=split.val,
        test=split.test,
        stratified_by=split.stratified_by,
    )


def _stats(
    shown_path: str,
    loaded: _Loaded,
    dedup: DedupResult,
    records: Sequence[dict[str, Any]],
    split: Split,
    leaks: int,
    closeness: dict[str, Any],
    seconds: dict[str, float],
    config: DataConfig,
) -> dict[str, Any]:
    """stats.json: what was read, rejected and removed, the split, its leakage and its label and length tables."""
    by_split = _records_by_split(records, split)
    return {
        "data_path": shown_path,
        "sources": _source_stats(records, split, loaded.roles),
        "records_read": loaded.records_read,
        "rejected": len(loaded.rejected),
        "rejected_by_reason": dict(sorted(loaded.rejected_by_reason.items())),
        "ignored_fields": dict(loaded.ignored_fields),
        "duplicates_removed": len(dedup.removed),
        "dedup_method": dedup_method(len(loaded.records), config),
        "clean_records": len(records),
        "split_sizes": split.sizes(),
        "stratified_by": split.stratified_by,
        "leaks": leaks,
        "leakage": closeness,
        "label_distribution": {name: _label_counts(rows) for name, rows in by_split.items()},
        "text_length": _length_stats(by_split),
        "emotion_argmax": {name: _emotion_argmax(rows) for name, rows in by_split.items()},
        "seconds": seconds,
    }


def _write_artifacts(
    run: RunDir,
    loaded: _Loaded,
    dedup: DedupResult,
    records: Sequence[dict[str, Any]],
    split: Split,
    stats: dict[str, Any],
    config: DataConfig,
) -> None:
    """The data folder: clean and rejected records, the duplicates, the split manifest, the statistics."""
    write_jsonl(run.clean_records, records)
    write_jsonl(run.rejected_records, loaded.rejected)
    write_json(run.duplicates, _duplicates_report(loaded.records, dedup, config.dedup_threshold))
    write_json(
        run.split_manifest,
        {
            "train": split.train,
            "val": split.val,
            "test": split.test,
            "seed": config.seed,
            "threshold": config.dedup_threshold,
            "fractions": list(config.split),
            "length_bins": config.length_bins,
            "stratified_by": split.stratified_by,
        },
    )
    write_json(run.data_stats, stats)


def _source_stats(records: Sequence[dict[str, Any]], split: Split, roles: dict[str, str]) -> dict[str, Any]:
    split_of = {i: name for name in ("train", "val", "test") for i in getattr(split, name)}
    out: dict[str, Any] = {}
    for name, role in roles.items():
        mine = [record for record in records if record["source"] == name]
        out[name] = {
            "role": role,
            "clean_records": len(mine),
            **{part: sum(split_of[r["id"]] == part for r in mine) for part in ("train", "val", "test")},
        }
    return out


def format_summary(summary: PrepareSummary) -> str:
    """The lines the CLI prints after `prepare`."""
    lines = [f"data: {summary.data_path}", f"records read: {summary.records_read}", f"rejected: {summary.rejected}"]
    lines += [f"  {reason}: {count}" for reason, count in summary.rejected_by_reason.items()]
    if summary.rejected:
        lines += [f"    {line}" for line in summary.rejected_lines]
        more = summary.rejected - len(summary.rejected_lines)
        more_text = f"... {more} more; " if more > 0 else ""
        lines.append(f"    {more_text}all with reasons and raw text: {summary.rejected_path}")
    if len(summary.sources) > 1:
        lines += [
            f"  source {name} ({entry['role']}): {entry['clean_records']} clean, train {entry['train']},"
            f" val {entry['val']}, test {entry['test']}"
            for name, entry in summary.sources.items()
        ]
    lines.append(f"near-duplicates removed: {summary.duplicates_removed}")
    lines.append("split: " + ", ".join(f"{name} {size}" for name, size in summary.split_sizes.items()))
    labels = [*VERDICTS, NO_LABEL]
    shown = [label for label in labels if any(counts.get(label) for counts in summary.label_distribution.values())]
    lines.append("labels: " + " ".join(f"{label:>9}" for label in shown))
    for name, counts in summary.label_distribution.items():
        total = max(sum(counts.values()), 1)
        cells = " ".join(f"{counts.get(label, 0):>5} {100 * counts.get(label, 0) / total:>2.0f}%" for label in shown)
        lines.append(f"  {name:>5}: {cells}")
    lines.append(f"leakage (val/test texts at the dedup threshold of a train text, 0 by construction): {summary.leaks}")
    if summary.leakage:
        lines.append(format_leakage(summary.leakage))
    lines.append("time: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in summary.seconds.items()))
    return "\n".join(lines)


_SHOWN_REJECTIONS = 20


def _rejection_line(row: dict[str, Any]) -> str:
    where = f"record {row['index']} (id {row['id']!r}, line {row['line']}, source {row.get('source')})"
    return where + ": " + "; ".join(f"{p['field']}: {p['message']}" for p in row["problems"])


def _records_by_split(records: Sequence[dict[str, Any]], split: Split) -> dict[str, list[dict[str, Any]]]:
    by_id = {record["id"]: record for record in records}
    return {name: [by_id[i] for i in getattr(split, name)] for name in ("train", "val", "test")}


def _label_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(row["label"] or NO_LABEL for row in rows)
    return {label: counts[label] for label in (*VERDICTS, NO_LABEL) if counts[label]}


def _length_stats(by_split: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Text length (characters of `text`) per split, and KS distance of val/test lengths from train's."""
    lengths = {name: np.array([len(row["text"]) for row in rows]) for name, rows in by_split.items()}
    stats: dict[str, Any] = {}
    for name, values in lengths.items():
        if not len(values):
            stats[name] = {"count": 0}
            continue
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        stats[name] = {
            "count": int(len(values)),
            "mean": float(values.mean()),
            "median": float(median),
            "p10": float(p10),
            "p90": float(p90),
        }
    for name in ("val", "test"):
        if len(lengths[name]) and len(lengths["train"]):
            result = ks_2samp(lengths[name], lengths["train"])
            stats[name]["ks_vs_train"] = {"statistic": float(result.statistic), "pvalue": float(result.pvalue)}
    return stats


def _emotion_argmax(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the top emotion; the majority share is the baseline any emotion accuracy is read against."""
    counts = Counter(EMOTIONS[int(np.argmax(row["emotions"]))] for row in rows if row["emotions"] is not None)
    total = sum(counts.values())
    majority = counts.most_common(1)[0] if counts else (None, 0)
    return {
        "counts": {name: counts[name] for name in EMOTIONS},
        "labelled": total,
        "majority": majority[0],
        "majority_share": majority[1] / total if total else None,
    }


def dedup_method(count: int, config: DataConfig) -> str:
    """config.dedup_method with "auto" resolved for a set of `count` records."""
    if config.dedup_method == "auto":
        return "minhash" if count > config.minhash_above else "exact"
    if config.dedup_method not in ("exact", "minhash"):
        raise ValueError(f"unknown data.dedup_method {config.dedup_method!r}; choose 'exact', 'minhash' or 'auto'")
    return config.dedup_method


def remove_near_duplicates(texts: Sequence[str], config: DataConfig) -> DedupResult:
    """The keep-first result by the configured method; both decide every pair by fuzz.ratio."""
    if dedup_method(len(texts), config) == "minhash":
        return minhash_near_duplicates(texts, config.dedup_threshold, progress=True)
    return near_duplicates(texts, config.dedup_threshold, progress=True)


def _duplicates_report(records: Sequence[dict[str, Any]], dedup: DedupResult, threshold: float) -> dict[str, Any]:
    pairs = [
        {"removed_id": records[d.removed]["id"], "kept_id": records[d.kept]["id"], "score": d.score}
        for d in dedup.removed
    ]
    samples = [
        {
            "score": d.score,
            "kept_text": records[d.kept]["text"][:_PREVIEW_CHARS],
            "removed_text": records[d.removed]["text"][:_PREVIEW_CHARS],
        }
        for d in dedup.removed[:_SAMPLE_PAIRS]
    ]
    return {
        "count": len(pairs),
        "threshold": threshold,
        "compared": "text field, rapidfuzz fuzz.ratio, keep first",
        "pairs": pairs,
        "samples": samples,
    }

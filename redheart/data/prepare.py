"""Phase 0 as one function: load + validate, near-duplicate removal, split, leakage check, statistics.

Reads one data file and writes the run's data artifacts (all through redheart.core.atomic):
clean records, rejected records, duplicates, split manifest and the statistics for the paper.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

from redheart.config import DataConfig
from redheart.core.atomic import write_json, write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.dedup import DedupResult, near_duplicates
from redheart.data.minhash_dedup import minhash_near_duplicates
from redheart.data.records import load_records
from redheart.data.schema import EMOTIONS, VERDICTS
from redheart.data.split import NO_LABEL, Split, check_leakage, split_records

_SAMPLE_PAIRS = 10
_PREVIEW_CHARS = 200


@dataclass(frozen=True)
class PrepareSummary:
    data_path: str
    records_read: int
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicates_removed: int
    split_sizes: dict[str, int]
    label_distribution: dict[str, dict[str, int]]  # split -> verdict (or "none") -> count
    leaks: int
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time
    rejected_path: str = ""
    rejected_lines: list[str] = field(default_factory=list)  # the first few rejections, one line each



def prepare(data_path: str | Path, run: RunDir, config: DataConfig, strict: bool = False) -> PrepareSummary:
    """Run phase 0 on `data_path` and write its artifacts into `run`; see the module docstring."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    loaded = load_records(data_path, config, strict=strict)
    seconds["load"] = _lap(clock)

    clock = time.perf_counter()
    dedup = remove_near_duplicates([record["text"] for record in loaded.records], config)
    records = [loaded.records[i] for i in dedup.kept]
    seconds["dedup"] = _lap(clock)

    clock = time.perf_counter()
    split = split_records(records, config)
    seconds["split"] = _lap(clock)
    clock = time.perf_counter()
    leaks = check_leakage(records, split, config.dedup_threshold, progress=True)
    seconds["leakage"] = _lap(clock)

    by_split = _records_by_split(records, split)
    stats: dict[str, Any] = {
        "data_path": str(data_path),
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
        "label_distribution": {name: _label_counts(rows) for name, rows in by_split.items()},
        "text_length": _length_stats(by_split),
        "emotion_argmax": {name: _emotion_argmax(rows) for name, rows in by_split.items()},
        "seconds": seconds,
    }
    write_jsonl(run.clean_records, records)
    write_jsonl(run.rejected_records, loaded.rejected)
    write_json(run.duplicates, _duplicates_report(loaded.records, dedup, config.dedup_threshold))
    write_json(run.split_manifest, {
        "train": split.train, "val": split.val, "test": split.test,
        "seed": config.seed, "threshold": config.dedup_threshold, "fractions": list(config.split),
        "length_bins": config.length_bins, "stratified_by": split.stratified_by,
    })
    write_json(run.data_stats, stats)
    return PrepareSummary(
        data_path=str(data_path),
        records_read=loaded.records_read,
        rejected=len(loaded.rejected),
        rejected_by_reason=stats["rejected_by_reason"],
        duplicates_removed=len(dedup.removed),
        split_sizes=split.sizes(),
        label_distribution=stats["label_distribution"],
        leaks=leaks,
        seconds=seconds,
        rejected_path=str(run.rejected_records),
        rejected_lines=[_rejection_line(row) for row in loaded.rejected[:_SHOWN_REJECTIONS]],
    )


def format_summary(summary: PrepareSummary) -> str:
    """The lines the CLI prints after `prepare`."""
    lines = [f"data: {summary.data_path}", f"records read: {summary.records_read}",
             f"rejected: {summary.rejected}"]
    lines += [f"  {reason}: {count}" for reason, count in summary.rejected_by_reason.items()]
    if summary.rejected:
        lines += [f"    {line}" for line in summary.rejected_lines]
        more = summary.rejected - len(summary.rejected_lines)
        more_text = f"... {more} more; " if more > 0 else ""
        lines.append(f"    {more_text}all with reasons and raw text: {summary.rejected_path}")
    lines.append(f"near-duplicates removed: {summary.duplicates_removed}")
    lines.append("split: " + ", ".join(f"{name} {size}" for name, size in summary.split_sizes.items()))
    labels = [*VERDICTS, NO_LABEL]
    shown = [label for label in labels if any(counts.get(label) for counts in summary.label_distribution.values())]
    lines.append("labels: " + " ".join(f"{label:>9}" for label in shown))
    for name, counts in summary.label_distribution.items():
        total = max(sum(counts.values()), 1)
        cells = " ".join(f"{counts.get(label, 0):>5} {100 * counts.get(label, 0) / total:>2.0f}%" for label in shown)
        lines.append(f"  {name:>5}: {cells}")
    lines.append(f"leakage (val/test near-duplicates of train): {summary.leaks}")
    lines.append("time: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in summary.seconds.items()))
    return "\n".join(lines)


_SHOWN_REJECTIONS = 20


def _rejection_line(row: dict[str, Any]) -> str:
    where = f"record {row['index']} (id {row['id']!r}, line {row['line']})"
    return where + ": " + "; ".join(f"{p['field']}: {p['message']}" for p in row["problems"])


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 3)


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
        stats[name] = {"count": int(len(values)), "mean": float(values.mean()), "median": float(median),
                       "p10": float(p10), "p90": float(p90)}
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
    return {"counts": {name: counts[name] for name in EMOTIONS}, "labelled": total,
            "majority": majority[0], "majority_share": majority[1] / total if total else None}


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
    pairs = [{"removed_id": records[d.removed]["id"], "kept_id": records[d.kept]["id"], "score": d.score}
             for d in dedup.removed]
    samples = [{"score": d.score, "kept_text": records[d.kept]["text"][:_PREVIEW_CHARS],
                "removed_text": records[d.removed]["text"][:_PREVIEW_CHARS]} for d in dedup.removed[:_SAMPLE_PAIRS]]
    return {"count": len(pairs), "threshold": threshold, "compared": "text field, rapidfuzz fuzz.ratio, keep first",
            "pairs": pairs, "samples": samples}

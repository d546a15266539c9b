"""The Data section: records read, rejected and removed, leakage, and the split, from RunDir.data_stats."""

from __future__ import annotations

from typing import Any

from redheart.architecture import VERDICTS
from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return fmt(value)


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    section = Section(title, [ctx.rel(run.data_stats)])
    stats = read_json(run.data_stats)
    section.paragraphs.append(
        f"{fmt(stats['records_read'])} records read, {fmt(stats['rejected'])} rejected, "
        f"{fmt(stats['duplicates_removed'])} near-duplicates removed, {fmt(stats['clean_records'])} clean records. "
        f"Split stratified by {_describe(stats.get('stratified_by'))}."
    )
    closeness = stats.get("leakage")
    if closeness:
        # Counts scored only on proposed pairs are lower bounds (older runs: every count came from LSH proposals).
        bounds = closeness.get("lower_bounds", list(closeness["pairs"]))
        counts = "; ".join(
            f"{name}: {'at least ' if name in bounds else ''}{fmt(count)}" for name, count in closeness["pairs"].items()
        )
        section.paragraphs.append(
            f"Leakage, {closeness['compared']} ({closeness['proposed_by']}), pairs at each threshold: {counts}. "
            f"Texts at fuzz.ratio >= the dedup threshold on the text alone: {fmt(stats['leaks'])}, zero by "
            "construction of the near-duplicate removal, so the looser thresholds are the finding."
        )
    else:
        section.missing.append(
            "leakage at looser thresholds not measured (made by redheart prepare); "
            f"at the dedup threshold: {fmt(stats['leaks'])}"
        )
    labels = [v for v in (*VERDICTS, "none") if any(v in counts for counts in stats["label_distribution"].values())]
    rows = []
    for split, size in stats["split_sizes"].items():
        counts, length, emotion = (
            stats["label_distribution"].get(split, {}),
            stats["text_length"].get(split, {}),
            stats["emotion_argmax"].get(split, {}),
        )
        rows.append(
            [
                split,
                fmt(size),
                *(fmt(counts.get(v, 0)) for v in labels),
                fmt(length.get("mean"), 1),
                fmt(length.get("median"), 1),
                f"{emotion.get('majority') or '—'} {fmt(emotion.get('majority_share'), 3)}",
            ]
        )
    section.tables.append(
        Table(
            "Records per split: verdict counts, text length (characters) and the most frequent "
            "first-maximum emotion's share "
            "(targets can tie for the top emotion and accuracy counts any tied class, so the class-prior "
            "accuracy in the results table is higher than this share)",
            ["split", "records", *labels, "mean length", "median length", "majority emotion"],
            rows,
            "data_statistics",
        )
    )
    sources = stats.get("sources", {})
    if len(sources) > 1:
        extra = [name for name, entry in sources.items() if entry["role"] == "extra"]
        section.paragraphs.append(
            "Validation and test are drawn from the fully labelled source(s) only"
            + (
                f"; {', '.join(extra)} joined the training split alone, so every validation and test number here is "
                "comparable with a run without it."
                if extra
                else "."
            )
        )
        section.tables.append(
            Table(
                "Records per source (targets a source lacks stay masked, never filled in)",
                ["source", "role", "clean records", "train", "val", "test"],
                [
                    [name, e["role"], *(fmt(e[k]) for k in ("clean_records", "train", "val", "test"))]
                    for name, e in sources.items()
                ],
                "data_sources",
            )
        )
    return section

"""The training section: per-epoch losses and validation headline, and the sweet spot of every group."""

from __future__ import annotations

import errno

from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt, fmt_lr
from redheart.report.training_plot import plot_training
from redheart.scoring.metrics import HEADLINE
from redheart.train.telemetry.records import read_metrics


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    records = read_metrics(run.metrics_log)
    if not records:
        # With the file named, the report says "metrics.jsonl not found (made by redheart train)".
        raise FileNotFoundError(errno.ENOENT, "not found or empty", str(run.metrics_log))
    section = Section(title, [ctx.rel(run.metrics_log)])
    rows = []
    for r in records:
        head = r["val"].get("headline", {})
        rows.append(
            [
                fmt(r["epoch"]),
                fmt_lr(r["lr"]),
                fmt(r["train_loss"].get("total")),
                fmt(sum(r["val"]["loss"].values())),
                *(fmt(head.get(k)) for k in (m.key for m in HEADLINE)),
            ]
        )
    section.tables.append(
        Table(
            "Per epoch: training objective, summed validation loss and the fused validation headline",
            ["epoch", "lr", "train objective", "val loss", *(m.label for m in HEADLINE)],
            rows,
        )
    )
    analysis_json = run.analysis_results
    if analysis_json.exists():
        section.sources.append(ctx.rel(analysis_json))
        analysis = read_json(analysis_json)
        spots = [[g, fmt(s["sweet_spot"]), fmt(s["onset"]), s["reason"]] for g, s in analysis["groups"].items()]
        section.tables.append(
            Table(
                f"Sweet spot per module group (smoothing {analysis['smoothing']}, window "
                f"{analysis['window']}; onset: {analysis['onset_run']} widenings in a row)",
                ["group", "sweet spot", "onset", "reason"],
                spots,
                "sweet_spots",
            )
        )
        ctx.image(
            section,
            run.analysis_curves,
            run.report_analysis_curves,
            "train/validation loss per group, sweet spot (star) and over-fitting onset (dashed)",
        )
    else:
        section.missing.append(f"{ctx.rel(analysis_json)} not found: no sweet-spot analysis yet")
        plot = run.report_training_curves
        plot_training(records, plot)
        section.images.append(
            (
                ctx.report_rel(plot),
                f"losses and validation headline per epoch, drawn from {ctx.rel(run.metrics_log)}",
            )
        )
    return section

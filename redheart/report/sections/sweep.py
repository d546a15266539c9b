"""The learning-rate sweep's section: every rate's score and components, and the chosen one."""

from __future__ import annotations

from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt, fmt_lr


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    results = read_json(run.sweep_results)
    section = Section(title, [ctx.rel(run.sweep_results)])
    section.paragraphs.append(f"Chosen rate {fmt_lr(results['choice']['lr'])}: {results['choice']['reason']}")
    rows = [
        [
            fmt_lr(c["lr"]),
            fmt(c["trials"]),
            fmt(c["diverged"]),
            *(fmt(c["components"].get(k)) for k in ("val_loss", "instability", "inefficiency", "overfit_gap")),
            fmt(c["total"], 3),
        ]
        for c in results["candidates"]
    ]
    weights = ", ".join(f"{k} {fmt(v, 2)}" for k, v in results["weights"].items())
    section.tables.append(
        Table(
            f"Sweep candidates (weights: {weights}; lower score is better)",
            ["lr", "trials", "diverged", "val loss", "instability", "inefficiency", "overfit gap", "score"],
            rows,
        )
    )
    ctx.image(
        section, run.sweep_curves, run.report_sweep_curves, "training and validation loss per epoch of every trial"
    )
    return section

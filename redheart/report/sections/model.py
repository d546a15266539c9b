"""The Model section: the parameter table against the budgets, from the run's config (or its final model's)."""

from __future__ import annotations

from redheart.config import ModelConfig, load_config
from redheart.core.atomic import read_json, write_json
from redheart.model.model import parameter_table
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    if run.config.exists():
        config = load_config(run.config)
        model, dim, segments, source = config.model, config.encoder.dim, config.encoder.max_segments, run.config
    else:
        info = read_json(run.model_files.config)
        model, dim, segments, source = (
            ModelConfig(**info["model"]),
            info["input_dim"],
            info["max_segments"],
            run.model_files.config,
        )
    rows = parameter_table(model, dim, segments)
    write_json(
        run.report_parameters,
        {
            "source": ctx.rel(source),
            "input_dim": dim,
            "max_segments": segments,
            "modules": rows,
            "total": sum(r["parameters"] for r in rows),
            "budget": sum(r["budget"] for r in rows),
        },
    )
    section = Section(title, [ctx.rel(source), ctx.rel(run.report_parameters)])
    section.paragraphs.append(
        f"Parameters counted on the meta device from the model config in {ctx.rel(source)} (no weights allocated)."
    )
    body = [
        [r["module"], r["group"], fmt(r["width"]), fmt(r["parameters"]), fmt(r["budget"]), fmt(r["ratio"], 3)]
        for r in rows
    ]
    total, budget = sum(r["parameters"] for r in rows), sum(r["budget"] for r in rows)
    body.append(["total", "", "", fmt(total), fmt(budget), fmt(total / budget, 3)])
    section.tables.append(
        Table(
            "Parameters per module against its budget",
            ["module", "group", "width", "parameters", "budget", "ratio"],
            body,
            "architecture",
        )
    )
    return section

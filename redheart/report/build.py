"""`redheart report --run`: the run's results as one self-contained folder, RunDir.report/.

    index.html, report.md   every section: its tables, its plots (copied into img/) and its source files
    tables/*.tex            LaTeX tables (data statistics, architecture, sweet spots, training results, calibration)
    parameters.json         the parameter table, computed from the run's config on the meta device

Every number is read from a file of the run (each section names its sources) and formatted by
redheart.report.numbers; a section whose inputs are missing says so instead of failing, so a partial run still
gets a report. The sections live in redheart.report.sections, one file each; this is the recipe that collects
them and writes the pages, the tables and the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from redheart.core.atomic import atomic_open
from redheart.core.rundir import RunDir
from redheart.report.context import Context
from redheart.report.document import Section
from redheart.report.html import render_html, render_markdown
from redheart.report.latex import write_latex_tables
from redheart.report.sections.registry import SECTIONS


def collect_sections(run: RunDir) -> list[Section]:
    """Every section; one whose inputs are missing or unreadable carries the reason instead of its content."""
    ctx = Context(run)
    sections = []
    for spec in SECTIONS:
        if spec.shown is not None and not spec.shown(run):
            continue
        try:
            sections.append(spec.build(ctx, spec.title))
        except FileNotFoundError as error:
            missing = Path(error.filename) if error.filename else None
            name = missing.relative_to(run.root) if missing else error
            made_by = spec.maker(run, missing)
            sections.append(Section(spec.title, [], missing=[f"not available: {name} not found (made by {made_by})"]))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            sections.append(
                Section(
                    spec.title,
                    [],
                    missing=[f"not available: its input could not be read ({type(error).__name__}: {error})"],
                )
            )
    return sections


def build_report(run: RunDir) -> Path:
    """Write index.html, report.md and tables/*.tex into RunDir.report; return the HTML page's path."""
    sections = collect_sections(run)
    title = f"Red Heart run report: {run.root.resolve().name}"
    with atomic_open(run.report_page) as handle:
        handle.write(render_html(title, sections))
    with atomic_open(run.report_markdown) as handle:
        handle.write(render_markdown(title, sections))
    write_latex_tables(sections, run)
    if run.model_files.config.exists():
        from redheart.evaluate.model_card import write_model_card

        write_model_card(run)
    return run.report_page

"""LaTeX tables (booktabs) of the report's tables that name a `latex_name`, one .tex file each.

The cells are the report's own cells, so the LaTeX and the HTML show the same numbers from the same files.
Each table drops into a paper unchanged: it needs booktabs and graphicx, prints the same under the OT1 and
T1 font encodings (arrows and comparisons are set in math, never as "<" or ">" text), wraps prose and long
names in paragraph columns, stacks a value above its interval, and is scaled down only when it would still
be wider than the line. Tables of more than five columns are `table*`, so in a two-column layout they span
both columns (in one column `table*` is `table`).
"""

from __future__ import annotations

import re
from pathlib import Path

from redheart.core.atomic import atomic_open
from redheart.core.rundir import RunDir
from redheart.report.document import Section, Table

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "--",
    "→": r"$\to$",
    "<": r"$<$",
    ">": r"$>$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "±": r"$\pm$",
    "×": r"$\times$",
}
# Two-character sequences first: OT1 has no "<" or ">" glyph (they print as inverted marks).
_SEQUENCES = {"->": r"$\to$", "<-": r"$\leftarrow$", ">=": r"$\geq$", "<=": r"$\leq$"}
_INTERVAL = re.compile(r"^(\S+) (\[[^\]]+\])$")
PROSE_CHARS = 60  # a column with a longer cell is set as a paragraph column
NAME_CHARS = 24  # a first column with a longer name wraps
WIDE_COLUMNS = 5


def escape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _SEQUENCES:
            out.append(_SEQUENCES[pair])
            i += 2
            continue
        out.append(_ESCAPES.get(text[i], text[i]))
        i += 1
    return "".join(out)


def cell(text: str) -> str:
    """One escaped cell; "value [low, high]" is stacked, the interval below in a smaller size."""
    match = _INTERVAL.match(text)
    if match:
        value, interval = match.groups()
        stacked = rf"{escape(value)}\\ {{\scriptsize {escape(interval)}}}"
        return rf"\begin{{tabular}}[t]{{@{{}}r@{{}}}}{stacked}\end{{tabular}}"
    return escape(text)


def column_spec(table: Table) -> str:
    """l for the first column, r for numbers, a ragged paragraph column for prose and long names."""
    spec = []
    for i in range(len(table.columns)):
        longest = max((len(row[i]) for row in table.rows), default=0)
        if longest > PROSE_CHARS:
            # Wide enough that a column of reasons stays shorter than a page.
            spec.append(r">{\raggedright\arraybackslash}p{0.55\linewidth}")
        elif i == 0 and longest > NAME_CHARS:
            spec.append(r">{\raggedright\arraybackslash}p{0.22\linewidth}")
        else:
            spec.append("l" if i == 0 else "r")
    return "".join(spec)


def render_table(table: Table, sources: list[str]) -> str:
    """A table environment with a tabular of the cells, no wider than the line; the caption names the sources."""
    environment = "table*" if len(table.columns) > WIDE_COLUMNS else "table"
    source = ", ".join(rf"\texttt{{{escape(s)}}}" for s in sources)
    lines = [
        rf"\begin{{{environment}}}[ht]",
        r"\centering",
        r"\small",
        rf"\caption{{{escape(table.caption)}. Source: {source}.}}",
        rf"\label{{tab:{table.latex_name}}}",
        # Scaled down only when wider than the line; a narrower table keeps its size.
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{column_spec(table)}}}",
        r"\toprule",
        " & ".join(escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\end{{{environment}}}"]
    return "\n".join(lines) + "\n"


def write_latex_tables(sections: list[Section], run: RunDir) -> list[Path]:
    """A .tex file for every table that names a `latex_name` (needs booktabs, graphicx, array); returns the paths
    written."""
    written = []
    for section in sections:
        for table in section.tables:
            if table.latex_name:
                path = run.report_table(table.latex_name)
                with atomic_open(path) as handle:
                    handle.write(render_table(table, section.sources))
                written.append(path)
    return written

"""LaTeX tables (booktabs) of the report's tables that name a `latex_name`, one .tex file each.

The cells are the report's own cells, so the LaTeX and the HTML show the same numbers from the same files.
"""

from __future__ import annotations

from pathlib import Path

from redheart.core.atomic import atomic_open
from redheart.report.document import Section, Table

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "→": r"$\to$"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def render_table(table: Table, sources: list[str]) -> str:
    """A table environment with a tabular of the cells; the caption names the source files."""
    spec = "l" * 1 + "r" * (len(table.columns) - 1)
    # Prose columns (reasons) wrap in a paragraph column instead of running off the page.
    wide = [i for i in range(len(table.columns)) if any(len(row[i]) > 60 for row in table.rows)]
    spec = "".join("p{7cm}" if i in wide else c for i, c in enumerate(spec))
    source = ", ".join(rf"\texttt{{{escape(s)}}}" for s in sources)
    lines = [
        r"\begin{table}[ht]", r"\centering", r"\small",
        rf"\caption{{{escape(table.caption)}. Source: {source}.}}", rf"\label{{tab:{table.latex_name}}}",
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
        " & ".join(escape(c) for c in table.columns) + r" \\", r"\midrule",
    ]
    lines += [" & ".join(escape(v) for v in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_latex_tables(sections: list[Section], folder: Path) -> list[Path]:
    """tables/<latex_name>.tex for every named table (needs \\usepackage{booktabs}); returns the paths written."""
    written = []
    for section in sections:
        for table in section.tables:
            if table.latex_name:
                path = Path(folder) / f"{table.latex_name}.tex"
                with atomic_open(path) as handle:
                    handle.write(render_table(table, section.sources))
                written.append(path)
    return written

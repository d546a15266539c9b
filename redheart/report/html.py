"""The report's sections as one HTML page and as Markdown; images referenced relatively (img/...)."""

from __future__ import annotations

import re
from html import escape

from redheart.report.document import Section

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #b22; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td:first-child, th:first-child, td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
figure { margin: 1em 0; } figure img { max-width: min(100%, 1100px); border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.source { font-size: 12px; color: #666; } .missing { color: #a40; background: #fff4e5; padding: 4px 8px; }
nav a { margin-right: 1em; }
"""


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


_NUMBER = re.compile(r"^[-+0-9.,e%\[\] —]*$")


def _cell(value: str) -> str:
    # Numbers align right, words (names, reasons) left.
    return f"<td>{escape(value)}</td>" if _NUMBER.match(value) else f'<td class="text">{escape(value)}</td>'


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{_anchor(s.title)}">{escape(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{_anchor(section.title)}"><h2>{escape(section.title)}</h2>')
        sources = ", ".join(f"<code>{escape(s)}</code>" for s in section.sources) or "none"
        parts.append(f'<p class="source">Source: {sources}</p>')
        parts += [f'<p class="missing">{escape(m)}</p>' for m in section.missing]
        parts += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
            body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
            parts.append(
                f"<table><caption>{escape(table.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            )
        for path, caption in section.images:
            parts.append(
                f'<figure><img src="{escape(path)}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", "", f"*Source: {', '.join(f'`{s}`' for s in section.sources) or 'none'}*", ""]
        lines += [f"> {m}\n" for m in section.missing]
        lines += [f"{p}\n" for p in section.paragraphs]
        for table in section.tables:
            lines += [
                f"**{_md(table.caption)}**",
                "",
                "| " + " | ".join(map(_md, table.columns)) + " |",
                "|" + "---|" * len(table.columns),
            ]
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in table.rows]
            lines.append("")
        lines += [f"![{_md(caption)}]({path})\n" for path, caption in section.images]
    return "\n".join(lines) + "\n"

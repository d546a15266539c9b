"""The report as data: sections of paragraphs, tables and images, which the HTML, Markdown and LaTeX writers render."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]]
    latex_name: str | None = None  # also written as tables/<latex_name>.tex


@dataclass
class Section:
    title: str
    sources: list[str]  # files of the run, relative to its root
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the report folder, caption)
    missing: list[str] = field(default_factory=list)  # what could not be shown, and why

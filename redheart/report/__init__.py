"""The report: every result of a run as HTML, Markdown and LaTeX tables, read from the run's files."""

"""The study's curve_<metric>.png: one metric against training records (log x), a line per model size and the probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from redheart.core.atomic import write_with
from redheart.study.points import EXTRA, METRICS, VERDICT_METRICS, data_size


def plot_metric(path: Path, points: list[dict[str, Any]], sizes: list[str], metric: str, label: str) -> None:
    """Model sizes as solid lines, the linear probe dashed, the training mean dotted; an "all+extra" point as a
    hollow marker of its size."""

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    grid = sorted((p for p in points if p["label"] != EXTRA), key=lambda p: p["train_records"])
    for i, size in enumerate(sizes):
        row = [p for p in grid if p["size"] == size and p["model"][metric] is not None]
        if row:
            count = row[0]["parameters"]
            params = f"{count / 1e6:.2g}M" if count >= 1e5 else f"{count:,}"
            ax.plot(
                [data_size(p, metric) for p in row],
                [p["model"][metric] for p in row],
                marker="o",
                color=f"C{i}",
                label=f"{size} ({params} parameters)",
            )
        # Only a verdict curve has a place for it: the verdict-only records add nothing to the other targets' data.
        extra = [
            p
            for p in points
            if p["size"] == size
            and p["label"] == EXTRA
            and p["model"][metric] is not None
            and metric in VERDICT_METRICS
        ]
        for p in extra:
            ax.plot(
                [data_size(p, metric)],
                [p["model"][metric]],
                marker="D",
                markerfacecolor="none",
                color=f"C{i}",
                linestyle="none",
                label=f"{size}, all + verdict-only records",
            )
    probe = {p["label"]: p for p in grid if p["probe"][metric] is not None}
    if probe:
        rows = sorted(probe.values(), key=lambda p: p["train_records"])
        ax.plot(
            [data_size(p, metric) for p in rows],
            [p["probe"][metric] for p in rows],
            color="black",
            linestyle="--",
            marker="s",
            label="linear probe",
        )
        prior = [p for p in rows if p["prior"][metric] is not None]
        ax.plot(
            [data_size(p, metric) for p in prior],
            [p["prior"][metric] for p in prior],
            color="grey",
            linestyle=":",
            label="training mean (class prior / mean predictor)",
        )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    better = "higher is better" if METRICS[metric][1] > 0 else "lower is better"
    ax.set_xlabel("training records with this target (log scale)")
    ax.set_ylabel(f"{label} (validation)")
    ax.set_title(f"{label} against training data ({better})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))

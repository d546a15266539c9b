"""Reliability diagrams: top-label accuracy against confidence per bin, before and after calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from redheart.core.atomic import write_with


def plot_reliability(
    path: Path, before: list[dict[str, Any]], after: list[dict[str, Any]], title: str, method: str
) -> None:
    """Two panels (uncalibrated, calibrated by `method`): bars of accuracy per confidence bin, the diagonal,
    and each bin's row count above it. `before`/`after` are the "bins" of calibration_metrics."""
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, bins, label in zip(
        axes,
        (before, after),
        ("uncalibrated", f"calibrated: {method}" if method != "none" else "default: none (left uncalibrated)"),
    ):
        width = bins[0]["upper"] - bins[0]["lower"]
        filled = [b for b in bins if b["count"]]
        ax.bar(
            [b["lower"] for b in filled],
            [b["accuracy"] for b in filled],
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            alpha=0.75,
            label="accuracy",
        )
        ax.bar(
            [b["lower"] for b in filled],
            [b["confidence"] - b["accuracy"] for b in filled],
            bottom=[b["accuracy"] for b in filled],
            width=width,
            align="edge",
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            label="gap to confidence",
        )
        for b in filled:
            ax.annotate(
                str(b["count"]),
                (b["lower"] + width / 2, min(max(b["accuracy"], b["confidence"]) + 0.02, 1.02)),
                ha="center",
                fontsize=6,
                color="dimgray",
            )
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.06)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize="small", loc="upper left")
    figure.suptitle(f"Reliability: {title} (numbers: rows per bin)")
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))

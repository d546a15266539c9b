"""training_curves.png from metrics.jsonl alone: losses and the fused validation headline per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from redheart.core.atomic import write_with
from redheart.scoring.metrics import SUMMARY


def plot_training(records: list[dict[str, Any]], path: Path) -> None:
    """Left: training objective and summed validation loss; right: the validation summary metrics
    (scoring.metrics.SUMMARY)."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2)
    epochs = [r["epoch"] for r in records]
    losses.plot(epochs, [r["train_loss"].get("total") for r in records], marker=".", label="training objective")
    losses.plot(
        epochs,
        [sum(r["val"]["loss"].values()) for r in records],
        marker=".",
        label="validation loss (sum over modules)",
    )
    losses.set_title("losses")
    for metric in SUMMARY:
        headlines = [r["val"].get("headline", {}).get(metric.key) for r in records]
        scores.plot(epochs, headlines, marker=".", label=metric.words)
    scores.set_title("validation headline (fused)")
    for ax in (losses, scores):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))

"""The sweep's curves.png: training and validation loss per epoch, one colour per rate, the chosen rate bold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from redheart.core.atomic import write_with
from redheart.train.sweep.score import format_lr


def plot_curves(path: Path, trials: Sequence[tuple[float, list[dict[str, Any]]]], chosen_lr: float) -> None:
    """`trials`: (rate, per-epoch rows with "epoch", "train_loss", "val_loss"); each seed is its own line."""
    # A Figure on its own Agg canvas: no pyplot, so no global figure state and no display needed.
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharex=True)
    rates = sorted({lr for lr, _ in trials})
    colours = {lr: f"C{i % 10}" for i, lr in enumerate(rates)}
    labelled: set[tuple[int, float]] = set()
    for lr, rows in trials:
        epochs = [row["epoch"] for row in rows]
        chosen = lr == chosen_lr
        for i, (ax, key) in enumerate(zip(axes, ("train_loss", "val_loss"))):
            label = None if (i, lr) in labelled else format_lr(lr) + (" (chosen)" if chosen else "")
            labelled.add((i, lr))
            ax.plot(
                epochs,
                [row[key] for row in rows],
                color=colours[lr],
                label=label,
                marker="o" if chosen else ".",
                linewidth=3 if chosen else 1.2,
                alpha=1.0 if chosen else 0.7,
                zorder=3 if chosen else 2,
            )
    for ax, title in zip(axes, ("training loss (task losses, dropout on)", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss (sum over modules)")
        ax.grid(alpha=0.3)
        ax.legend(title="learning rate", fontsize="small")
    figure.suptitle(f"Learning-rate sweep: {format_lr(chosen_lr)} chosen (one line per seed)")
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))

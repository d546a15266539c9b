"""curves.png of the sweet-spot analysis: train and validation loss per group, sweet spots and onsets marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from redheart.core.atomic import write_with  # noqa: E402


def plot_curves(analysis: Any, path: Path) -> None:  # sweet_spots.Analysis, whose module imports this one
    """One panel per group: train and validation loss per epoch, smoothed validation at the checkpoints,
    a star on the sweet spot and a dashed line at the over-fitting onset."""
    groups = list(analysis.groups.values())
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, spot in zip(axes.flat, groups):
        curve = analysis.curves[spot.group]
        ax.plot(curve["epoch"], curve["train"], label="train", color="tab:blue", alpha=0.7)
        ax.plot(curve["epoch"], curve["val"], label="validation", color="tab:orange", alpha=0.7)
        ax.plot(spot.epochs, spot.val_smooth, label="validation, smoothed", color="tab:red", linestyle=":")
        best = spot.epochs.index(spot.sweet_spot)
        ax.plot([spot.sweet_spot], [spot.val[best]], marker="*", markersize=12, color="black", label="sweet spot")
        if spot.onset is not None:
            ax.axvline(spot.onset, color="gray", linestyle="--", label="over-fitting onset")
        ax.set_title(spot.group)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    try:
        write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(figure)

"""The study's curve_<metric>.png: one metric against training records (log x), a line per model size and the probe,
and the fitted curve L(N, D) per size (thin, dashed; dotted beyond the studied data) with the full model's
prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from redheart.core.atomic import write_with
from redheart.scoring.metrics import METRICS
from redheart.study.points import EXTRA, VERDICT_METRICS, data_size


def plot_metric(
    path: Path,
    points: list[dict[str, Any]],
    sizes: list[str],
    metric: str,
    curve: dict[str, Any] | None = None,
) -> None:
    """Model sizes as solid lines, the linear probe dashed, the training mean dotted; an "all+extra" point as a
    hollow marker of its size; `curve` (curve_analysis's entry) adds the fitted curves."""
    label = METRICS[metric].words

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
    if curve is not None:
        _fitted(ax, curve, grid, sizes, metric)
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
    better = "higher is better" if METRICS[metric].higher_is_better else "lower is better"
    ax.set_xlabel("training records with this target (log scale)")
    ax.set_ylabel(f"{label} (validation)")
    ax.set_title(f"{label} against training data ({better})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def _fitted(ax: Any, curve: dict[str, Any], grid: list[dict[str, Any]], sizes: list[str], metric: str) -> None:
    """The fitted law per studied size over its data range and up to 4x, and at the full model's size."""
    from redheart.study.fit import law

    table = curve["fit"]
    if not table.get("identifiable"):
        return
    theta, n0, d0 = np.asarray(table["theta"]), table["n0"], table["d0"]
    flip = METRICS[metric].higher_is_better  # fitted as 1 - metric

    def value(n: float, d: np.ndarray) -> np.ndarray:
        fitted = law(theta, np.float64(n), d, n0, d0)
        return 1.0 - fitted if flip else fitted

    xs = [data_size(p, metric) for p in grid if p["model"][metric] is not None]
    if not xs:
        return
    inside = np.geomspace(min(xs), max(xs), 40)
    beyond = np.geomspace(max(xs), 4 * max(xs), 20)
    for i, size in enumerate(sizes):
        row = [p for p in grid if p["size"] == size]
        if not row:
            continue
        n = float(row[0]["parameters"])
        ax.plot(inside, value(n, inside), color=f"C{i}", linestyle="--", linewidth=1)
        ax.plot(beyond, value(n, beyond), color=f"C{i}", linestyle=":", linewidth=1)
    pred = curve["prediction"]
    if pred.get("reason") is None:
        both = np.concatenate([inside, beyond])
        ax.plot(
            both,
            value(float(pred["full_parameters"]), both),
            color="purple",
            linestyle="-.",
            linewidth=1,
            label="full, predicted by the fitted curve",
        )
        for entry in pred["at"].values():
            lo, hi = entry["interval"]
            low, high = (1.0 - hi, 1.0 - lo) if flip else (lo, hi)
            ax.errorbar(
                [entry["records"]],
                [1.0 - entry["value"] if flip else entry["value"]],
                yerr=[
                    [max(0.0, (1.0 - entry["value"] if flip else entry["value"]) - low)],
                    [max(0.0, high - (1.0 - entry["value"] if flip else entry["value"]))],
                ],
                color="purple",
                marker="*",
                capsize=3,
                linestyle="none",
            )
    ax.plot(
        [], [], color="grey", linestyle="--", linewidth=1, label="fitted E + A/N^a + B/D^b (dotted: beyond the data)"
    )

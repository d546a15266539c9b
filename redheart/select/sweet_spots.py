"""Phase 3: each module group's sweet spot, its best validation checkpoint before it starts to over-fit.

A group's loss is the sum of its modules' losses (train and validation, both from metrics.jsonl with the
same label smoothing, so their gap is meaningful). The curves are smoothed over checkpoints first, so one
noisy epoch does not decide. The over-fitting onset is the first checkpoint of the first run of
`onset_run` checkpoints in a row where the (smoothed) train-val gap, validation above training, widened;
the sweet spot is the checkpoint with the lowest smoothed validation loss before the onset (any checkpoint
when there is none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redheart.config import RunConfig, SelectConfig
from redheart.core.atomic import atomic_open, write_json
from redheart.core.rundir import RunDir
from redheart.model.groups import GROUPS
from redheart.scoring.metrics import headline
from redheart.select.curves_plot import plot_curves
from redheart.select.pins import pin_checkpoints, saved_epochs
from redheart.train.telemetry.records import read_metrics

SMOOTHINGS = ("ema", "moving_average", "none")


@dataclass(frozen=True)
class GroupSpot:
    group: str
    modules: list[str]  # the modules whose losses make the group's loss
    epochs: list[int]  # saved checkpoints
    train: list[float]
    val: list[float]
    train_smooth: list[float]
    val_smooth: list[float]
    gap: list[float]  # val_smooth - train_smooth
    onset: int | None  # epoch of the over-fitting onset
    sweet_spot: int  # epoch
    reason: str


@dataclass(frozen=True)
class Analysis:
    smoothing: str
    window: int
    onset_run: int
    groups: dict[str, GroupSpot]
    curves: dict[str, dict[str, list[float]]]  # per group, every logged epoch: {"epoch", "train", "val"}
    val_metrics: dict[int, dict[str, dict]]  # per checkpoint, per module: its validation headline

    @property
    def sweet_spots(self) -> dict[str, int]:
        return {group: spot.sweet_spot for group, spot in self.groups.items()}

    def to_json(self) -> dict[str, Any]:
        tree = dataclasses.asdict(self)
        tree["sweet_spots"] = self.sweet_spots
        tree["val_metrics"] = {str(epoch): value for epoch, value in self.val_metrics.items()}
        return tree


def smooth(values: list[float], method: str, window: int) -> list[float]:
    """Centred moving average over `window` points (truncated at the ends; it does not lag like a trailing
    one, which would move the choice after a dip), EMA (alpha = 2 / (window + 1)), or the values unchanged."""
    if method not in SMOOTHINGS:
        raise ValueError(f"select.smoothing is {method!r}; choose one of {SMOOTHINGS}")
    if window < 1:
        raise ValueError(f"select.smoothing_window must be at least 1, got {window}")
    if method == "none":
        return list(values)
    if method == "moving_average":
        half = window // 2
        spans = [values[max(0, i - half) : i + window - half] for i in range(len(values))]
        return [sum(span) / len(span) for span in spans]
    alpha, out = 2.0 / (window + 1), cast(list[float], [])
    for value in values:
        out.append(value if not out else alpha * value + (1 - alpha) * out[-1])
    return out


def onset_index(gaps: list[float], run: int) -> int | None:
    """Index of the first checkpoint of the first `run` consecutive widenings, or None.

    A widening is gap[i] > gap[i-1] with gap[i] > 0: while validation loss is still below the training loss
    (dropout and R-Drop act only in training) a rising val - train is the gap closing, not over-fitting.
    """
    if run < 1:
        raise ValueError(f"select.onset_run must be at least 1, got {run}")
    streak = 0
    for i in range(1, len(gaps)):
        streak = streak + 1 if gaps[i] > max(gaps[i - 1], 0.0) else 0
        if streak == run:
            return i - run + 1
    return None


def sweet_spot_index(val_smooth: list[float], onset: int | None) -> int:
    """The lowest smoothed validation loss among the checkpoints before the onset (all when there is none)."""
    if not val_smooth:
        raise ValueError("no checkpoint to choose a sweet spot from")
    allowed = val_smooth if onset is None else val_smooth[:onset]
    return min(range(len(allowed)), key=lambda i: (allowed[i], i))


def group_loss(losses: dict[str, float], modules: Sequence[str]) -> float | None:
    """Sum of the modules' losses; None when none of them has one (the backbone alone has no loss)."""
    present = [losses[m] for m in modules if m in losses]
    return sum(present) if present else None


def find_spot(
    group: str, modules: list[str], epochs: list[int], train: list[float], val: list[float], options: SelectConfig
) -> GroupSpot:
    train_s = smooth(train, options.smoothing, options.smoothing_window)
    val_s = smooth(val, options.smoothing, options.smoothing_window)
    gap = [v - t for v, t in zip(val_s, train_s)]
    onset = onset_index(gap, options.onset_run)
    best = sweet_spot_index(val_s, onset)
    how = (
        "raw"
        if options.smoothing == "none"
        else f"{options.smoothing.replace('_', ' ')}-smoothed, window {options.smoothing_window}"
    )
    reason = f"validation loss ({how}) is lowest at epoch {epochs[best]} ({val_s[best]:.4f}, raw {val[best]:.4f})"
    if onset is None:
        reason += (
            f"; the train-val gap never widened {options.onset_run} checkpoints in a row, "
            "so every checkpoint was eligible"
        )
    else:
        reason += (
            f" among the checkpoints before the over-fitting onset at epoch {epochs[onset]}, where the train-val gap"
            f" began widening for {options.onset_run} checkpoints in a row "
            f"({gap[onset - 1]:+.4f} -> {gap[onset + options.onset_run - 1]:+.4f})"
        )
    return GroupSpot(
        group,
        modules,
        epochs,
        train,
        val,
        train_s,
        val_s,
        gap,
        None if onset is None else epochs[onset],
        epochs[best],
        reason,
    )


def analyze(run: RunDir, config: RunConfig) -> Analysis:
    """Sweet spot of every group from metrics.jsonl and the saved checkpoints; writes analysis.json/.md,
    curves.png and the pins."""
    options = config.select
    history = {record["epoch"]: record for record in read_metrics(run.metrics_log)}
    epochs = [epoch for epoch in saved_epochs(run) if epoch in history]
    if not epochs:
        raise FileNotFoundError(f"{run.checkpoints}: no complete checkpoint with a metrics.jsonl record; train first")
    groups, curves = {}, {}
    for group, members in GROUPS.items():
        train = [group_loss(history[e]["train_loss"], members) for e in epochs]
        if train[0] is None:
            continue
        val = [group_loss(history[e]["val"]["loss"], members) for e in epochs]
        modules = [m for m in members if m in history[epochs[0]]["val"]["loss"]]
        # A group with a training loss at its first epoch has one at every epoch, on both splits.
        groups[group] = find_spot(group, modules, epochs, cast(list[float], train), cast(list[float], val), options)
        logged = sorted(history)
        curves[group] = {
            "epoch": logged,
            "train": [group_loss(history[e]["train_loss"], members) for e in logged],
            "val": [group_loss(history[e]["val"]["loss"], members) for e in logged],
        }
    val_metrics = {e: {m: headline(v) for m, v in history[e]["val"].get("modules", {}).items()} for e in epochs}
    analysis = Analysis(options.smoothing, options.smoothing_window, options.onset_run, groups, curves, val_metrics)
    write_analysis(run, analysis)
    pin_checkpoints(run, "analysis", needed_epochs(analysis.sweet_spots, epochs, options.shifts))
    return analysis


def shifted_epoch(epoch: int, shift: int, saved: list[int]) -> int:
    """The saved checkpoint nearest to epoch + shift, clamped to the first and last checkpoint."""
    target = min(max(epoch + shift, saved[0]), saved[-1])
    return min(saved, key=lambda e: (abs(e - target), abs(e - epoch)))


def needed_epochs(spots: dict[str, int], saved: list[int], shifts: tuple[int, ...]) -> dict[str, int]:
    """{reason: epoch} for every sweet spot and every shifted variant of it."""
    reasons = {}
    for group, epoch in spots.items():
        for shift in shifts:
            label = f"{group} sweet spot" if shift == 0 else f"{group} sweet spot shifted {shift:+d}"
            reasons[label] = shifted_epoch(epoch, shift, saved)
    return reasons


def write_analysis(run: RunDir, analysis: Analysis) -> None:
    write_json(run.analysis_results, analysis.to_json())
    with atomic_open(run.analysis_summary) as handle:
        handle.write(format_analysis(analysis, markdown=True) + "\n")
    plot_curves(analysis, run.analysis_curves)


def format_analysis(analysis: Analysis, markdown: bool = False) -> str:
    """The sweet spot of every group with its reason, as the CLI prints it (or as Markdown)."""
    lines = ["# Sweet-spot analysis", ""] if markdown else ["Sweet spots (validation only):"]
    for group, spot in analysis.groups.items():
        onset = "none" if spot.onset is None else f"epoch {spot.onset}"
        if markdown:
            lines.append(
                f"- **{group}** ({' + '.join(spot.modules)}): epoch {spot.sweet_spot}, onset {onset}. {spot.reason}."
            )
        else:
            lines.append(f"  {group:<17} epoch {spot.sweet_spot:>4}   onset {onset:<10}  {spot.reason}")
    return "\n".join(lines)

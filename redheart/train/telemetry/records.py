"""Per-epoch records: the metrics log (JSONL), TensorBoard scalars, and the run's telemetry.

With telemetry on, every epoch record gains a "telemetry" block (keys below), every checkpoint folder
a module_stats.json (see module_statistics.py), and every checkpoint a progress report (see
telemetry/progress.py). Record keys outside the block: "seconds" (training time of the epoch),
"samples_per_second", "peak_memory_bytes" (CUDA max_memory_allocated; per epoch with telemetry on,
since the start of the process without).

    "telemetry": {"lr_groups": {name: lr}, "loss_by_group": {"train": {group: loss}, "val": {group: loss}},
                  "gap": {"modules": {module: val - train}, "groups": {group: val - train}},
                  "optimizer_steps": int, "step_seconds": float | null, "wall_seconds": float,
                  "peak_host_memory_bytes": int | null}

lr_groups names each optimizer parameter group "backbone_depth_NN" or "other", then "/decay" or
"/no_decay"; step_seconds is the training time per optimizer step of this process; wall_seconds also
counts validation; peak_host_memory_bytes is the process's peak resident set since it started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from redheart.core.atomic import write_jsonl
from redheart.core.checkpoint_files import MANIFEST
from redheart.core.host_memory import peak_host_memory_bytes
from redheart.core.rundir import RunDir
from redheart.train.telemetry.module_statistics import GradientProbe, module_stats
from redheart.train.telemetry.progress import group_losses, loss_gaps, progress_report, write_progress
from redheart.train.trainer import EpochTally, Trainer


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Add one epoch's record; a record of an epoch already logged (a resumed, re-run epoch) replaces it."""
    rows = []
    if Path(path).exists():
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    write_jsonl(path, [row for row in rows if row["epoch"] < record["epoch"]] + [record])


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def peak_memory_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def lr_groups(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current learning rate of every parameter group, named by backbone depth and weight decay."""
    rates = {}
    for index, group in enumerate(optimizer.param_groups):
        depth = group.get("depth")
        place = f"group_{index:02d}" if depth is None else "other" if depth < 0 else f"backbone_depth_{depth:02d}"
        rates[f"{place}/{'decay' if group['weight_decay'] > 0 else 'no_decay'}"] = float(group["lr"])
    return rates


class RunTelemetry:
    """What one training run records besides its losses; with enabled=False every method does nothing."""

    def __init__(
        self,
        out: RunDir,
        trainer: Trainer,
        writer: SummaryWriter | None,
        epochs_total: int,
        enabled: bool = True,
        gradients: bool = True,
    ) -> None:
        """`gradients` False: module statistics without gradients (FSDP: each rank holds a shard of them)."""
        self.out, self.trainer, self.writer = out, trainer, writer
        self.epochs_total, self.enabled, self.gradients = epochs_total, enabled, gradients
        self.probe = GradientProbe()
        self._started = 0.0
        self._steps_before = 0

    def start_epoch(self, tally: EpochTally, checkpoint: bool) -> None:
        """Reset the device's peak memory; arm the gradient probe when the epoch ends in a checkpoint."""
        # Armed only when enabled and a checkpoint ends the epoch; disarmed otherwise, also by a disabled instance.
        self.trainer.grad_probe = self.probe if self.enabled and self.gradients and checkpoint else None
        if not self.enabled:
            return
        device = self.trainer.precision.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._started = time.perf_counter()
        self._steps_before = len(tally.grad_norms)

    def finish_epoch(self, record: dict[str, Any], tally: EpochTally) -> None:
        """Add the "telemetry" block to the epoch record (call after validation, before logging it)."""
        if not self.enabled:
            return
        steps = len(tally.grad_norms) - self._steps_before
        record["telemetry"] = {
            "lr_groups": lr_groups(self.trainer.optimizer),
            "loss_by_group": {"train": group_losses(record["train_loss"]), "val": group_losses(record["val"]["loss"])},
            "gap": loss_gaps(record),
            "optimizer_steps": steps,
            "step_seconds": record["seconds"] / steps if steps else None,
            "wall_seconds": time.perf_counter() - self._started,
            "peak_host_memory_bytes": peak_host_memory_bytes(),
        }

    def checkpoint_files(self, epoch: int, model: nn.Module | None = None) -> dict[str, Any]:
        """The module statistics by file name, to seal into the checkpoint (save_checkpoint's `extra`); logged to
        TensorBoard.

        `model`: the weights to describe, when not the trainer's model itself (FSDP: the gathered weights)."""
        if not self.enabled:
            return {}
        stats = module_stats(self.trainer.model if model is None else model, epoch, self.probe)
        if self.writer is not None:
            log_module_stats(self.writer, stats)
        return {self.out.module_stats(epoch).name: stats}

    def report_progress(self) -> None:
        """Write the progress report after the last logged epoch (call after its checkpoint is saved)."""
        if not self.enabled:
            return
        rows = read_metrics(self.out.metrics_log)
        saved = [row["epoch"] for row in rows if (self.out.checkpoint(row["epoch"]) / MANIFEST).exists()]
        report = progress_report(rows, saved, self.epochs_total)
        write_progress(self.out, report)
        if self.writer is not None:
            log_progress(self.writer, report)


def log_scalars(writer: SummaryWriter, record: dict[str, Any]) -> None:
    epoch = record["epoch"]
    writer.add_scalar("lr", record["lr"], epoch)
    writer.add_scalar("samples_per_second", record["samples_per_second"], epoch)
    if record["grad_norm"]["mean"] is not None:
        writer.add_scalar("grad_norm/mean", record["grad_norm"]["mean"], epoch)
    for name, value in record["train_loss"].items():
        writer.add_scalar(f"train_loss/{name}", value, epoch)
    for name, value in record["val"]["loss"].items():
        writer.add_scalar(f"val_loss/{name}", value, epoch)
    for prefix, headline in (
        ("val_fused", record["val"]["headline"]),
        ("val_ema_fused", record.get("ema_headline") or {}),
    ):
        for name, value in headline.items():
            if value is not None:
                writer.add_scalar(f"{prefix}/{name}", value, epoch)
    if record.get("peak_memory_bytes") is not None:
        writer.add_scalar("peak_memory_gib", record["peak_memory_bytes"] / 2**30, epoch)
    if "telemetry" in record:
        _log_telemetry(writer, record["telemetry"], epoch)
    writer.flush()


def _log_telemetry(writer: SummaryWriter, block: dict[str, Any], epoch: int) -> None:
    for name, value in block["lr_groups"].items():
        writer.add_scalar(f"lr_group/{name}", value, epoch)
    for split, losses in block["loss_by_group"].items():
        for group, value in losses.items():
            writer.add_scalar(f"{split}_loss_group/{group}", value, epoch)
    for level, gaps in block["gap"].items():
        for name, value in gaps.items():
            writer.add_scalar(f"gap_{level}/{name}", value, epoch)
    if block["step_seconds"] is not None:
        writer.add_scalar("step_seconds", block["step_seconds"], epoch)
    if block["peak_host_memory_bytes"] is not None:
        writer.add_scalar("peak_host_memory_gib", block["peak_host_memory_bytes"] / 2**30, epoch)


def log_module_stats(writer: SummaryWriter, stats: dict[str, Any]) -> None:
    """Scalars module_{parameters,gradients}/<module>/<stat> and group_{...}/<group>/<stat> at the
    checkpoint's epoch."""
    for level in ("modules", "groups"):
        for name, entry in stats[level].items():
            for kind in ("parameters", "gradients"):
                for stat, value in (entry[kind] or {}).items():
                    if value is not None and stat != "count":
                        writer.add_scalar(f"{level[:-1]}_{kind}/{name}/{stat}", value, stats["epoch"])
    writer.flush()


def log_progress(writer: SummaryWriter, report: dict[str, Any]) -> None:
    epoch = report["epoch"]
    for group, trend in report["overfitting"]["groups"].items():
        if trend["slope_per_epoch"] is not None:
            writer.add_scalar(f"overfit_gap_slope/{group}", trend["slope_per_epoch"], epoch)
    writer.add_scalar("progress/estimated_hours_left", report["time"]["estimated_seconds_left"] / 3600, epoch)
    writer.flush()

"""Per-epoch records: the metrics log (JSONL) and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from redheart.atomic import write_jsonl


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
    for prefix, headline in (("val_fused", record["val"]["headline"]), ("val_ema_fused", record.get("ema_headline") or {})):
        for name, value in headline.items():
            if value is not None:
                writer.add_scalar(f"{prefix}/{name}", value, epoch)
    if record.get("peak_memory_bytes") is not None:
        writer.add_scalar("peak_memory_gib", record["peak_memory_bytes"] / 2**30, epoch)
    writer.flush()

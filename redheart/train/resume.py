"""The one rolling resume state of a run: everything needed to continue at micro-step granularity.

Layout: resume/current.json names the live slot (slot_0 or slot_1). A save fills the other slot
(every file written atomically and fsynced), then switches current.json atomically; a kill at any
moment leaves the previous state intact and pointed to. Weights are safetensors; optimizer,
scheduler, scaler and RNG states load with torch.load(weights_only=True), so nothing is unpickled.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from redheart.atomic import read_json, write_json, write_with
from redheart.train.loop import Trainer

POINTER = "current.json"
SLOTS = ("slot_0", "slot_1")


class ResumeError(RuntimeError):
    """A resume state that does not belong to this run (other config or split) or is unreadable."""


def has_resume(folder: Path) -> bool:
    return (Path(folder) / POINTER).exists()


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def _save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    write_with(path, lambda tmp: save_file(_tensors(state), str(tmp)))


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients accumulated so far in an unfinished accumulation window (empty at window ends)."""
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def save_resume(folder: Path, trainer: Trainer, info: dict[str, Any]) -> Path:
    """Write the full training state plus `info` (JSON: epoch, micro_step, hashes, tallies); returns the slot."""
    folder = Path(folder)
    live = read_json(folder / POINTER)["slot"] if has_resume(folder) else None
    slot = folder / (SLOTS[1] if live == SLOTS[0] else SLOTS[0])
    shutil.rmtree(slot, ignore_errors=True)
    slot.mkdir(parents=True)
    _save_tensors(slot / "model.safetensors", trainer.model.state_dict())
    if trainer.ema is not None:
        _save_tensors(slot / "ema.safetensors", trainer.ema.state_dict())
    _save_tensors(slot / "grads.safetensors", _grads(trainer.model))
    training = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    write_with(slot / "training.pt", lambda tmp: torch.save(training, tmp))
    write_json(slot / "state.json", info)
    write_json(folder / POINTER, {"slot": slot.name})
    return slot


def read_resume_info(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    return read_json(folder / read_json(folder / POINTER)["slot"] / "state.json")


def load_resume(folder: Path, trainer: Trainer, identity: dict[str, str]) -> dict[str, Any]:
    """Restore the trainer from the live slot after checking `identity` (config_hash, split_hash) matches."""
    folder = Path(folder)
    slot = folder / read_json(folder / POINTER)["slot"]
    info = read_json(slot / "state.json")
    for key, expected in identity.items():
        if info.get(key) != expected:
            raise ResumeError(
                f"{folder}: the resume state has {key} {info.get(key)!r} but this run has {expected!r}; "
                f"it was saved by a run with another {key.removesuffix('_hash')}. Use another output folder, "
                f"or delete {folder} to start over."
            )
    trainer.model.load_state_dict(load_file(str(slot / "model.safetensors")), strict=True)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(load_file(str(slot / "ema.safetensors")), strict=True)
    grads = load_file(str(slot / "grads.safetensors"))
    for name, param in trainer.model.named_parameters():
        param.grad = grads[name].to(param.device) if name in grads else None
    training = torch.load(slot / "training.pt", weights_only=True, map_location="cpu")
    trainer.optimizer.load_state_dict(training["optimizer"])
    trainer.scheduler.load_state_dict(training["scheduler"])
    trainer.scaler.load_state_dict(training["scaler"])
    torch.set_rng_state(training["rng_cpu"])
    if training["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(training["rng_cuda"])
    return info

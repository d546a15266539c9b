"""The one rolling resume state of a run: everything needed to continue at micro-step granularity.

Layout (core.rundir.ResumeDir names the files): resume/current.json names the live slot (slot_0 or slot_1). A
save fills the other slot (every file written atomically and fsynced), writes state.json with the sha256 of every
file last, then switches current.json atomically; a kill at any moment leaves the previous state intact and
pointed to. Loading checks the checksums and the run's identity; a slot that fails is reported by
file and reason, and the other slot is used when it is good. Weights are safetensors; optimizer,
scheduler, scaler and RNG states load with torch.load(weights_only=True), so nothing is unpickled.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import sha256, write_state_file
from redheart.core.faults import NO_FAULTS, Faults
from redheart.core.rundir import ResumeDir, ResumeSlot
from redheart.train.oom import BatchPlan
from redheart.train.parallel.fsdp import (
    full_grads,
    full_optimizer_state,
    full_state,
    load_full_grads,
    load_full_optimizer_state,
    load_full_state,
)
from redheart.train.state.checkpoints import host_tensors, save_tensors
from redheart.train.trainer import EpochTally, Trainer

# What a damaged or hostile file raises from the loaders; each becomes a ResumeError naming the file.
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


class ResumeError(RuntimeError):
    """A resume state that does not belong to this run (other config or split) or is unreadable."""


def has_resume(folder: Path) -> bool:
    resume = ResumeDir(folder)
    return resume.pointer.exists() or any(slot.state.exists() for slot in resume.slots)


def _slot_names(resume: ResumeDir) -> list[str]:
    return [slot.root.name for slot in resume.slots]


def _live_slot(folder: Path) -> str | None:
    resume = ResumeDir(folder)
    try:
        slot = read_json(resume.pointer)["slot"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return slot if slot in _slot_names(resume) else None


def _tensor_files(slot: ResumeSlot) -> dict[str, Path]:
    """Where each of resume_tensors' tensor sets is written in a slot."""
    return {"model": slot.model, "grads": slot.grads, "ema": slot.ema}


def resume_tensors(trainer: Trainer) -> dict[str, Any]:
    """The trainer's weights, gradients (of an unfinished window), EMA and optimizer state, whole: under FSDP
    a collective, to call on every rank; rank 0 gets the tensors."""
    tensors = {"model": full_state(trainer.model), "grads": full_grads(trainer.model)}
    if trainer.ema is not None:
        tensors["ema"] = full_state(trainer.ema)
    return {"tensors": tensors, "optimizer": full_optimizer_state(trainer.model, trainer.optimizer)}


def save_resume(
    folder: Path,
    trainer: Trainer,
    info: dict[str, Any],
    faults: Faults = NO_FAULTS,
    tensors: dict[str, Any] | None = None,
) -> Path:
    """Write the full training state plus `info` (JSON: epoch, sample, hashes, tallies); returns the slot.

    `tensors`: resume_tensors(trainer), gathered by the caller when other ranks must take part.
    """
    gathered = resume_tensors(trainer) if tensors is None else tensors
    resume = ResumeDir(folder)
    live = _live_slot(folder)
    first, second = resume.slots
    slot = second if live == first.root.name else first
    shutil.rmtree(slot.root, ignore_errors=True)
    slot.root.mkdir(parents=True)
    paths = []
    for kind, state in gathered["tensors"].items():
        path = _tensor_files(slot)[kind]
        write_state_file(path, partial(save_tensors, host_tensors(state)), faults)
        paths.append(path)
    training = {
        "optimizer": gathered["optimizer"],
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    write_state_file(slot.training, lambda tmp: torch.save(training, tmp), faults)
    paths.append(slot.training)
    previous = read_resume_info(folder).get("sequence", 0) if live else 0
    state = {
        **info,
        "sequence": previous + 1,
        "batch_plan": trainer.plan.to_json(),
        "window_tally": trainer.window_tally.to_json() if trainer.window_tally is not None else None,
        "files": {path.name: sha256(path) for path in paths},
    }
    write_state_file(slot.state, lambda tmp: tmp.write_text(json.dumps(state, indent=2) + "\n"), faults)
    write_json(resume.pointer, {"slot": slot.root.name})
    return slot.root


def restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """Give each visible CUDA device its saved RNG state, by index. A run saved with more devices visible than now
    (started on a 2-GPU node, resumed on one) resumes: the states of devices no longer visible are dropped, and a
    device the state did not cover keeps its own seed; either is said on stderr."""
    if not states or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    for index, state in enumerate(states[:visible]):
        torch.cuda.set_rng_state(state, index)
    if len(states) > visible:
        print(
            f"warning: the resume state holds the CUDA RNG states of {len(states)} devices and {visible} are visible; "
            f"the states of devices {list(range(visible, len(states)))} are dropped, and the resumed run's random "
            "draws are no longer those the uninterrupted run would have made",
            file=sys.stderr,
        )
    elif len(states) < visible:
        print(
            f"warning: the resume state holds the CUDA RNG states of {len(states)} devices and {visible} are visible; "
            f"devices {list(range(len(states), visible))} keep their own seeds",
            file=sys.stderr,
        )


def read_resume_info(folder: Path) -> dict[str, Any]:
    resume = ResumeDir(folder)
    return read_json(resume.slot(read_json(resume.pointer)["slot"]).state)


def load_resume(folder: Path, trainer: Trainer, identity: dict[str, str]) -> dict[str, Any]:
    """Restore the trainer from the newest good slot after checking `identity` (config_hash, split_hash).

    A slot that fails (damaged file, checksum, foreign run) is reported on stderr and the other slot
    is tried; the pointer is moved to the slot actually used, so the next save never overwrites it.
    """
    resume = ResumeDir(folder)
    problems = []
    for slot in _candidates(folder):
        try:
            info = _load_slot(resume.slot(slot), trainer, identity)
        except ResumeError as error:
            problems.append(str(error))
            print(f"warning: {error}", file=sys.stderr)
            continue
        if _live_slot(folder) != slot:
            print(f"warning: resuming from the previous good state {resume.slot(slot).root}", file=sys.stderr)
            write_json(resume.pointer, {"slot": slot})
        return info
    raise ResumeError("no usable resume state:\n" + "\n".join(f"  {problem}" for problem in problems))


def _candidates(folder: Path) -> list[str]:
    """Slots with a state file, the live one first (or the newest, when the pointer is unreadable)."""
    resume = ResumeDir(folder)
    live = _live_slot(folder)
    present = [slot.root.name for slot in resume.slots if slot.state.exists()]

    def newest_first(slot: str) -> tuple[bool, int]:
        try:
            sequence = int(read_json(resume.slot(slot).state).get("sequence", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            sequence = -1
        return slot == live, sequence

    return sorted(present, key=newest_first, reverse=True)


def _load_slot(slot: ResumeSlot, trainer: Trainer, identity: dict[str, str]) -> dict[str, Any]:
    info = _verified_info(slot, identity)
    path = slot.state
    try:
        path = slot.model
        load_full_state(trainer.model, load_file(str(path)))
        if trainer.ema is not None:
            path = slot.ema
            load_full_state(trainer.ema, load_file(str(path)))
        path = slot.training
        training = torch.load(path, weights_only=True, map_location="cpu")
        # Before the gradients: FSDP's loader takes a zero-learning-rate step to lay out an empty state.
        load_full_optimizer_state(trainer.model, trainer.optimizer, training["optimizer"])
        trainer.scheduler.load_state_dict(training["scheduler"])
        trainer.scaler.load_state_dict(training["scaler"])
        torch.set_rng_state(training["rng_cpu"])
        restore_cuda_rng(list(training["rng_cuda"]))
        path = slot.grads
        load_full_grads(trainer.model, load_file(str(path)))
        path = slot.state
        if info.get("batch_plan"):
            trainer.plan = BatchPlan.from_json(info["batch_plan"])
        trainer.window_tally = EpochTally.from_json(info["window_tally"]) if info.get("window_tally") else None
    except _LOAD_ERRORS as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ResumeError(f"{path}: cannot be loaded ({type(error).__name__}: {first_line})") from None
    return info


def _verified_info(slot: ResumeSlot, identity: dict[str, str]) -> dict[str, Any]:
    """The state of `slot` after checking every file's sha256 and the run identity."""
    path = slot.state
    try:
        info = read_json(path)
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResumeError(f"{path}: unreadable or incomplete ({type(error).__name__}: {error})") from None
    for name, expected in files.items():
        listed = slot.root / name
        if not listed.exists():
            raise ResumeError(f"{listed}: listed in {path} but missing")
        if sha256(listed) != expected:
            raise ResumeError(f"{listed}: sha256 does not match {path}; the file is truncated, corrupt or was replaced")
    for key, expected in identity.items():
        if info.get(key) != expected:
            raise ResumeError(
                f"{path}: the resume state has {key} {info.get(key)!r} but this run has {expected!r}; "
                f"it was saved by a run with another {key.removesuffix('_hash')}. Use another output folder, "
                f"or delete {slot.root.parent} to start over."
            )
    return info

"""Modular checkpoints: one safetensors file per module group, metrics.json, and a checksum manifest.

A checkpoint folder is complete only when manifest.json exists (it is written last); loading checks
every checksum and loads strictly, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from redheart.core.checkpoint_files import (
    MANIFEST,
    METRICS,
    CheckpointError,
    sha256,
    stored_metadata,
    verify_checkpoint,
    write_state_file,
)
from redheart.core.faults import NO_FAULTS, Faults
from redheart.core.rundir import RunDir, group_weights
from redheart.model.groups import group_state_dict, load_group_state_dict
from redheart.model.model import RedHeartModel

CHECKPOINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def group_states(model: RedHeartModel) -> dict[str, dict[str, torch.Tensor]]:
    """The model's state_dict cut by group, on the host; a key in no group is an error, never left out."""
    states = {group: group_state_dict(model, group) for group in model.groups}
    covered = {key for state in states.values() for key in state}
    orphans = sorted(set(model.state_dict()) - covered)
    if orphans:
        raise CheckpointError(f"state_dict keys in no group of GROUPS would not be saved: {orphans[:5]}")
    return {group: host_tensors(state) for group, state in states.items()}


def host_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` on the host, ready for safetensors, which refuses tensors that share storage (views, tied
    weights): those are copied; a host tensor owning its storage is used as it is, so saving the 730M
    model does not hold a second host copy of it."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach()
        storage = value.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != value.nbytes or not value.is_contiguous()
        seen.add(storage.data_ptr())
        out[key] = value.to("cpu", copy=True).contiguous() if shared else value.to("cpu")
    return out


def checkpoint_dtype(name: str) -> torch.dtype:
    """The torch dtype of train.checkpoint_dtype; ValueError naming the field for anything else."""
    if name not in CHECKPOINT_DTYPES:
        raise ValueError(f"train.checkpoint_dtype is {name!r}; choose one of {sorted(CHECKPOINT_DTYPES)}")
    return CHECKPOINT_DTYPES[name]


def stored(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """fp32 tensors cast to `dtype` (loading casts them back into the fp32 model); other dtypes kept as they are."""
    return {key: value.to(dtype) if value.dtype == torch.float32 else value for key, value in state.items()}


def _write_json(path: Path, obj: Any, faults: Faults) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_state_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), faults)


def save_checkpoint(
    model: RedHeartModel,
    folder: Path,
    metrics: dict[str, Any],
    preset: str,
    extra: dict[str, Any] | None = None,
    faults: Faults = NO_FAULTS,
    dtype: str = "float32",
) -> None:
    """Write <group>.safetensors for every group (fp32 tensors stored as `dtype`, a train.checkpoint_dtype name),
    metrics.json, the `extra` JSON files ({file name: object}), then the manifest of their sha256.

    A failure part-way (a kill, a full disk) leaves this folder without a manifest: incomplete, never
    mistaken for a checkpoint, and every other checkpoint folder untouched.
    """
    torch_dtype = checkpoint_dtype(dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an overwritten checkpoint is incomplete until re-sealed
    files = []
    for group, full in group_states(model).items():
        state = stored(full, torch_dtype)
        weights = group_weights(folder, group)
        metadata = {"group": group, "preset": preset}
        write_state_file(weights, partial(save_tensors, state, metadata=metadata), faults)
        files.append(weights.name)
    _write_json(folder / METRICS, metrics, faults)
    files.append(METRICS)
    for name, obj in (extra or {}).items():
        _write_json(folder / name, obj, faults)
        files.append(name)
    _write_json(folder / MANIFEST, {"preset": preset, "files": {name: sha256(folder / name) for name in files}}, faults)


def load_group(model: RedHeartModel, folder: Path, group: str) -> None:
    """Load one group's weights strictly from a verified checkpoint folder."""
    folder = Path(folder)
    manifest = verify_checkpoint(folder)
    name = group_weights(folder, group).name
    if name not in manifest["files"]:
        raise CheckpointError(f"{folder}: has no group {group!r} (groups: {sorted(manifest['files'])})")
    try:
        state = load_file(str(folder / name))
    except SafetensorError as error:
        raise CheckpointError(f"{folder / name}: not a readable safetensors file ({error})") from None
    try:
        load_group_state_dict(model, group, state)
    except ValueError as error:
        raise CheckpointError(
            f"{folder / name}: does not fit this model ({error}); the checkpoint was made with preset "
            f"{manifest.get('preset')!r}"
        ) from None


def load_checkpoint(model: RedHeartModel, folder: Path) -> None:
    """Load every group of one checkpoint."""
    for group in model.groups:
        load_group(model, folder, group)


def load_groups(model: RedHeartModel, epochs: dict[str, int], run: RunDir) -> RedHeartModel:
    """Assemble a model whose groups come from their own epochs ({group: epoch}); every group must be named."""
    unknown = set(epochs) - set(model.groups)
    if unknown:
        raise CheckpointError(f"unknown groups {sorted(unknown)}; the model's groups are {sorted(model.groups)}")
    left = set(model.groups) - set(epochs)
    if left:
        raise CheckpointError(f"no epoch given for groups {sorted(left)}; a crossover model needs every group")
    for group, epoch in epochs.items():
        load_group(model, run.checkpoint(epoch), group)
    return model


def save_tensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file with the path last, for write_state_file's writer; `metadata` is stored as one
    key (core.checkpoint_files.stored_metadata), so the same tensors always give the same bytes."""
    save_file(state, str(path), metadata=None if metadata is None else stored_metadata(metadata))

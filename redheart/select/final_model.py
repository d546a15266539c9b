"""The final model as a self-contained directory that `redheart predict` can load without the run folder.

    config.json               model config, input_dim, max_segments, encoder config, preset, what was chosen
    <group>.safetensors       one per module group; group_c holds the fusion re-fitted on validation
    manifest.json             sha256 of every file above (written last)
    README.md                 the model card (redheart.evaluate.model_card), not in the manifest

Loading verifies every checksum first and loads every group strictly; nothing is unpickled.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, cast

from safetensors.torch import load_file
from torch import nn

from redheart.config import EncoderConfig, ModelConfig, RunConfig, to_dict
from redheart.core.atomic import atomic_open, read_json, write_json, write_with
from redheart.core.checkpoint_files import CheckpointError, sha256, verify_checkpoint
from redheart.core.rundir import ModelDir, RunDir
from redheart.model.groups import GROUPS, load_group_state_dict
from redheart.model.model import RedHeartModel
from redheart.select.candidates import Candidate
from redheart.select.outputs import average_state
from redheart.train.state.checkpoints import group_states, load_checkpoint, load_groups, save_tensors


def build_candidate_model(candidate: Candidate, run: RunDir, model: RedHeartModel) -> RedHeartModel:
    """Load a single-network candidate's weights and its fitted fusion into `model`."""
    if candidate.kind == "groups":
        load_groups(model, candidate.group_epochs(), run)
    elif candidate.kind == "folder":
        load_checkpoint(model, run.root / candidate.folder_name())
    elif candidate.kind == "average":
        model.load_state_dict(
            average_state([run.checkpoint(e) for e in cast(list[int], candidate.average)]), strict=True
        )
    else:
        raise ValueError(
            f"candidate {candidate.name!r} ({candidate.kind}) is not one network and cannot be saved as one"
        )
    if candidate.fusion is None:
        raise ValueError(f"candidate {candidate.name!r} has no fitted fusion")
    model.kalman.load_state_dict(candidate.fusion.state_dict(), strict=True)
    return model


def save_final_model(
    model: RedHeartModel, path: Path, config: RunConfig, input_dim: int, max_segments: int, info: dict[str, Any]
) -> None:
    path = Path(path)
    folder = ModelDir(path)
    path.mkdir(parents=True, exist_ok=True)
    folder.manifest.unlink(missing_ok=True)  # incomplete until the manifest is written again
    files = []
    for group, state in group_states(model).items():
        name = folder.group_weights(group).name
        write_with(path / name, partial(save_tensors, state, metadata={"group": group, "preset": config.preset}))
        files.append(name)
    write_json(
        folder.config,
        {
            "preset": config.preset,
            "model": to_dict(config)["model"],
            "encoder": to_dict(config)["encoder"],
            "input_dim": input_dim,
            "max_segments": max_segments,
            "info": info,
        },
    )
    name = info.get("candidate", {}).get("name", "a trained model")
    # The model card: this line until redheart.evaluate.model_card writes it from the run's results. It is
    # documentation, left out of the manifest, so rewriting it never invalidates the weights' checksums.
    with atomic_open(folder.card) as handle:
        handle.write(
            f"Red Heart model ({config.preset} preset): {name}, chosen on validation. "
            "Load with redheart.select.final_model.load_final_model.\n"
        )
    files += [folder.config.name]
    write_json(folder.manifest, {"preset": config.preset, "files": {f: sha256(path / f) for f in files}})


def load_final_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the model in eval mode, config.json) of a final-model directory; CheckpointError if anything is off."""
    path = Path(path)
    folder = ModelDir(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no final-model directory here")
    manifest = verify_checkpoint(path)
    names = [folder.config, *(folder.group_weights(g) for g in GROUPS)]
    missing = [f.name for f in names if f.name not in manifest["files"]]
    if missing:
        raise CheckpointError(f"{path}: the manifest lists no {missing}; not a final-model directory")
    try:
        info = read_json(folder.config)
        model = RedHeartModel(
            ModelConfig(**info["model"]), input_dim=int(info["input_dim"]), max_segments=int(info["max_segments"])
        )
        EncoderConfig(**info["encoder"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder.config}: not a valid final-model config ({error})") from None
    for group in GROUPS:
        try:
            load_group_state_dict(model, group, load_file(str(folder.group_weights(group))))
        except ValueError as error:
            raise CheckpointError(
                f"{folder.group_weights(group)}: does not fit the model of {folder.config.name} ({error})"
            ) from None
    return model.eval(), info

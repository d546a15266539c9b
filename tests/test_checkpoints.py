import json

import pytest
import torch
from safetensors import safe_open

from redheart.config import PRESETS
from redheart.core.checkpoint_files import CheckpointError, sha256
from redheart.core.rundir import RunDir
from redheart.model.groups import GROUPS
from redheart.model.model import RedHeartModel
from redheart.train.state.checkpoints import load_checkpoint, load_groups, save_checkpoint, save_tensors


def tiny_model(seed: int, input_dim: int = 32) -> RedHeartModel:
    torch.manual_seed(seed)
    return RedHeartModel(PRESETS["tiny"].model, input_dim=input_dim, max_segments=4)


def same(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


def test_round_trip_and_crossover_by_group(tmp_path):
    run = RunDir(tmp_path)
    early, late = tiny_model(1), tiny_model(2)
    save_checkpoint(early, run.checkpoint(2), {"epoch": 2}, "tiny")
    save_checkpoint(late, run.checkpoint(4), {"epoch": 4}, "tiny")
    assert sorted(p.name for p in run.checkpoint(2).glob("*.safetensors")) == sorted(f"{g}.safetensors" for g in GROUPS)

    restored = tiny_model(3)
    load_checkpoint(restored, run.checkpoint(2))
    assert same(restored, early)

    crossed = load_groups(tiny_model(3), {group: 4 if group == "group_b" else 2 for group in GROUPS}, run)
    assert same(crossed, late, "neural_") and same(crossed, early, "backbone.") and not same(crossed, early)
    with pytest.raises(CheckpointError, match="no epoch given for groups"):
        load_groups(tiny_model(3), {"group_a": 2}, run)


def test_tampered_file_fails_its_checksum(tmp_path):
    folder = tmp_path / "epoch_002"
    save_checkpoint(tiny_model(1), folder, {"epoch": 2}, "tiny")
    data = bytearray((folder / "group_b.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "group_b.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="group_b.safetensors: sha256 does not match"):
        load_checkpoint(tiny_model(1), folder)


def test_incomplete_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "epoch_002"
    save_checkpoint(tiny_model(1), folder, {"epoch": 2}, "tiny")
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tiny_model(1), folder)


def test_checkpoint_of_another_preset_fails_clearly(tmp_path):
    save_checkpoint(tiny_model(1, input_dim=16), tmp_path, {"epoch": 2}, "other")
    with pytest.raises(CheckpointError, match="does not fit this model .*shape.*made with preset 'other'"):
        load_checkpoint(tiny_model(1), tmp_path)


def test_the_same_tensors_give_the_same_file_bytes(tmp_path):
    # safetensors orders several metadata keys by a hash seeded anew for each file: eight saves of the old
    # two-key metadata agree by chance with probability 2**-7, so this fails on it; the stored form is one key.
    state = tiny_model(3).state_dict()
    for i in range(8):
        save_tensors(state, tmp_path / f"{i}.safetensors", metadata={"group": "group_a", "preset": "tiny"})
    assert len({sha256(tmp_path / f"{i}.safetensors") for i in range(8)}) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["redheart"]) == {"group": "group_a", "preset": "tiny"}

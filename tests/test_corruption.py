"""Damaged, foreign and hostile state files, and a full disk: a clear error naming the file, a fallback
to the other resume slot when it is good, never an unpickled object, and the last good state intact."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from test_resume_kill import assert_identical, live_state

from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import CheckpointError, DiskFullError, sha256, verify_checkpoint
from redheart.core.faults import Faults
from redheart.core.rundir import RunDir
from redheart.model.model import RedHeartModel
from redheart.train.recipe import train
from redheart.train.state.checkpoints import load_checkpoint, save_checkpoint
from redheart.train.state.resume import ResumeError, read_resume_info

from tiny_run import tiny_config

LR = 3e-3


class Payload:
    """A pickle that would create `marker` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(data, tiny_config(), lr=LR, epochs=1, output=RunDir(out), progress=False)
    return live_state(out)


@pytest.fixture
def trained(data, tmp_path):
    """One epoch with a resume state after every micro-step, so both slots hold a good state."""
    train(data, tiny_config(), lr=LR, epochs=1, output=RunDir(tmp_path), progress=False, resume_every=1)
    return tmp_path


def slots(out: Path) -> tuple[Path, Path]:
    live = read_json(out / "resume" / "current.json")["slot"]
    other = "slot_1" if live == "slot_0" else "slot_0"
    return out / "resume" / live, out / "resume" / other


def test_truncated_live_state_falls_back_to_the_other_slot(data, reference, trained, capsys):
    live, other = slots(trained)
    path = live / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    train(data, tiny_config(), lr=LR, epochs=1, output=RunDir(trained), progress=False)
    err = capsys.readouterr().err
    assert f"{path}: sha256 does not match {live / 'state.json'}" in err
    assert f"resuming from the previous good state {other}" in err
    assert_identical(reference, live_state(trained))  # the epoch end was redone from the older state


def test_bit_flips_in_both_slots_name_both_files(data, trained):
    for slot in slots(trained):
        path = slot / "training.pt"
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    with pytest.raises(ResumeError, match="no usable resume state") as caught:
        train(data, tiny_config(), lr=LR, epochs=2, output=RunDir(trained), progress=False)
    for slot in slots(trained):
        assert f"{slot / 'training.pt'}: sha256 does not match" in str(caught.value)


def test_resume_state_of_another_split_is_refused(data, trained, tmp_path):
    other = RunDir(tmp_path / "other")
    shutil.copytree(data.root, other.root)
    split = read_json(other.split_manifest)
    split["train"][0], split["val"][0] = split["val"][0], split["train"][0]
    write_json(other.split_manifest, split)
    with pytest.raises(ResumeError, match=r"state.json: the resume state has split_hash '[0-9a-f]+' but this run has"):
        train(other, tiny_config(), lr=LR, epochs=2, output=RunDir(trained), progress=False)


def test_resume_state_of_another_config_is_refused(data, trained):
    with pytest.raises(ResumeError, match="config_hash"):
        train(
            data, tiny_config(**{"train.label_smoothing": 0.0}), lr=LR, epochs=2, output=RunDir(trained), progress=False
        )


@pytest.mark.parametrize("name", ["training.pt", "model.safetensors"])
def test_a_crafted_pickle_in_the_resume_state_never_runs(data, trained, tmp_path, name):
    marker = tmp_path / "pwned"
    for slot in slots(trained):
        with open(slot / name, "wb") as handle:
            pickle.dump({"optimizer": Payload(marker)}, handle)
        # The attacker controls the checksums too, so only the safe loaders stand in the way.
        state = read_json(slot / "state.json")
        state["files"][name] = sha256(slot / name)
        (slot / "state.json").write_text(json.dumps(state))
    with pytest.raises(ResumeError, match=f"{name}: cannot be loaded"):
        train(data, tiny_config(), lr=LR, epochs=2, output=RunDir(trained), progress=False)
    assert not marker.exists()


def tiny_model(input_dim: int = 32) -> RedHeartModel:
    torch.manual_seed(0)
    return RedHeartModel(tiny_config().model, input_dim=input_dim, max_segments=4)


def test_a_crafted_pickle_as_a_checkpoint_never_runs(tmp_path):
    folder, marker = tmp_path / "epoch_002", tmp_path / "pwned"
    save_checkpoint(tiny_model(), folder, {"epoch": 2}, "tiny")
    with open(folder / "group_a.safetensors", "wb") as handle:
        pickle.dump(Payload(marker), handle)
    manifest = read_json(folder / "manifest.json")
    manifest["files"]["group_a.safetensors"] = sha256(folder / "group_a.safetensors")
    write_json(folder / "manifest.json", manifest)
    with pytest.raises(CheckpointError, match="group_a.safetensors: not a readable safetensors file"):
        load_checkpoint(tiny_model(), folder)
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_name_the_file_and_the_mismatch(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "good", {"epoch": 2}, "tiny")
    shutil.copytree(tmp_path / "good", tmp_path / "cut")
    path = tmp_path / "cut" / "group_b.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="group_b.safetensors: sha256 does not match the manifest"):
        load_checkpoint(tiny_model(), tmp_path / "cut")
    save_checkpoint(tiny_model(input_dim=16), tmp_path / "foreign", {"epoch": 2}, "small")
    with pytest.raises(CheckpointError, match="does not fit this model .* made with preset 'small'"):
        load_checkpoint(tiny_model(), tmp_path / "foreign")


def test_disk_full_while_writing_a_checkpoint_stops_clearly_and_keeps_the_last_good_one(data, reference, tmp_path):
    def no_space(path: Path) -> None:
        if path.parent.name == "epoch_002" and path.name == "group_b.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="epoch_002/group_b.safetensors: no space left on the device"):
        train(
            data, tiny_config(), lr=LR, epochs=2, output=RunDir(tmp_path), progress=False, faults=Faults(write=no_space)
        )
    assert verify_checkpoint(tmp_path / "checkpoints" / "epoch_001")["preset"] == "tiny"
    assert not list((tmp_path / "checkpoints" / "epoch_002").glob(".*tmp*"))  # no temporary file left behind
    assert read_resume_info(tmp_path / "resume")["epoch"] == 1
    train(data, tiny_config(), lr=LR, epochs=2, output=RunDir(tmp_path), progress=False)  # space freed: resume
    verify_checkpoint(tmp_path / "checkpoints" / "epoch_002")

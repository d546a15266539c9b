"""The disk plan against the bytes a real tiny run leaves, the free-space check, and the cuts it plans for."""

from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import redheart.train.disk_plan as disk_plan
from redheart.cli import main
from redheart.config import RunConfig
from redheart.core.rundir import RunDir
from redheart.model.model import RedHeartModel
from redheart.select.pins import pin_checkpoints
from redheart.select.prune import prune_checkpoints
from redheart.train.disk_plan import (
    NotEnoughDisk,
    folder_bytes,
    plan_for_run,
    remaining_bytes,
    resume_slot_bytes,
    safetensors_bytes,
    weights_bytes,
)
from redheart.train.recipe import train
from redheart.train.sweep.run import run_trial

from tiny_run import make_run, tiny_config

EPOCHS = 4
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four epochs of the tiny preset with a checkpoint every epoch, fp32 checkpoints and bf16 beside them."""
    run = make_run(tmp_path_factory.mktemp("run"), n=40)
    config = tiny_config(**{"train.epochs": EPOCHS, "train.rdrop_alpha": 0.0})
    train(run, config, lr=1e-3, progress=False)
    half = tiny_config(**{"train.epochs": 1, "train.rdrop_alpha": 0.0, "train.checkpoint_dtype": "bfloat16"})
    out = train(run, half, lr=1e-3, progress=False, output=RunDir(run.root / "bf16"))
    return run, config, out.output


def safetensors_files(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_safetensors_size_is_computed_exactly(tmp_path):
    tensors = {
        "layer.weight": torch.randn(7, 5),
        "layer.bias": torch.randn(5).to(torch.bfloat16),
        "count": torch.zeros((), dtype=torch.int64),
    }
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"group": "g", "preset": "tiny"})
    meta = {k: v.to("meta") for k, v in tensors.items()}
    assert safetensors_bytes(meta, {"group": "g", "preset": "tiny"}) == (tmp_path / "a.safetensors").stat().st_size


def test_checkpoint_weights_match_the_files_a_run_writes(trained):
    run, config, half_run = trained
    plan_model = empty_meta_model(config)
    for epoch in range(1, EPOCHS + 1):
        assert safetensors_files(run.checkpoint(epoch)) == weights_bytes(plan_model, "tiny", torch.float32)
    # bf16 files: the same tensors at two bytes instead of four; the headers differ by a few bytes per tensor.
    bf16 = safetensors_files(half_run.checkpoint(1))
    assert bf16 == weights_bytes(plan_model, "tiny", torch.bfloat16)
    fp32_data = sum(p.numel() * 4 for p in plan_model.parameters())
    # Byte counts, the same on any machine: only the headers' few bytes per tensor differ from the data's half.
    assert safetensors_files(run.checkpoint(1)) - bf16 == pytest.approx(fp32_data // 2, rel=0.01)


def test_resume_state_and_whole_folders_are_within_five_percent(trained):
    run, config, _ = trained
    slot = resume_slot_bytes(empty_meta_model(config), "adamw", ema=True)
    # Byte counts, not floats: the plan sizes tensors exactly and the JSON and headers from a model; 5 % covers those.
    assert folder_bytes(run.resume) == pytest.approx(2 * slot + 23, rel=0.05)  # two slots and the pointer file
    plan = plan_for_run(run, config).by_folder()
    assert folder_bytes(run.checkpoints) == pytest.approx(plan["checkpoints"], rel=0.05)
    assert folder_bytes(run.embeddings) == pytest.approx(plan["embeddings"], rel=0.05)


def test_what_is_left_to_write_subtracts_what_is_there(trained, tmp_path):
    run, config, _ = trained
    plan = plan_for_run(run, config)
    fresh = make_run(tmp_path / "fresh", n=40)
    # The trained run has its checkpoints, resume state and embeddings; the fresh one only the embeddings.
    done = sum(min(folder_bytes(run.root / f), plan.by_folder()[f]) for f in ("checkpoints", "resume"))
    assert remaining_bytes(plan, fresh) - remaining_bytes(plan, run) >= done
    assert remaining_bytes(plan, fresh) < plan.total


def test_training_refuses_to_start_when_the_disk_is_too_small(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", n=40)
    config = tiny_config(**{"train.epochs": 1})
    needed = remaining_bytes(plan_for_run(run, config), run)
    monkeypatch.setattr(disk_plan.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, needed - 1))
    with pytest.raises(NotEnoughDisk, match=r"training not started: .* still needs .* GB .* free there") as error:
        train(run, config, lr=1e-3, progress=False)
    assert "train.checkpoint_dtype=bfloat16" in str(error.value) and "redheart disk --run" in str(error.value)
    assert not run.checkpoints.exists() and not run.resume.exists() and not run.baselines.exists()
    with pytest.raises(NotEnoughDisk, match="sweep trial 0 not started"):
        run_trial(run, config, 0, progress=False)
    # Exactly enough is enough; the switch skips the check altogether.
    monkeypatch.setattr(disk_plan.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, needed))
    train(run, config, lr=1e-3, progress=False, output=RunDir(tmp_path / "enough"))
    monkeypatch.setattr(disk_plan.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 0))
    skip = tiny_config(**{"train.epochs": 1, "train.check_disk": False})
    assert train(run, skip, lr=1e-3, progress=False).epochs == 1


def test_the_cli_refuses_with_a_clear_message(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", n=40)
    monkeypatch.setattr(disk_plan.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 1000))
    with pytest.raises(SystemExit) as exit_code:
        main(["train", "--run", str(run.root), "--preset", "tiny", "--set", "train.device=cpu", "--lr", "1e-3"])
    assert exit_code.value.code == 1
    assert "training not started" in capsys.readouterr().err


def test_the_full_preset_plan_before_and_after_the_cuts(capsys, tmp_path):
    main(["disk", "--preset", "full"])
    after = capsys.readouterr().out
    main(
        ["disk", "--preset", "full", "--set", "train.checkpoint_dtype=float32", "--set", "sweep.keep_trial_resume=true"]
    )
    before = capsys.readouterr().out

    def total(text: str) -> float:
        return float(next(line for line in text.splitlines() if line.strip().startswith("total")).split()[1])

    # Byte arithmetic (1 % for the JSON and headers the plan adds). 730M parameters: 31 checkpoints at 2 bytes
    # each, two fp32 resume slots of weights, EMA and two moments (16 bytes).
    assert total(after) == pytest.approx((31 * 2 + 2 * 16 + 4) * 730_347_117 / 1e9, rel=0.01)
    assert total(after) <= 100
    assert total(before) == pytest.approx(total(after) + (31 * 2 + 9 * 2 * 16) * 730_347_117 / 1e9, rel=0.01)


def test_pruning_waits_for_the_crossover_and_keeps_every_pinned_checkpoint(tmp_path):
    run = make_run(tmp_path / "run", n=40)
    train(run, tiny_config(**{"train.epochs": EPOCHS, "train.rdrop_alpha": 0.0}), lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="run `redheart crossover"):
        prune_checkpoints(run)
    pin_checkpoints(run, "analysis", {"sweet spot of group_a": 2})
    with pytest.raises(ValueError, match="the analysis has pinned"):
        prune_checkpoints(run)
    pin_checkpoints(run, "crossover", {"best single": 3})
    listed = prune_checkpoints(run, dry_run=True)
    assert [p.name for p in listed.folders] == ["epoch_001", "epoch_004"] and run.checkpoint(1).exists()
    size = folder_bytes(run.checkpoint(1)) + folder_bytes(run.checkpoint(4))
    pruned = prune_checkpoints(run)
    assert pruned.bytes == size
    assert sorted(p.name for p in run.checkpoints.glob("epoch_*")) == ["epoch_002", "epoch_003"]
    assert (run.checkpoints / "ema").exists()


def empty_meta_model(config: RunConfig) -> RedHeartModel:
    with torch.device("meta"):
        return RedHeartModel(config.model, config.encoder.dim, config.encoder.max_segments)

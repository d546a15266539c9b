"""Exact resume after SIGKILL: a real training subprocess is killed, resumed, and compared bit for bit.

The driver saves the resume state after every micro-step (`resume_every=1`) and announces each save
on stdout; a `Faults.write` hook can hold it inside the save of a chosen state, so the kill lands
mid-save. Tiny preset, 24 training samples, micro-batch 8 x accumulation 2: windows of 16 and 8, so
the kills below fall mid-epoch and mid-accumulation, with dropout and EMA on.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import CheckpointError, verify_checkpoint
from redheart.core.faults import Faults
from redheart.core.rundir import RunDir
from redheart.train.recipe import train
from redheart.train.state.resume import read_resume_info

from tiny_run import start_driver as run_driver
from tiny_run import tiny_config

LR, EPOCHS = 3e-3, 2

DRIVER = """
import json, sys, time
from pathlib import Path
from redheart.core.faults import Faults
from redheart.core.rundir import RunDir
from redheart.train.recipe import train
from tiny_run import tiny_config

args = json.loads(sys.argv[1])
saves = 0

def on_write(path):
    global saves
    if args["write_sleep"]:
        print("writing", path, flush=True)
        time.sleep(args["write_sleep"])
    if path.name == args["hold_in"]:
        saves += 1
        if saves == args["hold_at"]:
            print("holding", path, flush=True)
            time.sleep(60)
    if path.name == "state.json":
        print("saved", saves, flush=True)

def on_step(stage, size):
    if stage == "forward":
        print("step", flush=True)
        time.sleep(args["step_sleep"])

out = args["out"]
train(RunDir(args["data"]), tiny_config(), lr=args["lr"], epochs=args["epochs"],
      output=None if out is None else RunDir(out), progress=False, resume_every=args["every"],
      faults=Faults(step=on_step, write=on_write))
print("finished", flush=True)
"""


def start_driver(
    data: Path,
    out: Path | None,
    every: int = 1,
    hold_in: str = "state.json",
    hold_at: int = 0,
    step_sleep: float = 0.0,
    write_sleep: float = 0.0,
) -> subprocess.Popen:
    """A training subprocess on `data` (outputs in `out`, or in `data` itself when None)."""
    args = {
        "data": str(data),
        "out": None if out is None else str(out),
        "lr": LR,
        "epochs": EPOCHS,
        "every": every,
        "hold_in": hold_in,
        "hold_at": hold_at,
        "step_sleep": step_sleep,
        "write_sleep": write_sleep,
    }
    return run_driver(DRIVER, args)


def wait_for(process: subprocess.Popen, prefix: str, count: int = 1) -> None:
    """Read the driver's stdout until `count` lines start with `prefix`."""
    seen = 0
    for line in process.stdout:
        if line.startswith(prefix):
            seen += 1
            if seen == count:
                return
    raise AssertionError(f"the driver ended before {count} x {prefix!r}: {process.wait()} {process.stderr.read()}")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def live_state(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    slot = folder / "resume" / read_json(folder / "resume" / "current.json")["slot"]
    return {name: load_file(str(slot / f"{name}.safetensors")) for name in ("model", "ema")}


def assert_identical(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


MICRO_BATCH, TRAIN_SAMPLES = 8, 24  # the tiny preset's micro-batch; 60 % of the shared 40 records


def counted_samples() -> tuple[Faults, list[int]]:
    """Faults that record the size of every micro-batch a training call runs forward."""
    sizes: list[int] = []
    return Faults(step=lambda stage, size: sizes.append(size) if stage == "forward" else None), sizes


def resume_counted(data, folder: Path) -> tuple[int, int]:
    """Resume training in `folder`; (samples it ran forward, metrics.jsonl lines before it)."""
    before = len((folder / "metrics.jsonl").read_text().splitlines()) if (folder / "metrics.jsonl").exists() else 0
    faults, sizes = counted_samples()
    train(data, tiny_config(), lr=LR, epochs=EPOCHS, output=RunDir(folder), progress=False, faults=faults)
    return sum(sizes), before


def assert_resumed_not_restarted(folder: Path, info: dict, samples_run: int, lines_before: int) -> None:
    """The resumed call ran exactly the samples after the saved position and logged only the epochs left.

    A restart from scratch would also end bit-identical (training is deterministic); it would run all
    EPOCHS x TRAIN_SAMPLES samples and log the finished epochs a second time."""
    assert samples_run == EPOCHS * TRAIN_SAMPLES - (info["epoch"] * TRAIN_SAMPLES + info["sample"])
    assert samples_run < EPOCHS * TRAIN_SAMPLES
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines_before == info["epoch"] and epochs == list(range(1, EPOCHS + 1))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: its final weights and EMA weights."""
    out = tmp_path_factory.mktemp("reference")
    faults, sizes = counted_samples()
    train(data, tiny_config(), lr=LR, epochs=EPOCHS, output=RunDir(out), progress=False, faults=faults)
    assert sum(sizes) == EPOCHS * TRAIN_SAMPLES and max(sizes) == MICRO_BATCH  # what the counting counts
    return live_state(out)


@pytest.mark.parametrize("saves", [1, 5])
def test_sigkill_during_a_save_then_resume_is_bit_identical(data, reference, tmp_path, saves):
    # Save 1 is after micro-step 1 of epoch 1 (half a window); save 5 after micro-step 1 of epoch 2.
    process = start_driver(data.root, tmp_path, hold_at=saves + 1)
    wait_for(process, "holding")
    kill(process)
    info = read_resume_info(tmp_path / "resume")
    assert (info["epoch"], info["sample"]) == ((0, 8) if saves == 1 else (1, 8))
    assert info["batch_plan"]["micro_batch"] == 8 and read_json(tmp_path / "resume" / "current.json")
    samples_run, lines_before = resume_counted(data, tmp_path)
    assert_resumed_not_restarted(tmp_path, info, samples_run, lines_before)
    assert_identical(reference, live_state(tmp_path))


def test_sigkill_at_an_arbitrary_moment_then_resume_is_bit_identical(data, reference, tmp_path):
    process = start_driver(data.root, tmp_path)
    wait_for(process, "saved", count=3)  # the kill lands wherever the next micro-step happens to be
    kill(process)
    info = read_resume_info(tmp_path / "resume")
    assert info["sequence"] >= 2  # "saved" is printed just before the rename
    samples_run, lines_before = resume_counted(data, tmp_path)
    assert_resumed_not_restarted(tmp_path, info, samples_run, lines_before)
    assert_identical(reference, live_state(tmp_path))


def test_sigkill_during_a_checkpoint_save_keeps_the_previous_checkpoint(data, reference, tmp_path):
    # The group files of a checkpoint: hold inside the second checkpoint's (epoch 2) group_a file.
    process = start_driver(data.root, tmp_path, every=0, hold_in="group_a.safetensors", hold_at=2)
    wait_for(process, "holding")
    kill(process)
    assert verify_checkpoint(tmp_path / "checkpoints" / "epoch_001")["preset"] == "tiny"
    with pytest.raises(CheckpointError, match="epoch_002: no manifest.json; the checkpoint is incomplete"):
        verify_checkpoint(tmp_path / "checkpoints" / "epoch_002")
    train(data, tiny_config(), lr=LR, epochs=EPOCHS, output=RunDir(tmp_path), progress=False)
    verify_checkpoint(tmp_path / "checkpoints" / "epoch_002")
    assert_identical(reference, live_state(tmp_path))

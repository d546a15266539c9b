"""Two processes on gloo (CPU) train exactly what one process trains with the same effective batch.

The tiny preset with micro-batch 4 x accumulation 5 on the 24 training samples: the first window (20
samples) is dealt 3 + 2 micro-batches to the two ranks, the short last window (4 samples) 1 + 0, so a
rank with nothing to do still takes part. Dropout and R-Drop are off (model.dropout=0,
train.rdrop_alpha=0): each process draws its own dropout masks, so with them on the runs differ by
design; without them the loss depends only on the data and the weights, and the runs agree up to the
order of floating-point additions.

Checkpoints are compared by what they compute (predictions on validation), not weight by weight: these
texts are one segment each, so the attention's query and key weights (and its key bias, always) get no
gradient in exact arithmetic, and AdamW turns the rounding noise they do get into full-size steps that
depend on the order of additions and change no output.

With train.distributed=fsdp each rank holds half of every weight (redheart/train/parallel/fsdp.py); the
training, and what is saved, is the same.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from redheart.config import PRESETS, RunConfig, load_config
from redheart.core.faults import Faults
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split
from redheart.model.model import RedHeartModel
from redheart.train.evaluation import predict
from redheart.train.memory.plan import resolve_strategy
from redheart.train.parallel.distributed import join_job
from redheart.train.parallel.fsdp import uses_fsdp
from redheart.train.recipe import train
from redheart.train.state.checkpoints import load_checkpoint
from redheart.train.state.resume import read_resume_info
from redheart.train.telemetry.records import read_metrics

from tiny_run import tiny_config

LR, EPOCHS = 3e-3, 2
OVERRIDES = {"model.dropout": 0.0, "train.rdrop_alpha": 0.0, "train.micro_batch": 4, "train.accumulation": 5}
CONFIG = tiny_config(**OVERRIDES)
# Two processes sum each window's gradient in another order (all-reduce): gradients agree to ~k * 2^-24. Weights
# whose gradient is zero in exact arithmetic (above) change no output; the others stay within
# tiny_run.assert_same_weights' bound, which moves losses and predictions by far less than 1e-5 (~170 ulps) of
# their size, while one sample more or less in a window moves them by ~1e-3 and more. atol 1e-6 for values near 0.
RTOL = 1e-5


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> RunDir:
    """The one-process run."""
    out = tmp_path_factory.mktemp("one_process")
    train(data, CONFIG, lr=LR, epochs=EPOCHS, output=RunDir(out), progress=False)
    return RunDir(out)


def torchrun_train(run: Path, epochs: int) -> None:
    """`torchrun --standalone --nproc_per_node 2 -m redheart -- train --run RUN ...`, as a user types it.

    The `--` keeps torchrun from reading `--run` as an abbreviation of its own `--run-path`.
    """
    settings = {**OVERRIDES, "train.device": "cpu", "train.checkpoint_every": 1, "train.epochs": epochs}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "redheart",
        "--",
        "train",
        "--run",
        str(run),
        "--preset",
        "tiny",
        "--lr",
        str(LR),
        *[f"--set={key}={value}" for key, value in settings.items()],
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def train_in_two_processes(data: RunDir, out: Path, config: RunConfig = CONFIG, epochs: int = EPOCHS) -> None:
    """Two ranks forked from this process (no second start-up), each joining the group as torchrun's workers do."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.start_processes(
        _rank, args=(data.root, out, port, config, epochs), nprocs=2, start_method="fork"
    )


def _rank(rank: int, data_root: Path, out: Path, port: int, config: RunConfig, epochs: int) -> None:
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    with join_job("cpu") as distributed:
        train(
            RunDir(data_root), config, lr=LR, epochs=epochs, output=RunDir(out), progress=False, distributed=distributed
        )


def assert_same_training(out: RunDir, reference: RunDir, data: RunDir) -> None:
    """Every epoch record's losses and gradient norms, and every checkpoint's predictions, as in `reference`."""
    rows, expected = read_metrics(out.metrics_log), read_metrics(reference.metrics_log)
    assert [row["epoch"] for row in rows] == [row["epoch"] for row in expected]
    for row, want in zip(rows, expected):
        assert row["train_loss"] == pytest.approx(want["train_loss"], rel=RTOL)
        assert row["val"]["loss"] == pytest.approx(want["val"]["loss"], rel=RTOL)
        assert row["grad_norm"] == pytest.approx(want["grad_norm"], rel=RTOL)
    val = load_split(data, "val")
    model = RedHeartModel(CONFIG.model, input_dim=val.input_dim, max_segments=val.max_segments)

    def predictions(folder: Path) -> dict[str, dict[str, np.ndarray]]:
        load_checkpoint(model, folder)
        return predict(model, val)

    for folder in [*(f"epoch_{row['epoch']:03d}" for row in expected), "ema"]:
        got, want = predictions(out.checkpoints / folder), predictions(reference.checkpoints / folder)
        for module, targets in want.items():
            for target, values in targets.items():
                np.testing.assert_allclose(
                    got[module][target], values, rtol=RTOL, atol=1e-6, err_msg=f"{folder} {module} {target}"
                )


def test_torchrun_two_processes_match_one_and_one_process_resumes_their_state(data, reference, tmp_path):
    run = RunDir(shutil.copytree(data.root, tmp_path / "run"))
    torchrun_train(run.root, epochs=1)
    assert load_config(run.config) == tiny_config(**OVERRIDES, **{"train.epochs": 1})  # the reference's recipe
    assert [row["epoch"] for row in read_metrics(run.metrics_log)] == [1]
    assert read_resume_info(run.resume)["epoch"] == 1
    train(run, CONFIG, lr=LR, epochs=EPOCHS, progress=False)  # the second epoch in one process
    assert_same_training(run, reference, data)


class Stop(Exception):
    """Raised inside a micro-step to leave a one-process run part-way through a window."""


def stop_at_forward(count: int) -> Faults:
    seen = []

    def step(stage: str, size: int) -> None:
        seen.extend([stage] if stage == "forward" else [])
        if len(seen) == count:
            raise Stop

    return Faults(step=step)


def test_a_window_begun_by_one_process_is_finished_by_two(data, reference, tmp_path):
    with pytest.raises(Stop):  # the state is saved after every micro-step; the third one never ends
        train(
            data,
            CONFIG,
            lr=LR,
            epochs=EPOCHS,
            output=RunDir(tmp_path),
            progress=False,
            resume_every=1,
            faults=stop_at_forward(3),
        )
    info = read_resume_info(tmp_path / "resume")
    assert (info["epoch"], info["sample"]) == (0, 8)  # 2 of the window's 5 micro-batches, their gradients saved
    train_in_two_processes(data, tmp_path)
    assert_same_training(RunDir(tmp_path), reference, data)


FSDP = tiny_config(**OVERRIDES, **{"train.distributed": "fsdp"})


def test_fsdp_two_processes_match_one_and_one_process_resumes_their_state(data, reference, tmp_path):
    """Each rank holds half of every weight; what is saved is whole, so one process takes over."""
    train_in_two_processes(data, tmp_path, FSDP, epochs=1)
    assert read_resume_info(tmp_path / "resume")["epoch"] == 1
    train(
        data, CONFIG, lr=LR, epochs=EPOCHS, output=RunDir(tmp_path), progress=False
    )  # the second epoch in one process
    assert_same_training(RunDir(tmp_path), reference, data)


def test_fsdp_finishes_a_window_begun_by_one_process(data, reference, tmp_path):
    """The saved gradients of 2 of the window's 5 micro-batches are split between the ranks' shards."""
    with pytest.raises(Stop):
        train(
            data,
            CONFIG,
            lr=LR,
            epochs=EPOCHS,
            output=RunDir(tmp_path),
            progress=False,
            resume_every=1,
            faults=stop_at_forward(3),
        )
    train_in_two_processes(data, tmp_path, FSDP)
    assert_same_training(RunDir(tmp_path), reference, data)


def test_fsdp_is_the_full_presets_choice_and_trains_with_the_standard_memory_strategy_only():
    assert uses_fsdp(PRESETS["full"], world_size=2) and not uses_fsdp(PRESETS["full"], world_size=1)
    assert uses_fsdp(FSDP, world_size=2) and not uses_fsdp(CONFIG, world_size=2)
    model = RedHeartModel(CONFIG.model, input_dim=32, max_segments=4)
    assert resolve_strategy(model, FSDP, torch.device("cpu"), sharded=True).name == "standard"
    with pytest.raises(ValueError, match="'saving' cannot be combined with FSDP"):
        resolve_strategy(model, tiny_config(**{"train.memory": "saving"}), torch.device("cpu"), sharded=True)


def test_an_explicit_gpu_index_under_torchrun_is_refused():
    # Checked before any CUDA call or process group, so this needs neither a GPU nor other processes.
    environ = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    refused = pytest.raises(ValueError, match=r"train.device is 'cuda:1' .* 2 processes.*set train.device=cuda")
    with refused, join_job("cuda:1", environ):
        pass


def test_fsdp_reduce_scatters_the_gradients_once_per_window():
    """Two windows of 5 micro-batches: each rank runs 3 micro-steps a window (one of weight 0 on rank 1), and only
    the third backward of each window sends gradients; the others accumulate them locally (FSDP2's no_sync)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from fsdp_comm import measure

    for rank in measure("tiny", micro_batch=4, accumulation=5, windows=2, mode="once-per-window fp32"):
        assert rank["micro_steps"] == 6
        assert rank["reduce_scatter_steps"] == [3, 6]

"""Out-of-memory recovery with an injected torch.OutOfMemoryError (CPU): same samples, same effective
batch, same weights (within float tolerance: smaller micro-batches sum the same gradient in another order).

Dropout is off so that the faulted and the reference run draw no different random numbers.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from redheart.core.atomic import read_json
from redheart.core.faults import Faults
from redheart.core.rundir import RunDir
from redheart.train.oom import BatchPlan, OutOfMemory
from redheart.train.recipe import train
from redheart.train.state.resume import read_resume_info
from redheart.train.telemetry.records import read_metrics

from tiny_run import assert_same_weights, tiny_config

LR = 3e-3
CONFIG = {"model.dropout": 0.0}


class InjectedOOM:
    """Raises torch.OutOfMemoryError at "backward" when `fails(size, call)` says so; records every size."""

    def __init__(self, fails):
        self.fails, self.calls, self.sizes = fails, 0, []

    def __call__(self, stage: str, size: int) -> None:
        if stage != "backward":
            return
        self.calls += 1
        self.sizes.append(size)
        if self.fails(size, self.calls):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")


def weights(out) -> dict[str, torch.Tensor]:
    slot = read_json(out / "resume" / "current.json")["slot"]
    return load_file(str(out / "resume" / slot / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    # Two epochs of 24 samples in windows of 16 and 8: four AdamW steps (tiny_run.assert_same_weights' bound).
    assert_same_weights(a, b, LR, steps=4)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(data, tiny_config(**CONFIG), lr=LR, epochs=2, output=RunDir(out), progress=False)
    return out


def test_oom_mid_window_halves_the_micro_batch_and_redoes_the_window(data, reference, tmp_path):
    # Call 2 is the second micro-step of the first window: one micro-batch is already in the gradients.
    oom = InjectedOOM(lambda size, call: call == 2)
    train(
        data, tiny_config(**CONFIG), lr=LR, epochs=1, output=RunDir(tmp_path), progress=False, faults=Faults(step=oom)
    )
    # 24 samples in windows of 16 and 8: 8 (kept, then dropped with the window), 8 (fails), then 4 x 4 and 2 x 4.
    assert oom.sizes == [8, 8, 4, 4, 4, 4, 4, 4]
    info = read_resume_info(tmp_path / "resume")
    plan = BatchPlan.from_json(info["batch_plan"])
    assert (plan.micro_batch, plan.accumulation, plan.window) == (4, 4, 16)  # the effective batch is unchanged
    assert plan.events == [{"epoch": 0, "sample": 0, "micro_batch": 4, "accumulation": 4, "memory_saving": False}]
    # The redone window is counted once: the epoch's mean loss is the reference's.
    first_epoch, reference_first = (
        read_metrics(tmp_path / "metrics.jsonl")[0],
        read_metrics(reference / "metrics.jsonl")[0],
    )
    # The same per-sample losses averaged in another order, then after a step whose weights differ by rounding
    # (assert_same_weights): rel 1e-5 is about 170 fp32 unit roundoffs (2^-24), several times the gamma_24 ~ 24 u of
    # reordering a sum over the epoch's 24 samples; a sample counted twice or dropped moves it by ~1/24.
    assert first_epoch["train_loss"]["total"] == pytest.approx(reference_first["train_loss"]["total"], rel=1e-5)

    # The resumed run keeps micro-batch 4; the weights after two epochs match the run that never failed.
    sizes = InjectedOOM(lambda size, call: False)
    train(
        data, tiny_config(**CONFIG), lr=LR, epochs=2, output=RunDir(tmp_path), progress=False, faults=Faults(step=sizes)
    )
    assert sizes.sizes == [4] * 6
    assert_close(weights(reference), weights(tmp_path))


def test_micro_batch_one_switches_to_memory_saving_mode(data, reference, tmp_path):
    # Only one sample fits, and only with activation checkpointing: the first size-1 step fails too.
    oom = InjectedOOM(lambda size, call: size > 1 or call == 5)
    train(
        data, tiny_config(**CONFIG), lr=LR, epochs=2, output=RunDir(tmp_path), progress=False, faults=Faults(step=oom)
    )
    plan = read_resume_info(tmp_path / "resume")["batch_plan"]
    assert (plan["micro_batch"], plan["memory_saving"]) == (1, True)
    assert [event["micro_batch"] for event in plan["events"]] == [4, 2, 1, 1]
    assert oom.sizes[:5] == [8, 4, 2, 1, 1] and set(oom.sizes[5:]) == {1} and len(oom.sizes[5:]) == 48
    assert_close(weights(reference), weights(tmp_path))


def test_oom_in_memory_saving_mode_at_micro_batch_one_fails_clearly(data, tmp_path):
    oom = InjectedOOM(lambda size, call: True)
    with pytest.raises(OutOfMemory, match="out of memory at micro-batch 1 even in memory-saving mode"):
        train(
            data,
            tiny_config(**CONFIG),
            lr=LR,
            epochs=1,
            output=RunDir(tmp_path),
            progress=False,
            faults=Faults(step=oom),
        )
    assert oom.sizes == [8, 4, 2, 1, 1]


def test_oom_in_the_first_optimizer_step_stops_with_the_clear_error(data, tmp_path, monkeypatch):
    # The first step allocates AdamW's moments, the largest single allocation of a run; a smaller micro-batch
    # would not free any memory there.
    def no_room(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(torch.optim.AdamW, "step", no_room)
    with pytest.raises(OutOfMemory, match=r"optimizer step .* at \{'epoch': 0, 'sample': 0\}.*train.memory=saving"):
        train(data, tiny_config(**CONFIG), lr=LR, epochs=1, output=RunDir(tmp_path), progress=False)


def test_oom_in_validation_halves_its_batch(data, reference, tmp_path, monkeypatch):
    import redheart.train.recipe as recipe

    sizes = []

    def only_small(real):
        def run(model, split, batch_size=256, **kwargs):  # 256: both functions' default
            sizes.append(batch_size)
            if batch_size > 64:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return real(model, split, batch_size, **kwargs)

        return run

    monkeypatch.setattr(recipe, "evaluate", only_small(recipe.evaluate))
    monkeypatch.setattr(recipe, "predict", only_small(recipe.predict))
    train(data, tiny_config(**CONFIG), lr=LR, epochs=1, output=RunDir(tmp_path), progress=False)
    assert sizes == [256, 128, 64] * 2  # the weights' validation, then the EMA's
    # The 8 validation records fit in one batch of any of these sizes: the very same numbers as the reference's.
    (record,), expected = read_metrics(tmp_path / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")[0]
    assert record["val"] == expected["val"] and record["ema_headline"] == expected["ema_headline"]

    def never_fits(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(recipe, "evaluate", never_fits)
    with pytest.raises(OutOfMemory, match="validation of epoch 2 at batch size 1"):
        train(data, tiny_config(**CONFIG), lr=LR, epochs=2, output=RunDir(tmp_path), progress=False)

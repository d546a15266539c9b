"""The memory-saving strategy in training: checkpointing changes no gradient; 8-bit AdamW runs, resumes, and
is part of the run's identity."""

import pytest
import torch
from test_train_recipe import live_weights

from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split
from redheart.model.model import RedHeartModel
from redheart.train.recipe import train
from redheart.train.state.resume import ResumeError
from redheart.train.telemetry.records import read_metrics
from redheart.train.trainer import forward_losses

from tiny_run import assert_same_weights, tiny_config

SAVING = {"train.memory": "saving"}


def gradients(data, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one micro-batch with R-Drop and dropout on."""
    config = tiny_config()
    torch.manual_seed(0)
    split = load_split(data, "train")
    model = RedHeartModel(config.model, split.input_dim, split.max_segments)
    model.activation_checkpointing = checkpointing
    torch.manual_seed(1)  # the same dropout draws for both runs
    total, _ = forward_losses(model, split.batch(torch.arange(8)), config.train)
    total.backward()
    return total.detach(), {name: p.grad for name, p in model.named_parameters()}


def test_per_module_checkpointing_gives_the_same_loss_and_gradients(data, monkeypatch):
    import redheart.model.model as model_file

    calls = []
    real = model_file.checkpoint

    def counted(module, *args, **kwargs):
        calls.append(module)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(model_file, "checkpoint", counted)
    loss, plain = gradients(data, checkpointing=False)
    assert not calls
    loss_ckpt, checkpointed = gradients(data, checkpointing=True)
    assert len(calls) == 18  # every top-level module but the fusion; R-Drop is one concatenated forward
    assert torch.equal(loss, loss_ckpt)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def saving_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("saving")
    return train(data, tiny_config(**SAVING), lr=3e-3, epochs=2, output=RunDir(out), progress=False)


def test_saving_strategy_trains_and_learns(saving_run):
    rows = read_metrics(saving_run.output.metrics_log)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["train_loss"]["total"] < rows[0]["train_loss"]["total"]
    assert sum(rows[1]["val"]["loss"].values()) < sum(rows[0]["val"]["loss"].values())


def test_saving_strategy_resumes_its_8bit_state_exactly(data, saving_run, tmp_path):
    train(data, tiny_config(**SAVING), lr=3e-3, epochs=1, output=RunDir(tmp_path), progress=False)
    resumed = train(data, tiny_config(**SAVING), lr=3e-3, epochs=2, output=RunDir(tmp_path), progress=False)
    reference, continued = live_weights(saving_run), live_weights(resumed)
    for key in reference:
        assert torch.equal(reference[key], continued[key]), key


def test_the_strategy_trains_with_bitsandbytes_adamw8bit(saving_run):
    slot = read_json(saving_run.output.resume / "current.json")["slot"]
    training = torch.load(saving_run.output.resume / slot / "training.pt", weights_only=True)
    states = training["optimizer"]["state"].values()
    # bitsandbytes' own state layout (the tiny model's tensors are all under its 4,096-value 8-bit threshold,
    # so their moments stay fp32; test_memory_plan checks the 8-bit bytes on the small preset).
    assert states and all("__bnb_optimizer_quant_state__" in state for state in states)


def test_resuming_with_another_strategy_is_refused(data, saving_run):
    with pytest.raises(ResumeError, match="memory"):
        train(
            data,
            tiny_config(**{"train.memory": "standard"}),
            lr=3e-3,
            epochs=3,
            output=saving_run.output,
            progress=False,
        )


def test_swap_strategy_trains_like_the_standard_one(data, tmp_path):
    """Without dropout (whose draws come in another order when groups run one at a time) the runs agree."""
    no_dropout = {"model.dropout": 0.0}
    runs = {
        name: train(
            data,
            tiny_config(**no_dropout, **{"train.memory": name}),
            lr=3e-3,
            epochs=1,
            output=RunDir(tmp_path / name),
            progress=False,
            save_checkpoints=False,
        )
        for name in ("standard", "swap")
    }
    standard, swap = live_weights(runs["standard"]), live_weights(runs["swap"])
    # Gradients are summed in another order (one group's losses at a time): one epoch of 24 samples in windows of 16
    # and 8 is two AdamW steps (tiny_run.assert_same_weights' bound).
    assert_same_weights(swap, standard, 3e-3, steps=2)
    # rel 1e-5: about 170 fp32 unit roundoffs, several times the gamma_24 ~ 24 u of reordering the epoch's sums.
    assert runs["swap"].final["train_loss"]["total"] == pytest.approx(
        runs["standard"].final["train_loss"]["total"], rel=1e-5
    )


# A larger tiny backbone: its qkv and feed-forward matrices (4,800 and 6,400 values) pass bitsandbytes'
# 4,096-value threshold, so their AdamW moments are held in 8 bits; every other tensor stays fp32.
BIG_BACKBONE = {**SAVING, "model.budgets.backbone": 40_000}


def optimizer_state(output) -> list[dict]:
    slot = read_json(output.resume / "current.json")["slot"]
    states = torch.load(output.resume / slot / "training.pt", weights_only=True)["optimizer"]["state"].values()
    return [state["__bnb_optimizer_quant_state__"] for state in states]  # bitsandbytes' layout of its moments


def test_real_8bit_moments_train_and_resume_exactly(data, tmp_path):
    config = tiny_config(**BIG_BACKBONE)
    whole = train(data, config, lr=3e-3, epochs=2, output=RunDir(tmp_path / "whole"), progress=False)
    split = load_split(data, "train")
    model = RedHeartModel(config.model, split.input_dim, split.max_segments)
    large = sorted(p.numel() for p in model.parameters() if p.numel() >= 4096)
    assert large == [4800, 4800, 6400, 6400, 6400, 6400]
    states = optimizer_state(whole.output)
    quantized = sorted(s["state1"].numel() for s in states if s["state1"].dtype == torch.uint8)
    assert quantized == large  # exactly the large tensors hold 8-bit first and second moments
    assert all(s["state2"].dtype == torch.uint8 and "absmax1" in s for s in states if s["state1"].dtype == torch.uint8)
    assert all(s["state1"].dtype == torch.float32 for s in states if s["state1"].numel() < 4096)
    first, second = read_metrics(whole.output.metrics_log)
    assert second["train_loss"]["total"] < first["train_loss"]["total"]

    train(data, config, lr=3e-3, epochs=1, output=RunDir(tmp_path / "resumed"), progress=False)
    resumed = train(data, config, lr=3e-3, epochs=2, output=RunDir(tmp_path / "resumed"), progress=False)
    reference, continued = live_weights(whole), live_weights(resumed)
    for key in reference:
        assert torch.equal(reference[key], continued[key]), key
    for a, b in zip(states, optimizer_state(resumed.output)):
        assert torch.equal(a["state1"], b["state1"]) and torch.equal(a["state2"], b["state2"])

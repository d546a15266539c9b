import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from redheart.architecture import module_names
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import verify_checkpoint
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split
from redheart.model.model import RedHeartModel
from redheart.train.optim import build_optimizer
from redheart.train.precision import choose_precision
from redheart.train.recipe import train
from redheart.train.schedule import build_scheduler
from redheart.train.telemetry import module_statistics as module_stats_module
from redheart.train.telemetry.module_statistics import GradientProbe, module_stats
from redheart.train.telemetry.progress import progress_report
from redheart.train.telemetry.records import read_metrics
from redheart.train.trainer import Trainer

from tiny_run import make_run, tiny_config


class Toy(nn.Module):
    """Three modules under real names, so they fall into groups: backbone -> group_a, dsp and kalman -> group_c."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.dsp = nn.Linear(1, 2, bias=False)
        self.kalman = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            self.backbone.bias.copy_(torch.tensor([0.0, 5e-7]))
            self.dsp.weight.copy_(torch.tensor([[-2.0], [2.0]]))
            self.kalman.weight.fill_(0.5)


def approx(expected: dict) -> dict:
    # Statistics of a handful of fp32 values of size <= 5: fp32 rounding (2^-24 relative) is under 1e-6 absolute.
    return {key: pytest.approx(value, abs=1e-6) for key, value in expected.items()}


def test_parameter_statistics_match_a_hand_computation():
    stats = module_stats(Toy(), epoch=3)
    # backbone holds 1, 2, 3, 4, 0, 5e-7: sum 10, sum of squares 30, two values below 1e-6.
    backbone = {
        "count": 6,
        "mean": 10 / 6,
        "std": math.sqrt(30 / 6 - (10 / 6) ** 2),
        "norm": math.sqrt(30),
        "max": 4.0,
        "min": 0.0,
        "near_zero_fraction": 2 / 6,
    }
    assert stats["modules"]["backbone"]["parameters"] == approx(backbone)
    assert stats["groups"]["group_a"]["parameters"] == approx(backbone)
    # group_c pools dsp (-2, 2) and kalman (0.5): sum 0.5, sum of squares 8.25.
    group_c = {
        "count": 3,
        "mean": 0.5 / 3,
        "std": math.sqrt(8.25 / 3 - (0.5 / 3) ** 2),
        "norm": math.sqrt(8.25),
        "max": 2.0,
        "min": -2.0,
        "near_zero_fraction": 0.0,
    }
    assert stats["groups"]["group_c"]["parameters"] == approx(group_c)
    assert stats["modules"]["dsp"]["group"] == "group_c" and stats["modules"]["kalman"]["parameters"]["mean"] == 0.5
    assert (
        stats["epoch"] == 3
        and stats["gradients_captured"] is False
        and stats["modules"]["backbone"]["gradients"] is None
    )


def test_gradient_statistics_of_a_known_gradient():
    model = Toy()
    model.backbone.weight.grad = torch.tensor([[0.5, -0.5], [1.0, -1.0]])
    model.backbone.bias.grad = torch.tensor([0.0, 2.0])
    model.kalman.weight.grad = torch.tensor([[3.0]])  # dsp has no gradient: it took no part in the step
    probe = GradientProbe()
    probe(model)
    stats = module_stats(model, epoch=1, gradients=probe)
    # 0.5, -0.5, 1, -1, 0, 2: sum 2, sum of squares 6.5.
    expected = {
        "count": 6,
        "mean": 2 / 6,
        "std": math.sqrt(6.5 / 6 - (2 / 6) ** 2),
        "norm": math.sqrt(6.5),
        "max": 2.0,
        "min": -1.0,
        "near_zero_fraction": 1 / 6,
    }
    assert stats["gradients_captured"] is True
    assert stats["modules"]["backbone"]["gradients"] == approx(expected)
    assert stats["modules"]["dsp"]["gradients"] is None
    assert stats["groups"]["group_c"]["gradients"] == approx(
        {"count": 1, "mean": 3.0, "std": 0.0, "norm": 3.0, "max": 3.0, "min": 3.0, "near_zero_fraction": 0.0}
    )
    assert module_stats(model, epoch=2, gradients=probe)["gradients_captured"] is False  # a capture is used once


def test_statistics_do_not_depend_on_how_a_module_is_chunked(monkeypatch):
    whole = module_stats(Toy(), epoch=1)
    monkeypatch.setattr(module_stats_module, "CHUNK", 2)  # backbone's weight and bias are then reduced apart
    assert module_stats(Toy(), epoch=1)["modules"]["backbone"] == {
        **whole["modules"]["backbone"],
        "parameters": approx(whole["modules"]["backbone"]["parameters"]),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), n=30)


def test_the_probe_sees_only_the_last_optimizer_step_of_an_epoch(data):
    config = tiny_config().train
    split = load_split(data, "train")
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, split.input_dim, split.max_segments)
    optimizer = build_optimizer(model, 1e-3, config)
    trainer = Trainer(
        model,
        optimizer,
        build_scheduler(optimizer, config, 10),
        None,
        choose_precision(torch.device("cpu"), False),
        config,
    )
    seen = []
    trainer.grad_probe = lambda m: seen.append(sum(p.grad.abs().sum() for p in m.parameters() if p.grad is not None))
    tally = trainer.run_epoch(split, epoch=0, seed=0)
    assert len(tally.grad_norms) > 1 and len(seen) == 1 and seen[0] > 0


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory):
    config = tiny_config(**{"train.checkpoint_every": 2})
    return train(data, config, lr=3e-3, epochs=4, output=RunDir(tmp_path_factory.mktemp("out")), progress=False)


def test_a_tiny_run_seals_module_stats_into_every_checkpoint(tiny_run):
    out = tiny_run.output
    assert sorted(p.name for p in out.checkpoints.iterdir() if p.name.startswith("epoch")) == ["epoch_002", "epoch_004"]
    for epoch in (2, 4):
        assert "module_stats.json" in verify_checkpoint(out.checkpoint(epoch))["files"]
        stats = read_json(out.checkpoint(epoch) / "module_stats.json")
        assert stats["epoch"] == epoch and stats["gradients_captured"] is True
        assert set(stats["modules"]) == set(module_names())
        for entry in stats["modules"].values():
            assert entry["parameters"]["count"] > 0 and entry["parameters"]["norm"] > 0
            assert entry["gradients"]["max"] >= entry["gradients"]["min"]
    weights_2 = read_json(out.checkpoint(2) / "module_stats.json")["modules"]["backbone"]["parameters"]
    weights_4 = read_json(out.checkpoint(4) / "module_stats.json")["modules"]["backbone"]["parameters"]
    assert weights_2["count"] == weights_4["count"] and weights_2["norm"] != weights_4["norm"]


def test_every_epoch_record_carries_its_telemetry_block(tiny_run):
    rows = read_metrics(tiny_run.output.metrics_log)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        block = row["telemetry"]
        assert block["lr_groups"] and all(rate > 0 for rate in block["lr_groups"].values())
        assert block["gap"]["modules"]["phase2_community"] == pytest.approx(
            row["val"]["loss"]["phase2_community"] - row["train_loss"]["phase2_community"]
        )
        assert set(block["gap"]["groups"]) == set(block["loss_by_group"]["val"])
        assert block["optimizer_steps"] > 0 and block["step_seconds"] > 0 and block["peak_host_memory_bytes"] > 2**20


def test_progress_reports_follow_the_checkpoints(tiny_run):
    folder = tiny_run.output.progress
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_002.json", "epoch_004.json", "latest.json"]
    latest = read_json(folder / "latest.json")
    assert latest == read_json(folder / "epoch_004.json")
    assert latest["checkpoints"] == [2, 4] and latest["best_checkpoint"]["epoch"] in (2, 4)
    assert latest["time"]["estimated_seconds_left"] == 0
    assert read_json(folder / "epoch_002.json")["time"]["estimated_seconds_left"] > 0
    assert set(latest["overfitting"]["groups"]["group_a"]) >= {"slope_per_epoch", "widened_3_in_a_row"}


def test_tensorboard_holds_per_module_scalars(tiny_run):
    events = EventAccumulator(str(tiny_run.output.tensorboard))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "module_parameters/backbone/norm",
        "module_gradients/neural_regret/std",
        "group_parameters/group_b/mean",
        "gap_groups/group_a",
        "overfit_gap_slope/group_a",
        "step_seconds",
    } <= tags
    assert [event.step for event in events.Scalars("module_parameters/backbone/norm")] == [2, 4]


def epoch_row(epoch: int, train: dict, val: dict, seconds: float = 10.0) -> dict:
    return {"epoch": epoch, "train_loss": train, "val": {"loss": val}, "seconds": seconds}


def test_the_report_flags_a_gap_that_widened_three_times_running():
    # The emotion head's validation loss climbs while its training loss holds; the bentham analyzer stays put.
    val_head = [1.0, 1.1, 1.3, 1.6, 2.0]
    rows = [
        epoch_row(2 * (i + 1), {"emotion_head": 1.0, "neural_bentham": 0.5}, {"emotion_head": v, "neural_bentham": 0.6})
        for i, v in enumerate(val_head)
    ]
    report = progress_report(rows, checkpoints=[2, 4, 6, 8, 10], epochs_total=20)
    group_a, group_b = report["overfitting"]["groups"]["group_a"], report["overfitting"]["groups"]["group_b"]
    assert group_a["gaps"] == pytest.approx([0.0, 0.1, 0.3, 0.6, 1.0]) and group_a["widened_3_in_a_row"] is True
    assert group_a["slope_per_epoch"] == pytest.approx(0.125)  # least squares over epochs 2..10
    assert group_b["slope_per_epoch"] == pytest.approx(0.0) and group_b["widened_3_in_a_row"] is False
    assert report["best_checkpoint"]["epoch"] == 2 and report["best_by_group"]["group_b"]["epoch"] == 2
    assert report["time"]["estimated_seconds_left"] == pytest.approx(10 * 10.0)
    assert report["fraction_done"] == 0.5

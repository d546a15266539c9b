import pytest
import torch
from safetensors.torch import load_file

from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.train.recipe import resolve_lr, train
from redheart.train.state.resume import ResumeError, read_resume_info
from redheart.train.telemetry.records import read_metrics

from tiny_run import tiny_config


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two epochs in one go: the reference for the other tests."""
    out = tmp_path_factory.mktemp("straight")
    return train(data, tiny_config(), lr=3e-3, epochs=2, output=RunDir(out), progress=False)


def live_weights(result) -> dict[str, torch.Tensor]:
    slot = read_json(result.output.resume / "current.json")["slot"]
    return load_file(str(result.output.resume / slot / "model.safetensors"))


def test_two_epochs_write_every_artifact_and_learn(data, straight):
    out = straight.output
    rows = read_metrics(out.metrics_log)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["train_loss"]["total"] < rows[0]["train_loss"]["total"]
    assert sum(rows[1]["val"]["loss"].values()) < sum(rows[0]["val"]["loss"].values())
    assert set(rows[0]["val"]["headline"]) >= {"emotion_accuracy", "verdict_accuracy"} and "ema_headline" in rows[0]
    for epoch in (1, 2):
        manifest = read_json(out.checkpoint(epoch) / "manifest.json")
        assert "group_a.safetensors" in manifest["files"] and "metrics.json" in manifest["files"]
    assert (out.checkpoints / "ema" / "manifest.json").exists()
    assert read_resume_info(out.resume)["epoch"] == 2 and read_resume_info(out.resume)["micro_step"] == 0
    assert any(out.tensorboard.iterdir())
    assert set(read_json(data.baselines)) == {"class_prior", "mean_predictor", "linear_probe"}
    assert straight.lr_source == "argument" and straight.final["epoch"] == 2


def test_resume_after_epoch_one_matches_the_uninterrupted_run(data, straight, tmp_path):
    first = train(data, tiny_config(), lr=3e-3, epochs=1, output=RunDir(tmp_path), progress=False)
    assert read_resume_info(first.output.resume)["epoch"] == 1
    resumed = train(data, tiny_config(), lr=3e-3, epochs=2, output=RunDir(tmp_path), progress=False)
    reference, continued = live_weights(straight), live_weights(resumed)
    for key in reference:
        assert torch.equal(reference[key], continued[key]), key
    assert [row["epoch"] for row in read_metrics(resumed.output.metrics_log)] == [1, 2]


def test_resume_with_another_config_is_refused(data, straight):
    with pytest.raises(ResumeError, match="config_hash"):
        train(
            data,
            tiny_config(**{"train.weight_decay": 0.5}),
            lr=3e-3,
            epochs=3,
            output=straight.output,
            progress=False,
        )


def test_learning_rate_source_is_recorded(data, tmp_path):
    config = tiny_config()
    assert resolve_lr(data, config, 0.5) == (0.5, "argument")
    assert resolve_lr(data, tiny_config(**{"train.lr": 0.25}), None) == (0.25, "config")
    assert resolve_lr(data, config, None) == (config.train.default_lr, "default")
    (data.sweep).mkdir(exist_ok=True)
    (data.sweep / "choice.json").write_text('{"lr": 0.002}')
    try:
        assert resolve_lr(data, config, None) == (0.002, "sweep")
    finally:
        (data.sweep / "choice.json").unlink()

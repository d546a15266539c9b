"""Phase 4 on a tiny run trained once (6 epochs, a checkpoint each): crossover, its baselines, the final model,
and the one-time test evaluation."""

import json

import pytest
import torch
from safetensors.torch import load_file

import redheart.data.dataset as dataset
from redheart.config import with_overrides
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import CheckpointError
from redheart.data.dataset import load_split
from redheart.evaluate.calibration import fit_calibrators
from redheart.evaluate.decision_rule import fit_decision_rules
from redheart.evaluate.final import evaluate_test, format_results
from redheart.model.groups import GROUPS
from redheart.model.model import RedHeartModel
from redheart.select.crossover import CROSSOVER, ENSEMBLE, REFINED, crossover, format_crossover, variant_name
from redheart.select.final_model import load_final_model
from redheart.select.outputs import SplitOutputs
from redheart.select.pins import pinned_epochs
from redheart.train.recipe import train
from redheart.train.state.checkpoints import load_groups

from tiny_run import make_run, tiny_config

EPOCHS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # One thread: on 2 busy cores the tiny model's small kernels run ~3x faster without a second one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = make_run(tmp_path_factory.mktemp("run"), n=40)
        config = tiny_config(**{"train.epochs": EPOCHS, "train.rdrop_alpha": 0.0, "select.refine_rounds": 1})
        train(run, config, lr=3e-3, progress=False)
        yield run, config
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(trained):
    run, config = trained
    with pytest.MonkeyPatch.context() as patch:
        refuse_test_reads(patch, run)
        return crossover(run, config)


def refuse_test_reads(patch, run):
    """Make any read of a test record fail (the loader of every split goes through _read_records)."""
    test_ids = set(read_json(run.split_manifest)["test"])
    read = dataset._read_records

    def guarded(run_dir, wanted):
        assert not wanted & test_ids, "the test split was read"
        return read(run_dir, wanted)

    patch.setattr(dataset, "_read_records", guarded)


def test_a_model_assembled_from_two_epochs_has_exactly_their_tensors(trained):
    run, config = trained
    val = load_split(run, "val")
    model = RedHeartModel(config.model, input_dim=val.input_dim, max_segments=val.max_segments)
    epochs = {group: 5 for group in GROUPS} | {"group_a": 2}
    load_groups(model, epochs, run)
    state = model.state_dict()
    for group, epoch in epochs.items():
        for key, tensor in load_file(str(run.checkpoint(epoch) / f"{group}.safetensors")).items():
            assert torch.equal(state[key], tensor), (group, key)
    assert not torch.equal(
        load_file(str(run.checkpoint(2) / "group_a.safetensors"))["backbone.input.weight"],
        load_file(str(run.checkpoint(5) / "group_a.safetensors"))["backbone.input.weight"],
    )
    # The cached per-epoch outputs put side by side are the assembled model's outputs (groups are independent).
    cache = SplitOutputs(RedHeartModel(config.model, input_dim=val.input_dim, max_segments=val.max_segments), val)
    side_by_side = cache.of_groups({group: run.checkpoint(epoch) for group, epoch in epochs.items()})
    with torch.no_grad():
        direct = model.eval()(val.tensors["x"], val.tensors["mask"])
    for module, targets in side_by_side.items():
        for target, value in targets.items():
            # One batch against the cache's batches: fp32 rounding only, under assert_close's fp32 defaults
            # (rtol 1.3e-6 ~ 22 ulps, atol 1e-5).
            torch.testing.assert_close(value, direct[module][target].float())


def test_crossover_scores_every_candidate_on_validation_and_writes_them(trained, result):
    run, _ = trained
    names = [c.name for c in result.candidates]
    for expected in (CROSSOVER, REFINED, ENSEMBLE, variant_name(-4), variant_name(4), "EMA weights"):
        assert expected in names
    assert any(n.startswith("best on validation") for n in names) and any(n.startswith("greedy soup") for n in names)
    assert any(n.startswith("average of the last 5") for n in names) and any(
        n.startswith("last checkpoint") for n in names
    )
    by_name = {c.name: c for c in result.candidates}
    assert by_name[CROSSOVER].epochs == result.sweet_spots
    # Shifted variants clamp at the first and last checkpoint.
    for shift in (-4, 4):
        for group, epoch in by_name[variant_name(shift)].epochs.items():
            assert epoch == min(max(result.sweet_spots[group] + shift, 1), EPOCHS)
    assert "beat" in result.conclusion and "validation" in format_crossover(result)
    written = read_json(run.crossover_candidates)
    assert [c["name"] for c in written["candidates"]] == names
    assert (
        set(pinned_epochs(run))
        >= set().union(*(c.used_epochs() for c in result.candidates))
        >= set(result.refined.values())
    )


def test_final_model_round_trips_and_a_corrupted_one_fails_clearly(trained, result, tmp_path):
    run, config = trained
    model, info = load_final_model(run.final_model)
    assert info["info"]["candidate"]["name"] == result.final_model
    assert info["input_dim"] == config.encoder.dim and info["encoder"]["name"] == "hashing"
    chosen = next(c for c in result.candidates if c.name == result.final_model)
    torch.testing.assert_close(model.kalman.log_var["emotions"], chosen.fusion.log_var["emotions"])

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for path in run.final_model.iterdir():
        (corrupt / path.name).write_bytes(path.read_bytes())
    data = bytearray((corrupt / "group_b.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (corrupt / "group_b.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="group_b.safetensors: sha256 does not match"):
        load_final_model(corrupt)
    (corrupt / "group_b.safetensors").write_bytes((run.final_model / "group_b.safetensors").read_bytes())
    # A config that no longer fits the weights, with a manifest re-sealed to match it.
    config_json = read_json(corrupt / "config.json")
    config_json["input_dim"] += 1
    (corrupt / "config.json").write_text(json.dumps(config_json))
    manifest = read_json(corrupt / "manifest.json")
    from redheart.core.checkpoint_files import sha256

    manifest["files"]["config.json"] = sha256(corrupt / "config.json")
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not fit the model of config.json"):
        load_final_model(corrupt)
    with pytest.raises(CheckpointError, match="no final-model directory"):
        load_final_model(tmp_path / "absent")


def test_test_evaluation_scores_every_candidate_once_with_intervals(trained, result, monkeypatch):
    run, config = trained
    # The calibrate phase, 3 folds on the tiny validation split: evaluate reads it, never redoes it.
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    results = evaluate_test(run, config)
    assert set(results["models"]) == {c.name for c in result.candidates}
    assert set(results["baselines"]) == {"class_prior", "mean_predictor", "linear_probe"}
    for entry in [*results["models"].values(), *results["baselines"].values()]:
        low, high = entry["intervals"]["emotion_accuracy"]
        assert low <= entry["headline"]["emotion_accuracy"] <= high
        low, high = entry["intervals"]["regression_mae"]
        assert low <= entry["headline"]["regression_mae"] <= high
    assert results["final_model"] == result.final_model and "on test" in results["test_conclusion"]
    refuse_test_reads(monkeypatch, run)
    assert evaluate_test(run, config) == results  # read back from disk; the test split is not read again
    printed = format_results(results)
    assert "95% bootstrap intervals" in printed and CROSSOVER in printed and "baseline: linear probe" in printed

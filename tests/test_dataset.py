import random

import pytest
import torch

from redheart.architecture import VERDICTS
from redheart.data.dataset import SplitTensors, epoch_order, load_split, micro_batches, record_target, split_hash

from tiny_run import make_run, synthetic_record, synthetic_split


def records_with_gaps() -> list[dict]:
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(10)]
    records[0]["label_scores"] = {"AUTHOR": 1, "OTHER": 3}
    records[1]["label_scores"] = None  # label only: one-hot
    records[2].update(label_scores=None, label=None, emotions=None, regret_factor=None)
    return records


def test_load_split_builds_targets_and_presence(tmp_path):
    run = make_run(tmp_path, records=records_with_gaps())
    train = load_split(run, "train")
    assert train.ids == tuple(f"r{i:04d}" for i in range(6))
    assert train.tensors["x"].shape == (6, 4, 32) and train.tensors["mask"].dtype == torch.bool
    verdict = train.tensors["verdict"]
    assert verdict[0].tolist() == [0.25, 0.75, 0.0, 0.0, 0.0]
    assert verdict[1].tolist() == [1.0 if v == records_with_gaps()[1]["label"] else 0.0 for v in VERDICTS]
    assert train.tensors["verdict_present"].tolist() == [True, True, False, True, True, True]
    assert train.tensors["emotions_present"][2].item() is False
    assert train.tensors["regret_factor"].shape == (6, 1) and not train.tensors["regret_factor_present"][2]
    assert torch.equal(train.tensors["emotions"][2], torch.zeros(7))  # absent stays masked, never made up


def test_only_the_requested_split_is_read(tmp_path):
    records = records_with_gaps()
    records[9]["emotions"] = [0.5, 0.5]  # a broken record in the test split
    run = make_run(tmp_path, records=records)
    assert len(load_split(run, "train")) == 6 and len(load_split(run, "val")) == 2
    with pytest.raises(ValueError, match="record 'r0009': field 'emotions' must hold 7 floats"):
        load_split(run, "test")


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="field 'label' is 'MAYBE'"):
        record_target({"id": "x", "label": "MAYBE"}, "verdict")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split(make_run(tmp_path, n=10), "dev")


def test_epoch_order_is_a_function_of_seed_and_epoch(tmp_path):
    assert torch.equal(epoch_order(50, seed=3, epoch=2), epoch_order(50, seed=3, epoch=2))
    assert not torch.equal(epoch_order(50, seed=3, epoch=2), epoch_order(50, seed=3, epoch=3))
    assert sorted(epoch_order(50, 3, 2).tolist()) == list(range(50))
    assert [len(b) for b in micro_batches(10, 4, seed=0, epoch=0)] == [4, 4, 2]
    run = make_run(tmp_path, n=10)
    assert split_hash(run) == split_hash(run) and len(split_hash(run)) == 64


def test_a_split_lives_on_a_given_device_and_keeps_its_verdict_only_rows_on_the_host():
    """The meta device stands in for a GPU: tensors there have no values to read, so a read would fail."""
    split = synthetic_split(12)
    split.tensors["emotions_present"][:4] = False
    for name in ("bentham_scores", "regret_factor", "surd_metrics"):
        split.tensors[f"{name}_present"][:4] = False
    moved = split.to("meta")
    assert {value.device.type for value in moved.tensors.values()} == {"meta"}
    batch = moved.batch(torch.tensor([0, 5]), "meta")
    assert batch["x"].device.type == "meta" and batch["x"].shape == (2, 4, 32)
    assert moved.verdict_only(torch.tensor([0, 3])) and not moved.verdict_only(torch.tensor([3, 4]))


def test_a_mask_that_is_not_a_prefix_of_real_segments_is_refused_when_the_split_is_made():
    split = synthetic_split(6)
    tensors = dict(split.tensors, mask=split.tensors["mask"].clone())
    tensors["mask"][2] = torch.tensor([True, False, True, False])
    with pytest.raises(ValueError, match="prefix of real segments"):
        SplitTensors("train", split.ids, tensors)

"""Phase 3 on hand-made curves: smoothing, over-fitting onset, sweet spot, the analysis files, and pins."""

import json

import pytest

from redheart.config import PRESETS, SelectConfig, with_overrides
from redheart.core.atomic import read_json, write_json
from redheart.core.rundir import RunDir
from redheart.model.groups import GROUPS
from redheart.select.pins import pin_checkpoints, pinned_epochs, prunable_checkpoints
from redheart.select.sweet_spots import analyze, find_spot, onset_index, shifted_epoch, smooth, sweet_spot_index


def test_smoothing_keeps_one_noisy_epoch_from_deciding():
    val = [5.0, 4.0, 3.0, 2.0, 2.6, 2.5, 2.2, 2.1, 2.1]  # epoch 4 is a lucky dip
    assert sweet_spot_index(smooth(val, "none", 3), None) == 3
    assert sweet_spot_index(smooth(val, "moving_average", 3), None) == 8
    assert sweet_spot_index(smooth(val, "ema", 3), None) == 8
    assert smooth(val, "moving_average", 3)[:2] == pytest.approx([4.5, 4.0])  # centred, truncated at the ends
    assert smooth([2.0, 4.0], "ema", 3) == [2.0, 3.0]  # alpha = 2 / (3 + 1)
    with pytest.raises(ValueError, match="smoothing"):
        smooth(val, "median", 3)


def test_onset_is_the_first_of_three_widenings_in_a_row():
    assert onset_index([0.1, 0.2, 0.15, 0.2, 0.3, 0.4, 0.5], run=3) == 3
    assert onset_index([0.1, 0.2, 0.3, 0.25, 0.3, 0.35], run=3) is None  # two in a row, twice
    # Validation below training (dropout at train time): a rising val - train is the gap closing.
    assert onset_index([-0.5, -0.4, -0.3, -0.2, -0.1], run=3) is None


def test_sweet_spot_is_the_best_validation_before_the_onset():
    epochs = [2, 4, 6, 8, 10, 12, 14]
    train = [3.0, 2.5, 2.0, 1.6, 1.2, 0.8, 0.4]
    val = [3.2, 2.7, 2.2, 1.9, 1.7, 1.6, 1.6]  # still falling, but the gap widens from epoch 8
    spot = find_spot("group_b", ["neural_emotion"], epochs, train, val, SelectConfig(smoothing="none"))
    assert spot.onset == 8
    assert spot.sweet_spot == 6  # not 14: epochs from the onset on are over-fitting
    assert "epoch 6" in spot.reason and "onset at epoch 8" in spot.reason
    calm = find_spot("group_b", ["neural_emotion"], epochs, val, train, SelectConfig(smoothing="none"))
    assert calm.onset is None and calm.sweet_spot == 14 and "every checkpoint was eligible" in calm.reason


def test_shifted_epochs_clamp_at_the_first_and_last_checkpoint():
    saved = [2, 4, 6, 8, 10]
    assert [shifted_epoch(4, s, saved) for s in (-4, -2, 0, 2, 4)] == [2, 2, 4, 6, 8]
    assert [shifted_epoch(10, s, saved) for s in (-4, -2, 0, 2, 4)] == [6, 8, 10, 10, 10]
    assert shifted_epoch(3, 2, [1, 3, 6]) == 6  # epoch 5 was not saved: the nearest checkpoint


def fake_run(root, epochs=(1, 2, 3, 4, 5, 6, 7, 8)) -> RunDir:
    """metrics.jsonl with hand-made per-module losses and sealed (empty) checkpoint folders."""
    run = RunDir(root)
    rows = []
    for e in epochs:
        train = {m: 1.0 - 0.02 * e for modules in GROUPS.values() for m in modules if m != "backbone"}
        val = {m: 1.0 + abs(e - 4) * 0.1 for m in train}  # best at epoch 4, over-fits afterwards
        rows.append(
            {"epoch": e, "train_loss": {**train, "total": sum(train.values())}, "val": {"loss": val, "modules": {}}}
        )
        write_json(run.checkpoint(e) / "manifest.json", {"preset": "tiny", "files": {}})
    run.metrics_log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_analyze_writes_the_report_and_pins_the_sweet_spots(tmp_path):
    run = fake_run(tmp_path)
    config = with_overrides(PRESETS["tiny"], {"select.smoothing": "none"})
    analysis = analyze(run, config)
    assert set(analysis.sweet_spots) == set(GROUPS)
    assert analysis.groups["group_a"].sweet_spot == 4 and analysis.groups["group_a"].onset == 5
    assert analysis.groups["group_a"].modules == list(GROUPS["group_a"][1:])  # the backbone has no loss of its own
    written = read_json(run.analysis_results)
    assert written["sweet_spots"]["phase"] == 4 and "onset" in written["groups"]["phase"]["reason"]
    assert "**group_c**" in (run.analysis / "analysis.md").read_text()
    assert (run.analysis_curves).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The sweet spot and its shifted variants (-4..+4 epochs, clamped) are pinned.
    assert set(pinned_epochs(run)) == {1, 2, 4, 6, 8}


def test_pinned_checkpoints_are_never_prunable(tmp_path):
    run = fake_run(tmp_path, epochs=(2, 4, 6, 8))
    assert prunable_checkpoints(run) == []  # nothing is known to be unneeded before the analysis pinned
    pin_checkpoints(run, "analysis", {"group_a sweet spot": 4})
    pin_checkpoints(run, "crossover", {"soup": 8})
    assert prunable_checkpoints(run) == [run.checkpoint(2), run.checkpoint(6)]
    pin_checkpoints(run, "analysis", {"group_a sweet spot": 6})  # an owner's pins are replaced, others kept
    assert prunable_checkpoints(run) == [run.checkpoint(2), run.checkpoint(4)]
    with pytest.raises(FileNotFoundError, match="epochs \\[5\\]"):
        pin_checkpoints(run, "analysis", {"missing": 5})

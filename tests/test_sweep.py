import csv
import math

import pytest
import torch

import redheart.train.recipe as recipe
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors
from redheart.train.sweep.run import collect, run_sweep, run_trial, trial_count
from redheart.train.sweep.score import Curve, choose, components, explain, format_lr, rank
from redheart.train.telemetry.records import read_metrics

from tiny_run import make_run, tiny_config

DOCUMENTED = (0.4, 0.2, 0.2, 0.2)

# Hand-made histories. "wild" has the lowest validation loss over epochs 3-5 but goes up and down;
# "steady" is a little higher and never goes back up; "slow" barely learns.
WILD = Curve(train=(1.0, 0.7, 0.6, 0.55, 0.5), val=(1.0, 0.5, 0.9, 0.45, 0.8))
STEADY = Curve(train=(1.0, 0.85, 0.75, 0.7, 0.68), val=(1.0, 0.9, 0.8, 0.75, 0.72))
SLOW = Curve(train=(1.2, 1.15, 1.1, 1.05, 1.0), val=(1.2, 1.15, 1.1, 1.05, 1.0))


def table_of(curves: dict[float, list[Curve]], weights=DOCUMENTED):
    return rank({lr: [components(c) for c in cs] for lr, cs in curves.items()}, weights)


def test_components_follow_their_definitions():
    wild = components(WILD)
    assert wild["val_loss"] == pytest.approx((0.9 + 0.45 + 0.8) / 3)
    assert wild["instability"] == pytest.approx((0.4 + 0.35) / (sum(WILD.val) / 5))
    assert wild["inefficiency"] == pytest.approx(sum(WILD.train) / 5)
    assert wild["overfit_gap"] == pytest.approx((0.3 + 0.0 + 0.3) / 3)  # validation below training is no over-fitting
    assert components(STEADY)["instability"] == 0.0


def test_an_oscillating_rate_loses_to_a_steady_one_under_the_documented_weights():
    table = table_of({5e-4: [WILD], 1e-4: [STEADY], 1e-5: [SLOW]})
    assert [s.lr for s in table] == [1e-4, 5e-4, 1e-5]
    wild = next(s for s in table if s.lr == 5e-4)
    assert wild.normalized["val_loss"] == 0.0 and wild.normalized["instability"] == 1.0
    assert all(0.0 <= v <= 1.0 for s in table for v in s.normalized.values())
    # Weight on validation loss alone, the oscillating rate wins: the weights decide, not the code.
    assert table_of({5e-4: [WILD], 1e-4: [STEADY], 1e-5: [SLOW]}, (1, 0, 0, 0))[0].lr == 5e-4


def test_seed_average_decides_and_the_choice_stays_among_the_finalists():
    lucky = Curve(train=STEADY.train, val=tuple(v - 0.2 for v in STEADY.val))
    table = table_of({5e-4: [lucky, WILD, WILD], 1e-4: [STEADY, STEADY, STEADY], 1e-5: [SLOW]})
    assert table[0].lr == 1e-4 and next(s for s in table if s.lr == 5e-4).trials == 3
    # Alone, the lucky seed would have won.
    assert table_of({5e-4: [lucky], 1e-4: [STEADY], 1e-5: [SLOW]})[0].lr == 5e-4
    assert choose(table, finalists=[5e-4, 1e-5]).lr == 5e-4


def test_a_diverged_rate_scores_worst_and_is_named_in_the_reason():
    nan = Curve(train=(1.0, math.nan), val=(1.0, math.inf))
    table = table_of({1e-3: [nan], 1e-4: [Curve((1.0, 0.9), (1.0, 0.95))], 1e-5: [Curve((1.0, 0.99), (1.0, 0.99))]})
    assert table[-1].lr == 1e-3 and table[-1].diverged and table[-1].total == pytest.approx(sum(DOCUMENTED))
    assert "Diverged (non-finite loss): 1e-3" in explain(table[0], table, epochs=2)


def test_the_reason_names_the_chosen_rate_and_its_runner_up_with_numbers():
    table = table_of({5e-4: [WILD], 1e-4: [STEADY], 1e-5: [SLOW]})
    reason = explain(table[0], table, epochs=5)
    assert reason.startswith("1e-4 chosen")
    assert "for 5e-4, the runner-up" in reason
    assert "Mean validation loss over epochs 3-5 0.757 vs 0.717" in reason
    assert "better on stability, over-fitting gap, worse on validation loss, learning efficiency" in reason


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="same number"):
        components(Curve(train=(1.0,), val=(1.0, 0.9)))
    with pytest.raises(ValueError, match="weights"):
        rank({1e-4: [components(STEADY)]}, (0.5, 0.5))
    assert format_lr(2e-4) == "2e-4" and format_lr(1.5e-5) == "1.5e-5"


# The real thing on the tiny preset: 2 candidates x 2 epochs, the best one re-run with one more seed.
def sweep_config():
    return tiny_config(
        **{"train.rdrop_alpha": 0.0, "train.ema_decay": 0.0, "sweep.reseed_top": 1, "sweep.extra_seeds": 1}
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One `run_sweep`, watching what every trial starts from: its initial weights and the samples it is fed."""
    run = make_run(tmp_path_factory.mktemp("single"), n=25)
    inits, fed = [], []

    def watched_model(*args, **kwargs):
        model = real_model(*args, **kwargs)
        inits.append({k: v.clone() for k, v in model.state_dict().items()})
        fed.append([])
        return model

    def watched_batch(self, index, *args, **kwargs):
        if fed:
            fed[-1].append(index.tolist())
        return real_batch(self, index, *args, **kwargs)

    real_model, real_batch = recipe.RedHeartModel, SplitTensors.batch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe, "RedHeartModel", watched_model)
        patch.setattr(SplitTensors, "batch", watched_batch)
        result = run_sweep(run, sweep_config(), progress=False)
    return run, result, inits, fed


def test_every_candidate_starts_from_the_same_weights_and_data_order(single):
    _, result, inits, fed = single
    assert len(inits) == trial_count(sweep_config()) == 3
    first, second, reseed = inits
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], reseed[k]) for k in first)
    # Training batches and validation batches alike, in the order the trial asked for them.
    assert fed[0] == fed[1] and len(fed[0]) > 4
    assert fed[2] != fed[0]


def test_the_sweep_writes_its_choice_curves_and_tables(single):
    run, result, _, _ = single
    choice = read_json(run.sweep_choice)
    assert choice["lr"] == result.lr and choice["reason"] == result.reason and choice["complete"]
    assert result.reason.startswith(f"{format_lr(result.lr)} chosen") and choice["seeds"] == 2
    assert recipe.resolve_lr(run, sweep_config(), None) == (result.lr, "sweep")
    results = read_json(run.sweep_results)
    assert [t["trial"] for t in results["trials"]] == [0, 1, 2]
    assert results["trials"][2]["lr"] == result.lr and results["trials"][2]["seed"] == 14
    assert {c["lr"] for c in results["candidates"]} == {1e-4, 1e-3}
    assert set(results["trials"][0]["epochs"][0]) >= {
        "train_loss",
        "val_loss",
        "grad_norm_mean",
        "seconds",
        "val_verdict_accuracy",
    }
    with open(run.sweep / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["trial"], row["epoch"]) for row in rows] == [(str(k), str(e)) for k in range(3) for e in (1, 2)]
    assert (run.sweep_curves).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in run.sweep.glob("trial_*")) == [
        "trial_0_lr1e-4_seed13",
        "trial_1_lr1e-3_seed13",
        f"trial_2_lr{format_lr(result.lr)}_seed14",
    ]


def test_finished_trials_keep_their_metrics_and_drop_their_resume_state(single, tmp_path):
    run, _, _, _ = single
    for folder in run.sweep.glob("trial_*"):
        assert len(read_metrics(RunDir(folder).metrics_log)) == 2 and not RunDir(folder).resume.exists()
    kept = make_run(tmp_path, n=25)
    config = tiny_config(**{"train.epochs": 1, "sweep.epochs": 1, "sweep.keep_trial_resume": True})
    trial = run_trial(kept, config, 0, progress=False)
    assert (RunDir(trial.folder(kept)).resume / "current.json").exists()


def test_a_trial_without_its_resume_state_is_extended_by_training_it_again(tmp_path):
    run = make_run(tmp_path, n=25)
    one = tiny_config(**{"train.rdrop_alpha": 0.0, "sweep.epochs": 1})
    trial = run_trial(run, one, 0, progress=False)
    first = read_metrics(RunDir(trial.folder(run)).metrics_log)
    run_trial(run, tiny_config(**{"train.rdrop_alpha": 0.0, "sweep.epochs": 2}), 0, progress=False)
    again = read_metrics(RunDir(trial.folder(run)).metrics_log)
    assert [r["epoch"] for r in again] == [1, 2]
    # The same epoch computed again from the same seed in this process: equal, the 1e-6 (~17 fp32 ulps) spare.
    assert again[0]["val"]["loss"] == pytest.approx(first[0]["val"]["loss"], rel=1e-6)


def test_finished_trials_are_not_trained_again(single, monkeypatch):
    run, result, _, _ = single

    def refuse(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(recipe, "train", refuse)
    assert run_sweep(run, sweep_config(), progress=False).table == result.table


def test_separate_trials_then_collect_give_the_single_run_choice(single, tmp_path):
    _, reference, _, _ = single
    run, config = make_run(tmp_path, n=25), sweep_config()
    with pytest.raises(ValueError, match="no finished sweep trial"):
        collect(run, config)
    with pytest.raises(ValueError, match="first-stage trials \\[0, 1\\]"):
        run_trial(run, config, 2, progress=False)
    with pytest.raises(ValueError, match="trials 0..2"):
        run_trial(run, config, 3, progress=False)
    run_trial(run, config, 1, progress=False)
    partial = collect(run, config)
    assert partial.lr == 1e-3 and "Incomplete sweep, missing: trial_0_lr1e-4_seed13" in partial.reason
    run_trial(run, config, 0, progress=False)
    run_trial(run, config, 2, progress=False)
    result = collect(run, config)
    assert result.lr == reference.lr and not result.missing
    assert [(s.lr, s.trials) for s in result.table] == [(s.lr, s.trials) for s in reference.table]
    for mine, theirs in zip(result.table, reference.table):
        assert mine.raw == pytest.approx(theirs.raw) and mine.total == pytest.approx(theirs.total)

"""Every human label: extra verdict-only records, the vote likelihood, the decision rule, paired differences."""

import json
import math
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from redheart.architecture import VERDICTS, module_targets, verdict_modules
from redheart.config import DataConfig
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import sha256
from redheart.core.rundir import RunDir
from redheart.data.dataset import epoch_order, targets_tensors, training_order, verdict_only_rows
from redheart.data.prepare import prepare
from redheart.evaluate.decision_rule import apply_weights, fit_class_weights
from redheart.evaluate.final import difference_conclusion
from redheart.model.losses import dirichlet_multinomial_nll, vote_loss
from redheart.model.model import RedHeartModel
from redheart.select.intervals import paired_difference_intervals
from redheart.train.trainer import forward_losses

from tiny_run import synthetic_record, synthetic_split, tiny_config

EMOTION_MODULES = [name for name, target in module_targets().items() if target == "emotions"]


# ---- the Dirichlet-multinomial likelihood of the votes ---------------------------------------------------------


def test_dirichlet_multinomial_keeps_its_digits_at_large_concentrations() -> None:
    # Logits of 20: concentrations e^20 = 4.9e8 each, A = 2.4e9. The Dirichlet-multinomial then equals the
    # multinomial with p = a / A up to terms of order N^2 / A = 4e-8; so the per-vote loss of counts (6, 3, 1, 0, 0)
    # must be the multinomial's. float64 lgamma near A log A = 5e10 is exact to about 1e-5, a few such terms over
    # N = 10 votes leave well under 1e-4; in float32 (spacing 4096 there) the loss is off by tens or more.
    counts = torch.tensor([[6.0, 3.0, 1.0, 0.0, 0.0]])
    logits = torch.full((1, 5), 20.0, requires_grad=True)
    loss = dirichlet_multinomial_nll(logits, counts)
    n = [6, 3, 1, 0, 0]
    log_multinomial = math.lgamma(11) - sum(math.lgamma(k + 1) for k in n) + sum(k * math.log(1 / 5) for k in n)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(-log_multinomial / 10, abs=1e-4)
    loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_dirichlet_multinomial_equals_a_hand_computation() -> None:
    # Concentrations all 1 make every split of N votes over K verdicts equally likely: 1 / C(N+K-1, K-1).
    # For N = 4 votes over K = 5 verdicts that is 1/70, so the per-vote loss is log(70) / 4.
    uniform = dirichlet_multinomial_nll(torch.zeros(1, 5), torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0]]))
    # fp32 lgamma terms up to lgamma(9) ~ 10.6 add up to log(70) ~ 4.2: cancellation multiplies their few-ulp errors
    # (libm and vectorised lgamma differ between CPUs) by ~5, so ~5 * 8 * 2^-24 ~ 2.4e-6; rel 1e-5 holds anywhere.
    assert float(uniform) == pytest.approx(math.log(70) / 4, rel=1e-5)
    # Two verdicts with concentrations (2, 1) and one vote for the first: the Polya urn draws it with 2/3.
    one_vote = dirichlet_multinomial_nll(torch.log(torch.tensor([[2.0, 1.0]])), torch.tensor([[1.0, 0.0]]))
    assert float(one_vote) == pytest.approx(-math.log(2 / 3), rel=1e-5)
    # Concentrations (2, 1), votes (1, 1): P = 2!/(1!1!) * B(3, 2) / B(2, 1) = 2 * (1/12) / (1/2) = 1/3.
    two_votes = dirichlet_multinomial_nll(torch.log(torch.tensor([[2.0, 1.0]])), torch.tensor([[1.0, 1.0]]))
    assert float(two_votes) == pytest.approx(-math.log(1 / 3) / 2, rel=1e-5)


def test_vote_loss_averages_over_rows_with_a_verdict_only() -> None:
    logits = torch.zeros(3, 5)
    batch = {
        "verdict_votes": torch.tensor([[3.0, 1, 0, 0, 0], [float("nan")] * 5, [3.0, 1, 0, 0, 0]]),
        "verdict_present": torch.tensor([True, False, True]),
    }
    assert float(vote_loss(logits, batch)) == pytest.approx(math.log(70) / 4, rel=1e-5)  # as above


def test_vote_counts_are_kept_beside_the_shares() -> None:
    record = {"id": "a", "label": "OTHER", "label_scores": {"OTHER": 6, "AUTHOR": 2}}
    tensors = targets_tensors([record, {"id": "b", "label": "INFO"}, {"id": "c"}])
    assert tensors["verdict_votes"][0].tolist() == [2.0, 6.0, 0.0, 0.0, 0.0]
    assert tensors["verdict"][0].tolist() == [0.25, 0.75, 0.0, 0.0, 0.0]
    assert tensors["verdict_votes"][1].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]  # a label alone is one vote
    assert tensors["verdict_present"].tolist() == [True, True, False]


# ---- verdict-only records: no loss, no gradient, and no work for the other modules ---------------------------


def verdict_only(record: dict) -> dict:
    return {**record, "emotions": None, "regret_factor": None, "bentham_scores": None, "surd_metrics": None}


def mixed_batch(n: int = 8) -> dict[str, torch.Tensor]:
    """n rows, the odd ones with their verdict only."""
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(n)]
    records = [verdict_only(r) if i % 2 else r for i, r in enumerate(records)]
    batch = {
        "x": torch.randn(n, 4, 32, generator=torch.Generator().manual_seed(0)),
        "mask": torch.ones(n, 4, dtype=torch.bool),
    }
    return {**batch, **targets_tensors(records)}


def test_records_without_emotions_add_no_loss_to_the_emotion_modules() -> None:
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4).eval()  # no dropout: same outputs
    batch = mixed_batch()
    full_rows = torch.arange(0, 8, 2)
    alone = {key: value[full_rows] for key, value in batch.items()}
    with torch.no_grad():
        mixed = model.losses(model(batch["x"], batch["mask"]), batch, 0.1)
        only_full = model.losses(model(alone["x"], alone["mask"]), alone, 0.1)
    # The same rows' losses averaged from another batch: fp32 reordering of sums over 8 rows, ~8 * 2^-24; rel 1e-5
    # (~170 ulps) is spare, while a verdict-only row counted as a zero loss would move the mean by ~1/2.
    for name in EMOTION_MODULES:
        assert float(mixed[name]) == pytest.approx(float(only_full[name]), rel=1e-5)


def test_records_without_emotions_send_no_gradient_into_the_emotion_modules() -> None:
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4).train()
    batch = mixed_batch()
    # R-Drop on: its consistency term reads every row, so it is the term that could leak a gradient.
    config = tiny_config(**{"train.rdrop_alpha": 1.0}).train
    outputs = []
    original = model.forward

    def keep(*args, **kwargs):
        out = original(*args, **kwargs)
        for name in EMOTION_MODULES:
            out[name]["emotions"].retain_grad()
        outputs.append(out)
        return out

    model.forward = keep
    total, _ = forward_losses(model, batch, config)
    total.backward()
    (out,) = outputs  # one forward over [x; x]
    only = verdict_only_rows(batch).repeat(2)
    for name in EMOTION_MODULES:
        grad = out[name]["emotions"].grad
        assert grad is not None and grad[~only].abs().sum() > 0, name
        assert torch.equal(grad[only], torch.zeros_like(grad[only])), name


def test_a_batch_of_verdict_only_records_runs_only_the_verdict_modules() -> None:
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4).train()
    batch = mixed_batch()
    odd = torch.arange(1, 8, 2)
    batch = {key: value[odd] for key, value in batch.items()}
    total, parts = forward_losses(model, batch, tiny_config().train)
    total.backward()
    assert set(parts) - {"consistency"} == {*verdict_modules(), "kalman"}
    for name in module_targets():
        has_grad = any(p.grad is not None for p in getattr(model, name).parameters())
        assert has_grad == (name in verdict_modules()), name
    assert any(p.grad is not None for p in model.backbone.parameters())


def test_training_order_makes_windows_of_one_kind() -> None:
    split = synthetic_split(50)
    assert torch.equal(training_order(split, 3, 1, 8), epoch_order(50, 3, 1))  # no verdict-only rows: unchanged
    records_only = verdict_only_rows(split.tensors).clone()
    for row in range(0, 50, 3):
        for name in ("emotions", "regret_factor", "bentham_scores", "surd_metrics"):
            split.tensors[f"{name}_present"][row] = False
    only = verdict_only_rows(split.tensors)
    assert not records_only.any() and int(only.sum()) == 17
    order = training_order(split, 3, 1, 8)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, training_order(split, 3, 1, 8))
    windows = list(torch.split(order, 8))
    mixed = [i for i, w in enumerate(windows) if 0 < int(only[w].sum()) < len(w)]
    assert all(i >= len(windows) - 2 for i in mixed)  # only the final windows (the two remainders) mix kinds
    assert any(bool(only[w].all()) for w in windows) and any(not bool(only[w].any()) for w in windows)


# ---- prepare with a train-only source -----------------------------------------------------------------------------


def story(i: int) -> str:
    rng = random.Random(i)
    return f"Story {i}: " + " ".join(
        rng.choice(
            ["my", "flatmate", "ate", "the", "cake", "again", "today", "sister", "wedding", "dog", "borrowed", "car"]
        )
        for _ in range(40 + i % 30)
    )


def write_jsonl(path, rows) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_extra_records_join_train_only_and_leave_validation_and_test_as_they_were(tmp_path) -> None:
    emotions = [0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1]
    labelled = [{"id": f"r{i}", "text": story(i), "label": VERDICTS[i % 2], "emotions": emotions} for i in range(60)]
    extra = [
        {"id": f"x{i}", "text": story(1000 + i), "label": "INFO", "label_scores": {"INFO": 3, "OTHER": 1}}
        for i in range(30)
    ]
    extra.append({"id": "r5", "text": story(5000), "label": "OTHER"})  # an id the labelled set already uses
    write_jsonl(tmp_path / "labelled.jsonl", labelled)
    write_jsonl(tmp_path / "verdicts.jsonl", extra)

    alone, joined = RunDir(tmp_path / "alone"), RunDir(tmp_path / "joined")
    prepare(tmp_path / "labelled.jsonl", alone, DataConfig())
    summary = prepare(tmp_path / "labelled.jsonl", joined, DataConfig(), extra=[tmp_path / "verdicts.jsonl"])

    before, after = read_json(alone.split_manifest), read_json(joined.split_manifest)
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert after["train"] == before["train"] + [f"x{i}" for i in range(30)]
    clean = {r["id"]: r for r in map(json.loads, joined.clean_records.read_text().splitlines())}
    assert {r["source"] for i, r in clean.items() if i.startswith("r")} == {"labelled"}
    assert {r["source"] for i, r in clean.items() if i.startswith("x")} == {"verdicts"}
    assert clean["x0"]["emotions"] is None  # absent stays absent
    (rejected,) = map(json.loads, joined.rejected_records.read_text().splitlines())
    assert (rejected["id"], rejected["source"], rejected["problems"][0]["reason"]) == ("r5", "verdicts", "duplicate_id")
    assert summary.sources == {
        "labelled": {"role": "labelled", "clean_records": 60, "train": 48, "val": 6, "test": 6},
        "verdicts": {"role": "extra", "clean_records": 30, "train": 30, "val": 0, "test": 0},
    }


# ---- the decision rule --------------------------------------------------------------------------------------------


def test_class_weights_raise_macro_f1_on_the_data_they_are_fitted_on() -> None:
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])
    # A calibrated-looking model that never puts the rare classes on top: argmax always says class 0.
    probs = np.full((n, 3), 0.0)
    probs[:, 0] = 0.6
    probs[np.arange(n), np.where(truth == 0, 1, truth)] += 0.25  # a hint of the truth in the runner-up
    probs[:, 1:] += 0.075
    probs /= probs.sum(axis=1, keepdims=True)
    votes = np.eye(3)[truth] * 5
    fitted = fit_class_weights(probs, votes)
    plain = f1_score(truth, probs.argmax(axis=1), labels=[0, 1, 2], average="macro", zero_division=0)
    ruled = f1_score(truth, apply_weights(probs, fitted["weights"]), labels=[0, 1, 2], average="macro", zero_division=0)
    assert fitted["macro_f1_argmax"] == pytest.approx(plain)
    assert fitted["macro_f1_rule"] == pytest.approx(ruled)
    assert plain < 0.3 < ruled
    assert fitted["weights"][0] == 1.0


# ---- paired differences -------------------------------------------------------------------------------------------


def test_paired_interval_of_a_difference_matches_resampling_by_hand() -> None:
    rng = np.random.default_rng(1)
    n = 200
    truth = rng.integers(0, 5, size=n)
    votes = np.eye(5)[truth] * 3
    a = np.eye(5)[np.where(rng.random(n) < 0.6, truth, rng.integers(0, 5, size=n))] * 0.9 + 0.02
    b = np.eye(5)[np.where(rng.random(n) < 0.4, truth, rng.integers(0, 5, size=n))] * 0.9 + 0.02
    blank = {
        "emotions": np.zeros((n, 7)),
        "bentham_scores": np.zeros((n, 4)),
        "regret_factor": np.zeros((n, 1)),
        "surd_metrics": np.zeros((n, 4)),
    }
    present = {name: np.zeros(n, dtype=bool) for name in blank} | {"verdict": np.ones(n, dtype=bool)}
    targets = {**blank, "verdict": votes}
    out = paired_difference_intervals({**blank, "verdict": a}, {**blank, "verdict": b}, targets, present, 500, 3)

    # By hand: the same 500 resamples of the rows for both models, the accuracy difference in each.
    index = np.random.default_rng(3).integers(0, n, size=(500, n))
    right_a, right_b = (a.argmax(1) == truth), (b.argmax(1) == truth)
    differences = [right_a[i].mean() - right_b[i].mean() for i in index]
    assert out["verdict_accuracy"] == pytest.approx(tuple(np.quantile(differences, [0.025, 0.975])))
    assert out["verdict_accuracy"][0] > 0  # 60% against 40% right on 200 rows is a clear difference
    same = paired_difference_intervals({**blank, "verdict": a}, {**blank, "verdict": a}, targets, present, 200, 0)
    assert same["verdict_macro_f1"] == (0.0, 0.0) and same["emotion_accuracy"] == (None, None)


def test_the_declared_direction_decides_which_side_of_zero_is_better() -> None:
    def entry(difference: float, low: float, high: float) -> dict:
        return {"final": None, "probe": None, "difference": difference, "interval": [low, high]}

    # The same negative difference is worse for an accuracy and better for an error; a higher cross-entropy is worse.
    conclusion = difference_conclusion(
        {
            "emotion_accuracy": entry(-0.05, -0.08, -0.02),
            "regression_mae": entry(-0.05, -0.08, -0.02),
            "verdict_cross_entropy": entry(0.1, 0.05, 0.2),
            "verdict_macro_f1": entry(0.01, -0.02, 0.04),
        }
    )
    assert "better than the probe on regression MAE -0.0500 [-0.0800, -0.0200]," in conclusion
    assert "worse on emotion acc. -0.0500 [-0.0800, -0.0200]; verdict CE +0.1000 [+0.0500, +0.2000]," in conclusion
    assert "(the interval holds 0) on verdict F1 +0.0100 [-0.0200, +0.0400]." in conclusion


# ---- the decision rule reads validation only ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    """A tiny run trained 3 epochs, put through crossover and calibrated (validation only)."""
    from redheart.evaluate.calibration import fit_calibrators
    from redheart.evaluate.decision_rule import fit_decision_rules
    from redheart.select.crossover import crossover
    from redheart.train.recipe import train

    from tiny_run import make_run

    run = make_run(tmp_path_factory.mktemp("rule"), n=40)
    config = tiny_config(**{"train.epochs": 3, "train.rdrop_alpha": 0.0, "select.refine_rounds": 0})
    train(run, config, lr=3e-3, progress=False)
    crossover(run, config)
    fit_calibrators(run, config)
    fit_decision_rules(run, config)
    return run, config


def dataset_split(run, name):
    from redheart.data.dataset import load_split

    return load_split(run, name)


def probe_of(run, split):
    """The linear probe fitted on the training split, as evaluate fits it; its verdict distribution on `split`."""
    from redheart.data.dataset import split_targets
    from redheart.scoring.baselines import fit_probe, pooled_features, probe_predict

    train_split = dataset_split(run, "train")
    targets, present = split_targets(train_split)
    return probe_predict(fit_probe(pooled_features(train_split), targets, present), pooled_features(split))["verdict"]


def val_votes(split):
    """(majority vote per row with a verdict, those rows' mask)."""
    from redheart.data.dataset import split_targets

    targets, present = split_targets(split)
    rows = np.asarray(present["verdict"], dtype=bool)
    return np.asarray(targets["verdict"])[rows].argmax(axis=1), rows


def sk_macro_f1(true, predicted) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(true, predicted, labels=list(range(len(VERDICTS))), average="macro", zero_division=0))


def guard_test_reads(patch, run, allowed=lambda: False) -> list[set]:
    """Record every set of records the loader reads; a read of a test record fails unless `allowed()`."""
    from redheart.data import dataset

    test_ids = set(read_json(run.split_manifest)["test"])
    read, seen = dataset._read_records, []

    def guarded(run_dir, wanted):
        seen.append(set(wanted))
        assert allowed() or not wanted & test_ids, "a test record was read"
        return read(run_dir, wanted)

    patch.setattr(dataset, "_read_records", guarded)
    return seen


def test_the_decision_rule_is_fitted_on_validation_only(crossed) -> None:
    from redheart.evaluate.decision_rule import fit_decision_rules, load_decision_rule

    run, config = crossed
    val_ids = set(read_json(run.split_manifest)["val"])
    with pytest.MonkeyPatch.context() as patch:
        seen = guard_test_reads(patch, run)
        rules = fit_decision_rules(run, config)
    assert val_ids in seen
    assert rules == read_json(run.decision_rule)
    assert rules["split"] == "val" and rules["n"] == len(val_ids)
    # The final model's rule travels with it: one per served distribution, bound to the model and calibrators.
    travelling = load_decision_rule(run.model_files.decision_rule)
    assert travelling.modes == rules["final_model"] and set(travelling.modes) == {"calibrated", "uncalibrated"}
    assert travelling.model_sha256 == sha256(run.model_files.manifest)
    assert travelling.calibrators_sha256 == sha256(run.model_files.calibrators)
    # The stored scores are recomputed here from the served validation predictions with scikit-learn, and the
    # weights must be a local optimum of the search's grid: no single class moved to another grid value raises
    # macro-F1.
    from redheart.evaluate.decision_rule import LOG_WEIGHT_GRID, final_model_calibrators, served_predictions

    val = dataset_split(run, "val")
    calibrators = final_model_calibrators(run)
    entries = {
        "calibrated": (rules["final_model"]["calibrated"], served_predictions(run.final_model, val, calibrators)),
        "uncalibrated": (rules["final_model"]["uncalibrated"], served_predictions(run.final_model, val, None)),
        "linear_probe": (rules["linear_probe"], {"verdict": probe_of(run, val)}),
    }
    votes, rows = val_votes(val)
    for entry, predictions in entries.values():
        assert len(entry["weights"]) == len(VERDICTS) and entry["n"] == len(val_ids)
        probs = np.asarray(predictions["verdict"])[rows]
        weights = np.asarray(entry["weights"])
        assert weights[0] == 1.0
        # float64 F1s of the same counts: equal to the last bits or so
        assert entry["macro_f1_argmax"] == pytest.approx(sk_macro_f1(votes, probs.argmax(axis=1)), abs=1e-12)
        assert entry["macro_f1_rule"] == pytest.approx(sk_macro_f1(votes, (probs * weights).argmax(axis=1)), abs=1e-12)
        for k in range(1, len(VERDICTS)):
            for value in LOG_WEIGHT_GRID:
                moved = weights.copy()
                moved[k] = np.exp(value)
                assert sk_macro_f1(votes, (probs * moved).argmax(axis=1)) <= entry["macro_f1_rule"] + 1e-12


def test_evaluate_requires_the_rule_and_scores_it_on_the_served_distribution(crossed, tmp_path) -> None:
    import shutil

    from redheart.core.rundir import RunDir
    from redheart.evaluate.decision_rule import fit_decision_rules
    from redheart.evaluate.final import evaluate_test, format_results

    run = RunDir(shutil.copytree(crossed[0].root, tmp_path / "run"))
    config = crossed[1]
    run.decision_rule.unlink()
    with pytest.raises(FileNotFoundError, match=f"run `redheart calibrate --run {run.root}` first"):
        evaluate_test(run, config)
    assert not run.test_results.exists() and not run.decision_rule.exists()  # not refitted behind the user's back
    fit_decision_rules(run, config)
    with pytest.MonkeyPatch.context() as patch:
        guard_test_reads(patch, run, allowed=lambda: True)
        results = evaluate_test(run, config)
    rule = results["models"][results["final_model"]]["decision_rule"]
    served_weights = read_json(run.model_files.decision_rule)["modes"]["calibrated"]["weights"]
    assert rule["weights"] == served_weights
    assert rule["distribution"].startswith("calibrated (")
    # Both sides of the rule's difference recomputed on the test split (read here, after evaluate) from each
    # model's served predictions and its stored weights, with scikit-learn.
    from redheart.evaluate.decision_rule import final_model_calibrators, served_predictions

    test = dataset_split(run, "test")
    votes, rows = val_votes(test)
    weights = {"final_model": {"weights": served_weights}, "linear_probe": read_json(run.decision_rule)["linear_probe"]}
    difference = results["final_vs_probe"]["verdict_macro_f1_rule"]
    served = served_predictions(run.final_model, test, final_model_calibrators(run))
    final_probs = np.asarray(served["verdict"])[rows]
    probe_probs = np.asarray(probe_of(run, test))[rows]
    final_f1 = sk_macro_f1(votes, (final_probs * np.asarray(weights["final_model"]["weights"])).argmax(axis=1))
    probe_f1 = sk_macro_f1(votes, (probe_probs * np.asarray(weights["linear_probe"]["weights"])).argmax(axis=1))
    # float64 throughout on both sides: the same counts give the same F1 to the last bits or so
    assert (difference["final"], difference["probe"]) == (
        pytest.approx(final_f1, abs=1e-12),
        pytest.approx(probe_f1, abs=1e-12),
    )
    assert difference["final"] == pytest.approx(rule["verdict_macro_f1"], abs=1e-12)
    assert set(results["verdict_sources"]) == set(verdict_modules())
    printed = format_results(results)
    assert "paired bootstrap" in printed and results["final_vs_probe_conclusion"] in printed

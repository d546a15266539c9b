"""`redheart study`: which records each point trains on, when it stops, stale points, resume after a kill, the
computed sentences, the fitted curve and its held-out check, the report."""

from __future__ import annotations

import math
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from redheart.config import preset
from redheart.core.atomic import read_json, write_json
from redheart.model.model import RedHeartModel
from redheart.report.build import build_report
from redheart.study.fit import fit, law
from redheart.study.points import (
    SCORES,
    chosen_lr,
    plan,
    point_of,
    point_plan,
    point_train_ids,
    run_point,
    stale_parts,
    stop_rule,
    training_ids,
)
from redheart.study.results import analyse, collect, curve_analysis, sentences
from redheart.study.run import run_check, run_study
from redheart.train.state.resume import has_resume

from tiny_run import make_run, synthetic_record, tiny_config
from tiny_run import start_driver as run_driver

# 48 training records in micro-batches of 8 with 2 accumulated: 3 optimizer steps an epoch. The cap of 9 steps is
# 3 epochs of all the records (4 of half), and 3 steps of patience is one epoch of all the records.
STUDY = {
    "study.sizes": ["tiny"],
    "study.fractions": [0.5, 1.0],
    "study.max_steps": 9,
    "study.patience_steps": 3,
    "study.lrs": [1e-3, 3e-3],
    "study.sweep_epochs": 2,
    "study.sweep_fraction": 0.5,
    "study.fit_bootstrap": 20,
}

DRIVER = """
import json, sys, time
from redheart.core.rundir import RunDir
from redheart.study.points import run_point
from redheart.core.faults import Faults
from tiny_run import tiny_config

args = json.loads(sys.argv[1])

def on_step(stage, size):
    if stage == "forward":
        print("step", flush=True)
        time.sleep(0.05)

run_point(RunDir(args["run"]), tiny_config(**args["overrides"]), args["point"], progress=False,
          faults=Faults(step=on_step))
print("finished", flush=True)
"""


def test_points_are_sizes_by_fractions_on_nested_subsets_with_the_same_validation(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=80)  # 48 training records
    config = tiny_config(**{"study.sizes": ["tiny", "small"], "study.fractions": [0.125, 0.5, 1.0]})
    points = plan(run, config, cuda=False)
    assert [(p.index, p.size, p.label) for p in points] == [
        (0, "tiny", "1/8"),
        (1, "tiny", "1/2"),
        (2, "tiny", "all"),
        (3, "small", "1/8"),
        (4, "small", "1/2"),
        (5, "small", "all"),
    ]
    assert [p.size for p in plan(run, config, cuda=True)][-3:] == ["full"] * 3
    subsets = [set(point_train_ids(run, config, p)) for p in points[:3]]
    assert [len(s) for s in subsets] == [6, 24, 48]  # round(48 x fraction)
    assert subsets[0] < subsets[1] < subsets[2] == set(read_json(run.split_manifest)["train"])
    # The same fraction draws the same records whatever the size, so sizes are compared on equal data.
    assert set(point_train_ids(run, config, points[4])) == subsets[1]


def test_a_point_folder_names_its_training_subset_and_validation_but_no_test_ids(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=80)
    config = tiny_config(**{**STUDY, "study.fractions": [0.25], "study.max_steps": 2})
    point = run_point(run, config, 0, progress=False)
    manifest = read_json(point_of(run, config, 0).folder(run) / "data" / "split.json")
    assert sorted(manifest) == ["train", "val"] and manifest["val"] == read_json(run.split_manifest)["val"]
    assert len(manifest["train"]) == point["train_records"] == 12 and point["val_records"] == 16


def test_records_of_another_source_join_only_the_extra_point(tmp_path: Path) -> None:
    rng = random.Random(0)
    records = [synthetic_record(i, rng) for i in range(80)]
    extra = [
        {
            "id": f"x{i}",
            "title": "",
            "text": f"extra story {i} apple",
            "label": "AUTHOR",
            "label_scores": {"AUTHOR": 3, "OTHER": 1},
            "source": "verdicts_only",
        }
        for i in range(10)
    ]
    run = make_run(tmp_path / "run", records=records + extra)  # clean records and embeddings of all 90
    ids = [r["id"] for r in records]
    write_json(run.split_manifest, {"train": ids[:48] + [r["id"] for r in extra], "val": ids[48:64], "test": ids[64:]})
    config = tiny_config(**STUDY)
    main, other = training_ids(run, config)
    assert sorted(other) == sorted(r["id"] for r in extra) and not set(main) & set(other)
    points = plan(run, config, cuda=False)
    assert [p.label for p in points] == ["1/2", "all", "all+extra"]
    assert set(point_train_ids(run, config, points[1])) == set(main)
    assert set(point_train_ids(run, config, points[2])) == set(main) | set(other)
    # The verdict-only records train with their other targets masked; they count on the verdict's data axis only.
    extra_point = run_point(run, config, 2, progress=False)
    assert (extra_point["train_records"], extra_point["verdict_train_records"]) == (58, 58)
    assert extra_point["model"]["emotion_accuracy"] is not None and extra_point["probe"]["verdict_macro_f1"] is not None
    # The same rule as every point: 58 records are 4 steps an epoch, so the cap of 9 steps is 2 epochs, 8 steps
    # (an epoch count scaled from the other records', as before, gave round(48 / 58) = 1 epoch of 4 steps at a
    # budget of one epoch of all the records), and it stopped where the stop rule says for its own losses.
    assert (extra_point["steps_per_epoch"], extra_point["cap_steps"]) == (4, 8)
    losses = [e["val_loss"] for e in extra_point["epochs_val"]]
    rule = stop_rule(losses, 4, 3, 2)
    assert rule["stop"] and not stop_rule(losses[:-1], 4, 3, 2)["stop"]
    assert (extra_point["epochs"], extra_point["steps"]) == (len(losses), 4 * len(losses))
    assert extra_point["steps_to_best"] == 4 * rule["best_epoch"]
    assert extra_point["converged"] == (rule["reason"] == "patience")


def _point(size: str, n: int, label: str, params: int, **model: float) -> dict:
    probe = dict.fromkeys(SCORES, 0.5)
    return {
        "size": size,
        "label": label,
        "train_records": n,
        "verdict_train_records": n,
        "parameters": params,
        "model": {**probe, **model},
        "probe": probe,
    }


def test_slope_noise_and_size_effect_are_computed_from_the_numbers() -> None:
    # verdict F1 = 0.2 + 0.03 k + e (1, -1, -1, 1) at 100 x 2^k records: the pattern is orthogonal to a line in k,
    # so the fitted slope is exactly 0.03 per doubling and each size leaves residuals of +-e (2 degrees of freedom).
    e, labels = 0.01, ["1/8", "1/4", "1/2", "all"]
    points = []
    for size, shift, params in (("small", 0.0, 1000), ("medium", 0.1, 4000)):
        for k, (label, wiggle) in enumerate(zip(labels, (1, -1, -1, 1))):
            points.append(
                _point(
                    size,
                    100 * 2**k,
                    label,
                    params,
                    verdict_macro_f1=0.2 + shift + 0.03 * k + e * wiggle,
                    verdict_cross_entropy=1.0 - shift / 10,
                )
            )
    points.append(
        _point(
            "medium", 2000, "all+extra", 4000, verdict_macro_f1=0.2 + 0.1 + 0.09 + e + 0.02, verdict_cross_entropy=0.99
        )
    )
    analysis = analyse(points, ["small", "medium"])
    f1 = analysis["verdict_macro_f1"]
    assert f1["extra"] == {"medium": pytest.approx(0.02)}  # against medium on all 800 records; not on the curve
    assert f1["slopes"] == pytest.approx({"small": 0.03, "medium": 0.03})
    assert f1["noise"] == pytest.approx(math.sqrt(8 * e**2 / 4)) and f1["noise_dof"] == 4
    assert f1["slope_se"]["small"] == pytest.approx(f1["noise"] / math.sqrt(5))  # Sxx of k = 0..3 is 5
    (step,) = f1["size_steps"]
    assert step["mean_difference"] == pytest.approx(0.1) and step["difference_at_most_data"] == pytest.approx(0.1)
    words = sentences(analysis, points, ["small", "medium"])
    assert any("verdict macro-F1: medium (4,000 parameters) against small (1,000) helps" in s for s in words)
    assert any(s.startswith("verdict macro-F1, change per doubling") and "small +0.0300" in s for s in words)
    # Both axes help beyond the noise (slope 0.03 against 2 x 0.0141 / sqrt(5)); one size step gains more.
    expected = (
        "verdict macro-F1: the next gain would come from a larger model (improvement by a doubling of data at "
        "medium: +0.0300, improves it; small to medium: +0.1000, improves it)"
    )
    assert any(s.startswith(expected) for s in words)
    # Lower cross-entropy is better: medium's 0.01 lower is a help, the direction read from the metric.
    ce = analysis["verdict_cross_entropy"]
    assert ce["size_steps"][0]["mean_difference"] == pytest.approx(-0.01) and ce["noise"] == pytest.approx(0.0)
    assert any("verdict cross-entropy: medium (4,000 parameters) against small (1,000) helps" in s for s in words)


def test_a_size_difference_inside_the_noise_is_called_no_difference() -> None:
    e, labels = 0.05, ["1/8", "1/4", "1/2", "all"]
    points = [
        _point(size, 100 * 2**k, label, params, emotion_accuracy=0.6 + shift + e * wiggle)
        for size, shift, params in (("small", 0.0, 10), ("medium", -0.01, 20))
        for k, (label, wiggle) in enumerate(zip(labels, (1, -1, -1, 1)))
    ]
    words = sentences(analyse(points, ["small", "medium"]), points, ["small", "medium"])
    # noise e sqrt(2) = 0.0707; two standard errors of a mean of 4 paired differences: 2 x 0.0707 x sqrt(2/4) = 0.1
    assert any(
        "emotion accuracy: medium (20 parameters) against small (10) makes no difference beyond the noise: "
        "mean paired difference -0.0100 over 4 data sizes (two standard errors: 0.1000)" in s
        for s in words
    )
    assert any(
        s.startswith("emotion accuracy: neither more of these records nor a larger model improves it") for s in words
    )


def test_with_no_degrees_of_freedom_no_sentence_calls_a_difference_an_effect() -> None:
    # Two data sizes per model size: each log-linear fit passes through both points, no residual is left, and
    # the noise cannot be estimated. A large size step (0.3) must then not be called "helps" while the next-gain
    # sentence calls the same step noise: both say it cannot be told.
    points = [
        _point(size, n, label, params, verdict_macro_f1=base + 0.01 * k)
        for size, base, params in (("small", 0.2, 10), ("medium", 0.5, 20))
        for k, (n, label) in enumerate(((100, "1/2"), (200, "all")))
    ]
    points.append(_point("medium", 300, "all+extra", 20, verdict_macro_f1=0.9))
    analysis = analyse(points, ["small", "medium"])
    assert analysis["verdict_macro_f1"]["noise"] is None and analysis["verdict_macro_f1"]["noise_dof"] == 0
    words = [s for s in sentences(analysis, points, ["small", "medium"]) if s.startswith("verdict macro-F1")]
    assert not any(" helps" in s or " hurts" in s or "beyond the noise" in s for s in words)
    assert not any("improves it" in s or "worsens it" in s or "better" in s for s in words)
    judged = [s for s in words if "cannot be told from the noise" in s]
    # the size step, the verdict-only records' effect and the next gain: each one undecided
    assert len(judged) == 3


def test_the_stop_rule_stops_on_patience_or_at_the_cap() -> None:
    # 10 steps an epoch, 25 steps of patience: 3 epochs without improvement.
    falling_then_flat = [3.0, 2.0, 1.5, 1.6, 1.55, 1.7]
    assert stop_rule(falling_then_flat[:5], 10, 25, 20)["stop"] is False
    assert stop_rule(falling_then_flat, 10, 25, 20) == {
        "best_epoch": 3,
        "epochs": 6,
        "stop": True,
        "reason": "patience",
    }
    still_falling = [3.0, 2.0, 1.5, 1.4]
    assert stop_rule(still_falling, 10, 25, 4) == {"best_epoch": 4, "epochs": 4, "stop": True, "reason": "cap"}
    assert stop_rule([float("nan"), 2.0], 10, 25, 4)["best_epoch"] == 2  # a diverged epoch is never the best
    # A plateau creeping down by 0.025 % an epoch, 0.09 % in all: with 0.1 % required, epoch 2 stays the best.
    creeping = [3.0, 2.0, 1.9995, 1.999, 1.9985, 1.9982]
    assert stop_rule(creeping, 10, 25, 20, min_improvement=1e-3) == {
        "best_epoch": 2,
        "epochs": 6,
        "stop": True,
        "reason": "patience",
    }
    assert stop_rule(creeping, 10, 25, 20)["stop"] is False


def test_a_stale_point_is_refused_by_collect_and_trained_again_by_run_point(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=80)
    config = tiny_config(**{**STUDY, "study.fractions": [1.0]})
    first = run_point(run, config, 0, progress=False)
    assert collect(run, config).points == [first]
    # Another step cap: the point on disk no longer describes today's settings.
    longer = tiny_config(**{**STUDY, "study.fractions": [1.0], "study.max_steps": 12})
    with pytest.raises(ValueError, match=r"refused as stale: point_0_tiny_all"):
        collect(run, longer)
    # Other validation ids: named as such.
    manifest = read_json(run.split_manifest)
    write_json(
        run.split_manifest, {**manifest, "val": manifest["val"][1:], "test": manifest["test"] + manifest["val"][:1]}
    )
    with pytest.raises(ValueError, match=r"refused as stale"):
        collect(run, config)
    write_json(run.split_manifest, manifest)
    assert collect(run, config).stale == {}
    again = run_point(run, longer, 0, progress=False)
    assert again["max_steps"] == 12 and again["fingerprint"] != first["fingerprint"]
    result = collect(run, longer)
    assert result.points == [again] and result.stale == {}


def test_stale_parts_are_named(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=80)
    config = tiny_config(**{**STUDY, "study.fractions": [0.5]})
    run_point(run, config, 0, progress=False)
    # Another subset seed draws other training records for the half: only the training ids changed.
    with pytest.raises(ValueError, match=r"refused as stale"):
        collect(run, tiny_config(**{**STUDY, "study.fractions": [0.5], "study.seed": 14}))
    stored = read_json(point_of(run, config, 0).folder(run) / "point.json")["fingerprint"]
    other = tiny_config(**{**STUDY, "study.fractions": [0.5], "study.seed": 14})
    lr = chosen_lr(run, "tiny")
    assert lr is not None
    assert stale_parts(stored, point_plan(run, other, point_of(run, other, 0), lr).fingerprint) == ["train_ids"]
    assert stale_parts(stored, point_plan(run, config, point_of(run, config, 0), lr * 2).fingerprint) == ["lr"]
    (run.embeddings / "index.json").write_text((run.embeddings / "index.json").read_text() + " ")
    assert stale_parts(stored, point_plan(run, config, point_of(run, config, 0), lr).fingerprint) == ["embeddings"]
    assert stale_parts({"lr": stored["lr"]}, point_plan(run, config, point_of(run, config, 0), lr).fingerprint) == [
        "config",
        "train_ids",
        "val_ids",
        "embeddings",
    ]


def test_the_free_space_check_counts_what_a_point_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redheart.train.disk_plan as disk_plan
    from redheart.study.points import ensure_point_space, point_disk_bytes
    from redheart.train.disk_plan import NotEnoughDisk, resume_slot_bytes

    config = tiny_config()
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    # Two resume slots (the live one and the previous) and the small files; not a pipeline's checkpoints.
    needed = point_disk_bytes(config, config.encoder.dim, config.encoder.max_segments)
    assert needed == 2 * resume_slot_bytes(model, "adamw", True) + 2_000_000
    folder = tmp_path / "point"
    monkeypatch.setattr(disk_plan, "free_bytes", lambda path: needed - 1)
    with pytest.raises(NotEnoughDisk, match="study point 3 not started"):
        ensure_point_space(folder, config, config.encoder.dim, config.encoder.max_segments, "study point 3")
    ensure_point_space(folder, config, config.encoder.dim, config.encoder.max_segments, "study point 3", check=False)
    monkeypatch.setattr(disk_plan, "free_bytes", lambda path: needed)
    ensure_point_space(folder, config, config.encoder.dim, config.encoder.max_segments, "study point 3")


SIZES = (("s1", 50_000), ("s2", 400_000), ("s3", 2_000_000), ("s4", 8_000_000))
RECORDS = ((850, "1/8"), (1700, "1/4"), (3400, "1/2"), (6800, "all"))
CE = ("verdict_cross_entropy",)
TRUE = np.array([0.8, 0.4, 0.35, 0.3, 0.5])  # E, A, alpha, B, beta with N0 = 50,000 and D0 = 850


def _law_points(theta: np.ndarray, noise: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    points = []
    for size, n in SIZES:
        for d, label in RECORDS:
            value = float(law(theta, np.float64(n), np.float64(d), 50_000, 850)) + noise * rng.standard_normal()
            points.append(_point(size, d, label, n, verdict_cross_entropy=value))
    return points


def test_the_fit_recovers_known_parameters_from_exact_points() -> None:
    points = _law_points(TRUE, 0.0, 0)
    n = [p["parameters"] for p in points]
    d = [p["train_records"] for p in points]
    y = [p["model"]["verdict_cross_entropy"] for p in points]
    result = fit(n, d, y, replicates=0, seed=0)
    assert result.curve is not None and (result.curve.n0, result.curve.d0) == (50_000, 850)
    # Exact points: the true parameters are a zero-residual minimum. least_squares stops when a step changes the
    # cost by less than ftol = 1e-8 of it, which leaves the parameters within about sqrt(1e-8) = 1e-4 of that
    # minimum relative to their scale; 1e-3 allows a factor 10 for the conditioning of five parameters.
    assert result.curve.theta == pytest.approx(TRUE, rel=1e-3, abs=1e-3)


def test_a_held_out_size_is_predicted_inside_its_interval_and_a_size_off_the_curve_is_not() -> None:
    # Points on the law with noise sd 0.003: fitted without the largest size, the curve predicts its four points
    # inside their 95 % prediction intervals.
    points = _law_points(TRUE, 0.003, 1)
    curves = curve_analysis(points, 730_000_000, replicates=200, seed=0, metrics=CE)
    held = curves["verdict_cross_entropy"]["held_out"]
    assert held["size"] == "s4" and held["fitted_on"] == 12
    assert all(c["inside"] for c in held["points"]), held["points"]
    fitted = curves["verdict_cross_entropy"]["fit"]["parameters"]
    for name, truth in zip(("E", "A", "alpha", "B", "beta"), TRUE):
        lo, hi = fitted[name]["interval"]
        assert lo <= truth <= hi, name
    # The true gain from s4 to 730M parameters at 6,800 records, 0.4 (160^-0.35 - 14,600^-0.35) = 0.054, is
    # far above the noise (0.003): the prediction calls it beyond the noise and its interval holds the truth.
    pred = curves["verdict_cross_entropy"]["prediction"]
    truth = float(
        law(TRUE, np.float64(8e6), np.float64(6800), 5e4, 850)
        - law(TRUE, np.float64(7.3e8), np.float64(6800), 5e4, 850)
    )
    assert pred["beyond_noise"] and pred["gain_interval"][0] <= truth <= pred["gain_interval"][1]
    # The same points with the largest size 0.1 worse than the law (33 noise sd): the check must fail.
    off = [
        {**p, "model": {**p["model"], "verdict_cross_entropy": p["model"]["verdict_cross_entropy"] + 0.1}}
        if p["size"] == "s4"
        else p
        for p in points
    ]
    held = curve_analysis(off, 730_000_000, replicates=200, seed=0, metrics=CE)["verdict_cross_entropy"]["held_out"]
    assert not any(c["inside"] for c in held["points"])


def test_a_flat_axis_gives_no_exponent_and_too_few_points_no_fit() -> None:
    flat = np.array([0.8, 0.4, 0.35, 0.0, 0.5])  # B = 0: the data do not move the metric
    points = _law_points(flat, 0.0, 0)
    entry = curve_analysis(points, 730_000_000, replicates=50, seed=0, metrics=CE)["verdict_cross_entropy"]
    assert entry["fit"]["parameters"]["beta"]["value"] is None
    assert "not identifiable" in entry["fit"]["parameters"]["beta"]["reason"]
    assert entry["prediction"]["records_for_gain"] is None and "flat" in entry["prediction"]["records_reason"]
    few = curve_analysis(points[:5], 730_000_000, replicates=50, seed=0, metrics=CE)["verdict_cross_entropy"]
    assert not few["fit"]["identifiable"] and few["prediction"]["reason"].startswith("no fit")


def start_driver(run: Path, point: int) -> subprocess.Popen:
    args = {"run": str(run), "point": point, "overrides": STUDY}
    return run_driver(DRIVER, args)


def test_a_point_killed_mid_way_and_resumed_gives_the_same_numbers_and_the_report_shows_the_study(
    tmp_path: Path,
) -> None:
    config = tiny_config(**STUDY)
    reference = make_run(tmp_path / "reference", n=80)
    result = run_study(reference, config, progress=False)
    # Half the records are 2 steps an epoch, all of them 3: the cap of 9 steps is 4 and 3 epochs (8 and 9 steps).
    assert [
        (p["size"], p["label"], p["train_records"], p["steps_per_epoch"], p["cap_steps"]) for p in result.points
    ] == [
        ("tiny", "1/2", 24, 2, 8),
        ("tiny", "all", 48, 3, 9),
    ]
    assert {p["lr"] for p in result.points} <= {1e-3, 3e-3}

    killed = make_run(tmp_path / "killed", n=80)  # the same records, split and embeddings
    point = point_of(killed, config, 1)
    process = start_driver(killed.root, 1)
    seen = 0
    for line in process.stdout:  # 48 records in micro-batches of 8: six micro-steps an epoch; stop in epoch 2
        seen += line.startswith("step")
        if seen == 9:
            break
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    folder = point.folder(killed)
    assert has_resume(folder / "resume") and not (folder / "point.json").exists()
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 done, epoch 2 cut short

    resumed = run_point(killed, config, 1, progress=False)
    expected = read_json(point.folder(reference) / "point.json")
    for key in ("model", "probe", "prior", "epochs_val", "train_records", "parameters", "lr", "steps_to_best"):
        assert resumed[key] == expected[key], key

    # The convergence check: the "all" point again with twice the cap, compared in the sentences.
    run_check(reference, tiny_config(**{**STUDY, "study.check": ["tiny:all"]}))
    collected = collect(reference, tiny_config(**{**STUDY, "study.check": ["tiny:all"]}))
    assert any(
        s.startswith("Convergence check of tiny:all: with twice the step cap (18 steps") for s in collected.sentences
    )
    build_report(reference)
    page = (reference.report / "report.md").read_text()
    tiny = preset("tiny")
    built = RedHeartModel(tiny.model, input_dim=tiny.encoder.dim, max_segments=tiny.encoder.max_segments)
    parameters = sum(p.numel() for p in built.parameters())
    all_point = expected
    row = f"| tiny | all | 48 | {parameters:,} | "
    assert "## Learning curves" in page and row in page
    assert (
        f"{all_point['steps_to_best']} | {all_point['steps']} | {'yes' if all_point['converged'] else 'no'} |" in page
    )
    assert all(
        (reference.report / "img" / f"study_{m}.png").stat().st_size > 0
        for m in ("emotion_accuracy", "emotion_kl", "verdict_macro_f1", "verdict_cross_entropy", "regression_mae")
    )
    assert "learning_curves" in (reference.report / "tables" / "learning_curves.tex").read_text()
    # Two data sizes of one model size cannot determine the curve: the prediction's table says so, no number.
    prediction = (reference.report / "tables" / "learning_curve_prediction.tex").read_text()
    assert "not identifiable" in prediction

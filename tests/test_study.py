"""`redheart study`: which records each point trains on, resume after a kill, the computed sentences, the report."""

from __future__ import annotations

import math
import random
import signal
import subprocess
from pathlib import Path

import pytest

from redheart.config import preset
from redheart.core.atomic import read_json, write_json
from redheart.model.model import RedHeartModel
from redheart.report.build import build_report
from redheart.study.points import plan, point_of, point_train_ids, run_point, training_ids
from redheart.study.results import analyse, collect, sentences
from redheart.study.run import run_study
from redheart.train.state.resume import has_resume

from tiny_run import make_run, synthetic_record, tiny_config
from tiny_run import start_driver as run_driver

STUDY = {"study.sizes": ["tiny"], "study.fractions": [0.5, 1.0], "study.epochs": 2, "train.lr": 3e-3}

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
    config = tiny_config(**{**STUDY, "study.fractions": [0.25], "study.epochs": 1})
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
    extra_point = run_point(run, tiny_config(**{**STUDY, "study.epochs": 1}), 2, progress=False)
    assert (extra_point["train_records"], extra_point["verdict_train_records"]) == (58, 58)
    assert extra_point["model"]["emotion_accuracy"] is not None and extra_point["probe"]["verdict_macro_f1"] is not None


def _point(size: str, n: int, label: str, params: int, **model: float) -> dict:
    probe = {
        k: 0.5
        for k in ("emotion_accuracy", "emotion_macro_f1", "verdict_macro_f1", "verdict_cross_entropy", "regression_mae")
    }
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


def start_driver(run: Path, point: int) -> subprocess.Popen:
    args = {"run": str(run), "point": point, "overrides": STUDY}
    return run_driver(DRIVER, args)


def test_a_point_killed_mid_way_and_resumed_gives_the_same_numbers_and_the_report_shows_the_study(
    tmp_path: Path,
) -> None:
    config = tiny_config(**STUDY)
    reference = make_run(tmp_path / "reference", n=80)
    result = run_study(reference, config, progress=False)
    # Half the records for twice the epochs: both points take the same optimizer steps.
    assert [(p["size"], p["label"], p["train_records"], p["epochs"]) for p in result.points] == [
        ("tiny", "1/2", 24, 4),
        ("tiny", "all", 48, 2),
    ]

    killed = make_run(tmp_path / "killed", n=80)  # the same records, split and embeddings
    point = point_of(killed, config, 1)
    process = start_driver(killed.root, 1)
    seen = 0
    for line in process.stdout:  # 48 records in micro-batches of 8: six steps an epoch; stop in epoch 2
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
    for key in ("model", "probe", "prior", "epochs_val", "train_records", "parameters", "lr"):
        assert resumed[key] == expected[key], key

    collect(reference, config)
    build_report(reference)
    page = (reference.report / "report.md").read_text()
    tiny = preset("tiny")
    built = RedHeartModel(tiny.model, input_dim=tiny.encoder.dim, max_segments=tiny.encoder.max_segments)
    parameters = sum(p.numel() for p in built.parameters())
    assert "## Learning curves" in page and f"| tiny | all | 48 | {parameters:,} | 2 |" in page
    assert all(
        (reference.report / "img" / f"study_{m}.png").stat().st_size > 0
        for m in ("emotion_accuracy", "verdict_macro_f1", "verdict_cross_entropy", "regression_mae")
    )
    assert "learning_curves" in (reference.report / "tables" / "learning_curves.tex").read_text()

"""prepare(): one data file in, the run's data artifacts out."""

import json
import random

import pytest

from redheart.config import DataConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.prepare import format_summary, prepare
from redheart.data.reader import DataError


def story(i):
    rng = random.Random(i)
    return f"Story {i}: " + " ".join(
        rng.choice(["my", "flatmate", "ate", "the", "cake", "again", "today"]) for _ in range(40 + i)
    )


def rows():
    emotions = [0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1]
    data = [
        {"id": f"r{i}", "text": story(i), "label": ["OTHER", "AUTHOR"][i % 2], "emotions": emotions} for i in range(60)
    ]
    data.append({"id": "dup", "text": story(7) + " yes", "label": "OTHER"})  # near-duplicate of r7
    data.append({"id": "bad", "text": story(99), "label": "MAYBE"})
    return data


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    return path


def test_prepare_writes_every_artifact(tmp_path, data_file):
    run = RunDir(tmp_path / "run")
    summary = prepare(data_file, run, DataConfig())

    assert (summary.records_read, summary.rejected, summary.duplicates_removed, summary.leaks) == (62, 1, 1, 0)
    assert summary.rejected_by_reason == {"label: unknown_label": 1}
    clean = [json.loads(line) for line in run.clean_records.read_text().splitlines()]
    assert [r["id"] for r in clean] == [f"r{i}" for i in range(60)]
    (rejected,) = [json.loads(line) for line in run.rejected_records.read_text().splitlines()]
    assert (rejected["index"], rejected["id"], rejected["problems"][0]["field"]) == (61, "bad", "label")
    duplicates = read_json(run.duplicates)
    assert duplicates["count"] == 1 and duplicates["pairs"][0]["removed_id"] == "dup"
    assert duplicates["pairs"][0]["kept_id"] == "r7" and duplicates["samples"]
    manifest = read_json(run.split_manifest)
    assert sorted(manifest["train"] + manifest["val"] + manifest["test"]) == sorted(r["id"] for r in clean)
    assert manifest["seed"] == 13 and manifest["threshold"] == 92.0
    stats = read_json(run.data_stats)
    assert stats["split_sizes"] == summary.split_sizes == {"train": 48, "val": 6, "test": 6}
    assert stats["emotion_argmax"]["train"]["majority"] == "sadness"
    assert set(stats["text_length"]["val"]) >= {"mean", "median", "p10", "p90", "ks_vs_train"}

    text = format_summary(summary)
    assert "records read: 62" in text and "label: unknown_label: 1" in text and "near-duplicates removed: 1" in text
    assert "train 48, val 6, test 6" in text


def test_prepare_strict_raises_and_writes_nothing(tmp_path, data_file):
    run = RunDir(tmp_path / "run")
    with pytest.raises(DataError, match="id 'bad'"):
        prepare(data_file, run, DataConfig(), strict=True)
    assert not run.data.exists()


@pytest.mark.parametrize("settings", [{"dedup_method": "minhash"}, {"minhash_above": 10}])
def test_minhash_dedup_in_prepare_finds_what_the_exact_method_finds(tmp_path, data_file, settings):
    exact = prepare(data_file, RunDir(tmp_path / "exact"), DataConfig(dedup_method="exact"))
    lsh = prepare(data_file, RunDir(tmp_path / "lsh"), DataConfig(**settings))
    assert lsh.duplicates_removed == exact.duplicates_removed == 1
    assert read_json(RunDir(tmp_path / "lsh").duplicates) == read_json(RunDir(tmp_path / "exact").duplicates)
    assert read_json(RunDir(tmp_path / "lsh").data_stats)["dedup_method"] == "minhash"
    assert read_json(RunDir(tmp_path / "exact").data_stats)["dedup_method"] == "exact"


def test_unknown_dedup_method_is_refused(tmp_path, data_file):
    with pytest.raises(ValueError, match="dedup_method"):
        prepare(data_file, RunDir(tmp_path / "run"), DataConfig(dedup_method="fuzzy"))

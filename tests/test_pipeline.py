"""The main job end to end on the tiny preset: every phase runs from the CLI, and the test split is read
once, after training, by the final evaluation only."""

import json
import random

import pytest
from sklearn.metrics import f1_score

import redheart.data.dataset as dataset
import redheart.train.recipe as recipe
from redheart.architecture import VERDICTS
from redheart.cli import main
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir

from tiny_run import synthetic_record


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("data") / "records.jsonl"
    records = [synthetic_record(i, rng) for i in range(120)]
    for record in records:  # distinct texts, so none is a near-duplicate of another
        record["text"] += f" story number {record['id']} " + " ".join(rng.choices(["x", "y", "z", "w"], k=40))
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_pipeline_runs_every_phase_and_reads_the_test_split_once_after_training(
    data_file, tmp_path, monkeypatch, capsys
):
    run = RunDir(tmp_path / "run")
    events: list[str] = []
    test_ids: set[str] = set()

    read_records, train = dataset._read_records, recipe.train

    def logged_read(run_dir, wanted):
        if not test_ids:
            test_ids.update(read_json(run_dir.split_manifest)["test"])
        events.append("read test" if wanted & test_ids else "read other")
        return read_records(run_dir, wanted)

    def logged_train(*args, **kwargs):
        result = train(*args, **kwargs)
        events.append("trained")
        return result

    monkeypatch.setattr(dataset, "_read_records", logged_read)
    monkeypatch.setattr(recipe, "train", logged_train)
    main(
        [
            "pipeline",
            "--run",
            str(run.root),
            "--preset",
            "tiny",
            "--data",
            str(data_file),
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    printed = capsys.readouterr().out

    assert events.count("read test") == 1
    assert events.index("read test") > events.index("trained")
    for line in ("records read: 120", "baseline: linear probe", "best on validation", "EMA weights"):
        assert line in printed
    results = read_json(run.test_results)
    assert results["n"] == len(read_json(run.split_manifest)["test"])
    assert set(results["baselines"]) == {"class_prior", "mean_predictor", "linear_probe"}

    assert_predict_reproduces_the_reported_rule_f1(run, tmp_path, capsys)

    main(["evaluate", "--run", str(run.root)])  # printed again from disk, the test split not read again
    assert events.count("read test") == 1
    assert "best on validation" in capsys.readouterr().out

    # Again, nothing changed: crossover, calibration and the decision rule are up to date and the stored numbers
    # are printed.
    same = ["--data", str(data_file), "--cache", str(tmp_path / "cache")]
    main(["pipeline", "--run", str(run.root), *same])
    printed = capsys.readouterr().out
    assert printed.count("up to date") == 3 and "Test split (" in printed and "read once" in printed
    assert events.count("read test") == 1

    # Again with two more epochs: training resumes, crossover saves another final model, and the test
    # numbers on disk no longer describe it. The pipeline stops instead of printing them ...
    more = ["--set", "train.epochs=6", "--data", str(data_file), "--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as stopped:
        main(["pipeline", "--run", str(run.root), *more])
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert "Test split (" not in out and f"redheart evaluate --run {run.root} --reread-test" in err
    assert events.count("read test") == 1 and len(read_json(run.root / "test_results.json")["reads"]) == 1
    # ... and reads the test split a second time only when told to, which the results and the report record.
    main(["pipeline", "--run", str(run.root), *more, "--reread-test"])
    assert events.count("read test") == 2
    assert "test split read 2 times" in capsys.readouterr().out
    assert [r["read"] for r in read_json(run.root / "test_results.json")["reads"]] == [1, 2]
    assert "Reads of the test split: 2" in (run.report / "report.md").read_text()


def assert_predict_reproduces_the_reported_rule_f1(run: RunDir, tmp_path, capsys) -> None:
    """`redheart predict` on the test split's records, scored by macro-F1 of its verdict labels against the
    majority vote, gives the test results' "verdict F1 (rule)" of the final model, and the report prints it."""
    test_ids = set(read_json(run.split_manifest)["test"])
    records = [json.loads(line) for line in run.clean_records.read_text().splitlines()]
    test = [r for r in records if r["id"] in test_ids and r["label_scores"]]
    inputs = tmp_path / "test_texts.jsonl"
    inputs.write_text("".join(json.dumps({k: r[k] for k in ("id", "title", "text")}) + "\n" for r in test))
    capsys.readouterr()
    main(["predict", "--input", str(inputs), "--model", str(run.final_model), "--cache", str(tmp_path / "cache")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == [r["id"] for r in test]
    # Macro-F1 over the five verdicts (an absent class counts 0), against the majority vote (first on a tie).
    majority = [VERDICTS[max(range(5), key=lambda k: (r["label_scores"][VERDICTS[k]], -k))] for r in test]
    labels = [row["verdict"]["label"] for row in rows]
    f1 = f1_score(majority, labels, labels=list(VERDICTS), average="macro", zero_division=0)
    results = read_json(run.test_results)
    reported = results["models"][results["final_model"]]["decision_rule"]["verdict_macro_f1"]
    # Same weights, same embeddings, same batches of 64 in the same order: the same floats, so the same labels
    # and an F1 equal to the last bit; only the float sum of the F1 itself could differ, by float64 rounding.
    assert f1 == pytest.approx(reported, rel=1e-12, abs=1e-12)
    assert f"{reported:.3f}" in (run.report / "report.md").read_text()

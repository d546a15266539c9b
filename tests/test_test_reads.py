"""The test split's numbers stay tied to what they measured: a tiny run is evaluated, trained further and
re-selected; the old numbers are then refused, and a deliberate second read is recorded beside the first.
Each phase alone stops when its input is missing and never redoes an earlier phase's work."""

import shutil

import pytest

import redheart.data.dataset as dataset
from redheart.cli import main
from redheart.config import save_config, with_overrides
from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import sha256
from redheart.core.rundir import RunDir
from redheart.evaluate.calibration import fit_calibrators
from redheart.evaluate.decision_rule import fit_decision_rules
from redheart.evaluate.final import evaluate_test, format_results
from redheart.report.build import build_report
from redheart.select.crossover import crossover
from redheart.train.recipe import train

from tiny_run import make_run, tiny_config

SETTINGS = {
    "train.rdrop_alpha": 0.0,
    "select.refine_rounds": 1,
    "select.bootstrap_samples": 50,
    "select.shifts": (-1, 0, 1),
}


def count_test_reads(monkeypatch, run: RunDir) -> list[int]:
    """A list that gains one entry each time any test record is loaded."""
    test_ids = set(read_json(run.split_manifest)["test"])
    reads: list[int] = []
    read = dataset._read_records

    def counted(run_dir, wanted):
        if wanted & test_ids:
            reads.append(1)
        return read(run_dir, wanted)

    monkeypatch.setattr(dataset, "_read_records", counted)
    return reads


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A tiny run trained 3 epochs, with crossover and calibrators, not yet evaluated."""
    run = make_run(tmp_path_factory.mktemp("run"), n=40)
    config = tiny_config(**SETTINGS, **{"train.epochs": 3})
    save_config(config, run.config)  # what the CLI reads
    train(run, config, lr=3e-3, progress=False)
    crossover(run, config)
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    return run, config


def copy_of(run: RunDir, folder) -> RunDir:
    return RunDir(shutil.copytree(run.root, folder / "run"))


def test_evaluate_stops_with_the_phase_to_run_when_its_input_is_missing(selected, tmp_path, monkeypatch):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    reads = count_test_reads(monkeypatch, run)
    (run.calibration / "calibrators.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"run `redheart calibrate --run {run.root}` first"):
        evaluate_test(run, config)
    assert not (run.calibration / "calibrators.json").exists()  # not refitted behind the user's back
    shutil.rmtree(run.crossover)
    with pytest.raises(FileNotFoundError, match=f"run `redheart crossover --run {run.root}` first"):
        evaluate_test(run, config)
    assert not (run.crossover / "candidates.json").exists()  # crossover not re-run
    assert reads == [] and not (run.root / "test_results.json").exists()
    shutil.rmtree(run.final_model)
    with pytest.raises(FileNotFoundError, match=f"run `redheart crossover --run {run.root}` first"):
        fit_calibrators(run, config)  # calibrate, too, names the phase it needs


def test_evaluate_uses_the_calibrators_that_calibrate_wrote(selected, tmp_path):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    written = sha256(run.calibration / "calibrators.json")
    method = {n: e["method"] for n, e in read_json(run.calibration / "calibrators.json")["targets"].items()}
    results = evaluate_test(run, config)
    assert sha256(run.calibration / "calibrators.json") == written
    assert {n: e["method"] for n, e in results["calibration"].items()} == {
        n: m for n, m in method.items() if n in results["calibration"]
    }
    # Calibrators fitted for another final model are refused, not refitted.
    calibrators = read_json(run.calibration / "calibrators.json")
    calibrators["model_sha256"] = "0" * 64
    (run.calibration / "calibrators.json").write_text(__import__("json").dumps(calibrators))
    with pytest.raises(FileNotFoundError, match="fitted for another final model"):
        evaluate_test(run, config, reread=True)


def test_more_training_makes_the_test_results_stale_and_a_reread_is_recorded(selected, tmp_path, monkeypatch):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    reads = count_test_reads(monkeypatch, run)
    first = evaluate_test(run, config)
    assert reads == [1] and [r["read"] for r in first["reads"]] == [1] and first["reads"][0]["why"] == "first read"
    assert evaluate_test(run, config) == first and reads == [1]  # same artefacts: read back from disk

    longer = tiny_config(**SETTINGS, **{"train.epochs": 5})
    train(run, longer, lr=3e-3, progress=False)  # resumes at epoch 3 and trains epochs 4 and 5
    crossover(run, longer)
    fit_calibrators(run, with_overrides(longer, {"calibration.folds": 3}))
    fit_decision_rules(run, longer)
    with pytest.raises(ValueError, match="candidates changed") as refused:
        evaluate_test(run, longer)
    message = str(refused.value)
    assert f"redheart evaluate --run {run.root} --reread-test" in message and "read 2 of the test split" in message
    assert reads == [1] and read_json(run.root / "test_results.json") == first  # nothing read, nothing overwritten

    second = evaluate_test(run, longer, reread=True)
    assert reads == [1, 1]
    assert [r["read"] for r in second["reads"]] == [1, 2]
    assert second["reads"][0] == first["reads"][0]
    assert second["reads"][1]["why"].startswith("re-read on request") and "candidates" in second["reads"][1]["why"]
    assert second["reads"][1]["fingerprint"] == second["fingerprint"] != first["fingerprint"]
    printed = format_results(second)
    assert "read 2 times" in printed and "read 2 at " + second["reads"][1]["at"] in printed
    assert evaluate_test(run, longer) == second and reads == [1, 1]

    markdown = (build_report(run).parent / "report.md").read_text()
    assert "Reads of the test split: 2 (read 1 at " in markdown and "read 2 times" in markdown


def test_the_report_refuses_stale_test_numbers(selected, tmp_path):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    evaluate_test(run, config)
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 4}))  # other calibrators than the ones measured
    fit_decision_rules(run, config)
    markdown = (build_report(run).parent / "report.md").read_text()
    assert "test_results.json is stale, validation numbers only" in markdown and "calibrators changed" in markdown
    assert "Reads of the test split" not in markdown


# Slow (a CLI re-read of the test split): the refusal itself is checked by the default tests above; this one checks
# the command line's message and exit.
@pytest.mark.slow
def test_the_cli_refuses_stale_results_with_the_command_to_run(selected, tmp_path, capsys):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    evaluate_test(run, config)
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 4}))
    fit_decision_rules(run, config)
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--run", str(run.root)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "calibrators changed" in error and "--reread-test" in error
    main(["evaluate", "--run", str(run.root), "--reread-test"])
    assert "test split read 2 times" in capsys.readouterr().out
    assert len(read_json(run.root / "test_results.json")["reads"]) == 2


def test_other_bootstrap_settings_or_embeddings_make_the_test_results_stale(selected, tmp_path, monkeypatch):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    reads = count_test_reads(monkeypatch, run)
    first = evaluate_test(run, config)
    # The intervals depend on the bootstrap's samples and seed: numbers made with 50 samples are not those of 60.
    more = tiny_config(**{**SETTINGS, "select.bootstrap_samples": 60}, **{"train.epochs": 3})
    with pytest.raises(ValueError, match=r"settings changed"):
        evaluate_test(run, more)
    seeded = tiny_config(**{**SETTINGS, "select.bootstrap_seed": 1}, **{"train.epochs": 3})
    with pytest.raises(ValueError, match=r"settings changed"):
        evaluate_test(run, seeded)
    # Re-encoded inputs (here: the arrays file rewritten with one vector changed) are other inputs.
    from safetensors.numpy import load_file, save_file

    arrays = run.embeddings / read_json(run.embedding_index)["file"]
    tensors = load_file(str(arrays))
    tensors["vectors"][0, 0, 0] += 1.0
    save_file(tensors, str(arrays))
    with pytest.raises(ValueError, match=r"embeddings changed"):
        evaluate_test(run, config)
    assert reads == [1] and read_json(run.root / "test_results.json") == first


def test_another_decision_rule_makes_the_test_results_stale(selected, tmp_path, monkeypatch):
    run = copy_of(selected[0], tmp_path)
    config = selected[1]
    reads = count_test_reads(monkeypatch, run)
    first = evaluate_test(run, config)
    # The rule's F1 is measured with these class weights; other weights (an edited or re-fitted rule) give other
    # test numbers, so the stored ones no longer describe what the run folder holds.
    rules = read_json(run.decision_rule)
    rules["linear_probe"]["weights"] = [1.0, 2.0, 1.0, 1.0, 1.0]
    write_json(run.decision_rule, rules)
    with pytest.raises(ValueError, match=r"decision_rule changed"):
        evaluate_test(run, config)
    assert reads == [1] and read_json(run.root / "test_results.json") == first

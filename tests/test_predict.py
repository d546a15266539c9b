"""`redheart predict` and `redheart.load` on a tiny final model saved in code (weights untrained: only the
plumbing is tested)."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from redheart.architecture import BENTHAM_KEYS, EMOTIONS, SURD_KEYS, VERDICTS
from redheart.config import with_overrides
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import CheckpointError
from redheart.core.rundir import ModelDir
from redheart.evaluate.calibration import fit_calibrators
from redheart.evaluate.decision_rule import fit_decision_rules
from redheart.infer import Prediction, Predictor, predict_records, predict_texts, read_inputs
from redheart.model.model import RedHeartModel
from redheart.select.final_model import save_final_model

from tiny_run import make_run, tiny_config


@pytest.fixture(scope="module")
def final_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    run = make_run(root, n=60)
    config = tiny_config()
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    save_final_model(
        model,
        run.final_model,
        config,
        config.encoder.dim,
        config.encoder.max_segments,
        {"candidate": {"name": "untrained"}},
    )
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))
    fit_decision_rules(run, config)
    return run


def test_predict_gives_every_named_output_as_valid_json(final_run, tmp_path):
    texts = ["my friend said apple apple apple", "ember went home"]
    results = predict_texts(final_run.final_model, texts, cache_dir=tmp_path / "cache")
    assert len(results) == 2
    for result in json.loads(json.dumps(results)):
        verdict = result["verdict"]
        assert list(result["emotions"]) == list(EMOTIONS) and list(verdict["distribution"]) == list(VERDICTS)
        assert list(result["bentham_scores"]) == list(BENTHAM_KEYS) and list(result["surd_metrics"]) == list(SURD_KEYS)
        assert verdict["label"] in VERDICTS and verdict["argmax"] in VERDICTS
        # sum of 5 or 7 float64 probabilities after float32 softmax: 1 within float32 rounding (2^-24 each, x8)
        for dist in (result["emotions"], verdict["distribution"]):
            assert sum(dist.values()) == pytest.approx(1.0, abs=1e-6)
            assert all(0.0 <= p <= 1.0 for p in dist.values())
        scores = [*result["bentham_scores"].values(), *result["surd_metrics"].values(), result["regret_factor"]]
        assert all(0.0 <= s <= 1.0 for s in scores)
        chosen = read_json(final_run.calibrators)["targets"]
        assert result["calibration"] == {t: chosen[t]["method"] for t in ("emotions", "verdict")}


def test_calibrated_and_raw_outputs_differ_only_by_the_calibrator(final_run, tmp_path):
    predictor = Predictor(final_run.final_model, calibrated=True, cache_dir=tmp_path)
    raw = Predictor(final_run.final_model, calibrated=False, cache_dir=tmp_path)
    texts = ["cloud cloud cloud and delta"]
    calibrated, uncalibrated = predictor.fused(texts), raw.fused(texts)
    # Same weights, same inputs, same operations: equal up to numpy's default rtol 1e-7 (float64 after the model).
    np.testing.assert_allclose(calibrated["bentham_scores"], uncalibrated["bentham_scores"])
    expected = predictor.calibrators.apply("emotions", uncalibrated["emotions"])
    np.testing.assert_allclose(calibrated["emotions"], expected)


def test_inputs_from_json_lines_plain_lines_and_batches(final_run, tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": "a", "title": "Brick", "text": "brick brick"}\n\n{"text": "ember"}\n')
    plain = tmp_path / "in.txt"
    plain.write_text("first text\nsecond text\nthird text\n")
    assert read_inputs(jsonl) == [{"id": "a", "title": "Brick", "text": "brick brick"}, {"text": "ember"}]
    assert [r["text"] for r in read_inputs(plain)] == ["first text", "second text", "third text"]
    predictor = Predictor(final_run.final_model, cache_dir=tmp_path)
    one_batch = list(predict_records(predictor, read_inputs(plain), batch_size=64))
    small_batches = list(predict_records(predictor, read_inputs(plain), batch_size=2))
    # Batching changes float rounding only: a few fp32 ulps of the logits, far under 1e-5 of a probability.
    for a, b in zip(one_batch, small_batches, strict=True):
        for target in EMOTIONS:
            assert a["emotions"][target] == pytest.approx(b["emotions"][target], abs=1e-5)
    assert list(predict_records(predictor, read_inputs(jsonl)))[0]["id"] == "a"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: field 'text' must be a string"):
        read_inputs(bad)


def test_a_corrupted_or_mismatched_model_dir_fails_clearly(final_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in final_run.final_model.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    data = bytearray((broken / "group_a.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (broken / "group_a.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="group_a.safetensors: sha256 does not match"):
        predict_texts(broken, ["x"], cache_dir=tmp_path)
    (broken / "group_a.safetensors").write_bytes((final_run.final_model / "group_a.safetensors").read_bytes())
    # Calibrators of another model: the manifest fingerprint no longer matches.
    calibrators = read_json(ModelDir(broken).calibrators)
    calibrators["model_sha256"] = "0" * 64
    (ModelDir(broken).calibrators).write_text(json.dumps(calibrators))
    with pytest.raises(CheckpointError, match="fitted for another model"):
        predict_texts(broken, ["x"], cache_dir=tmp_path)
    assert predict_texts(broken, ["x"], calibrated=False, cache_dir=tmp_path)[0]["calibration"] == {
        "emotions": "none",
        "verdict": "none",
    }
    (ModelDir(broken).calibrators).unlink()
    with pytest.raises(FileNotFoundError, match="has no calibrators"):
        predict_texts(broken, ["x"], cache_dir=tmp_path)
    # A decision rule of another model is refused; a missing one names the phase that fits it.
    rule = read_json(broken / "decision_rule.json")
    (broken / "decision_rule.json").write_text(json.dumps({**rule, "model_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="decision_rule.json: fitted for another model"):
        predict_texts(broken, ["x"], calibrated=False, cache_dir=tmp_path)
    (broken / "decision_rule.json").unlink()
    with pytest.raises(FileNotFoundError, match="no decision rule; fit it on validation"):
        predict_texts(broken, ["x"], calibrated=False, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="no final-model directory"):
        predict_texts(tmp_path / "absent", ["x"])


def test_odd_texts_each_get_a_complete_prediction(final_run, tmp_path):
    odd = [
        "",
        "tab\tbell\x07 nul\x00 escape\x1b",
        "שלום, זה טקסט מימין לשמאל",
        "🙂🔥 emoji only 👍🏽",
        "나는 동생에게 다시는 돈을 빌려주지 않겠다고 말했다.",
        "word " * 400_000,
    ]
    results = predict_texts(final_run.final_model, odd, cache_dir=tmp_path / "cache")
    assert len(results) == len(odd)
    for result in results:  # sums: the bound in test_predict_gives_every_named_output_as_valid_json
        assert sum(result["emotions"].values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(result["verdict"]["distribution"].values()) == pytest.approx(1.0, abs=1e-6)
        json.dumps(result, allow_nan=False)


def test_the_verdict_label_is_the_rule_of_the_served_distribution(final_run, tmp_path):
    texts = [f"{word} {word} my friend said" for word in ("apple", "brick", "cloud", "delta", "ember")] * 4
    modes = read_json(final_run.model_files.decision_rule)["modes"]
    for calibrated, mode in ((True, "calibrated"), (False, "uncalibrated")):
        weights = np.asarray(modes[mode]["weights"])
        for result in predict_texts(final_run.final_model, texts, calibrated=calibrated, cache_dir=tmp_path):
            probs = np.asarray(list(result["verdict"]["distribution"].values()))
            assert result["verdict"]["label"] == VERDICTS[int(np.argmax(weights * probs))]
            assert result["verdict"]["argmax"] == VERDICTS[int(np.argmax(probs))]


def test_the_python_api_gives_typed_results_equal_to_the_commands(final_run, tmp_path):
    import redheart

    model = redheart.load(final_run.final_model, cache_dir=tmp_path)
    results = model.predict(["apple apple said", {"id": "b7", "title": "Brick", "text": "brick brick"}])
    assert [type(r) for r in results] == [Prediction, Prediction] and results[1].id == "b7"
    with pytest.raises(dataclasses.FrozenInstanceError):
        results[0].regret_factor = 0.5  # type: ignore[misc]
    # One batch on both sides: the same floats, so the same dicts.
    assert [r.to_dict() for r in results] == list(
        predict_records(Predictor(final_run.final_model, cache_dir=tmp_path), read_inputs_of(results, tmp_path))
    )
    assert model.predict("ember")[0].to_dict() == predict_texts(final_run.final_model, ["ember"], cache_dir=tmp_path)[0]
    with pytest.raises(ValueError, match="item 1: field 'text' must be a string"):
        model.predict(["fine", {"text": 3}])


def read_inputs_of(results, tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text('{"text": "apple apple said"}\n{"id": "b7", "title": "Brick", "text": "brick brick"}\n')
    return read_inputs(path)


def readme_block(section: str) -> str:
    """The first ```python block under the README heading `section`."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


def test_the_readme_python_example_runs(final_run, tmp_path, monkeypatch, capsys):
    code = readme_block("Python API")
    assert len(code.strip().splitlines()) == 5  # the README promises a five-line example
    monkeypatch.setenv("REDHEART_CACHE", str(tmp_path / "cache"))
    exec(compile(code.replace("runs/main/final_model", str(final_run.final_model)), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    label, distribution = printed[0].split(" ", 1)
    assert label in VERDICTS and set(json.loads(distribution.replace("'", '"'))) == set(VERDICTS)


def test_importing_the_package_loads_no_torch():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, redheart; print('torch' in sys.modules, callable(redheart.load))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "True"]

"""Calibration metrics on hand-checked examples, and the fitted methods on synthetic over-confident predictions."""

import dataclasses

import numpy as np
import pytest
import yaml

from redheart.config import PRESETS, CalibrationConfig, load_config, save_config, with_overrides
from redheart.evaluate.calibration_methods import apply_method
from redheart.evaluate.calibration_metrics import calibration_metrics
from redheart.evaluate.calibrators import Calibrators, calibration_report, fit_target


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overconfident():
    """Labels drawn from softmax(z); the model reports softmax(3 z): right on average, far too sure."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1500, 4)) * 1.5
    truth = softmax(z)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    return softmax(3 * z), np.eye(4)[labels], truth


def test_ece_mce_brier_and_nll_by_hand():
    # Hand values in float64: pytest.approx's default rel 1e-6 is far above float64 rounding (2^-53).
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    target = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    m = calibration_metrics(probs, target, n_bins=2)
    # Confidences 0.9, 0.6, 0.7, 0.8 all fall in the bin (0.5, 1]: accuracy 3/4, mean confidence 0.75.
    assert m["ece"] == pytest.approx(0.0) and m["mce"] == pytest.approx(0.0)
    m = calibration_metrics(probs, target, n_bins=10)
    # Bins: 0.9 right (gap 0.1), 0.6 wrong (0.6), 0.7 right (0.3), 0.8 right (0.2).
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    assert m["mce"] == pytest.approx(0.6)
    assert m["brier"] == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])))
    assert m["accuracy"] == pytest.approx(0.75)
    assert sum(b["count"] for b in m["bins"]) == 4 and len(m["bins"]) == 10


def test_ece_of_perfectly_calibrated_predictions_is_near_zero(overconfident):
    _, labels, truth = overconfident
    # Sampling noise only: 1,500 rows in 15 bins leave |accuracy - confidence| ~ sqrt(p(1-p)/100) ~ 0.04 per bin at
    # worst, less on average (seeded, float64: the same value on any machine).
    assert calibration_metrics(truth, labels)["ece"] < 0.04
    # Many rows whose outcome is drawn with exactly the stated confidence: only sampling noise is left.
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1.0, size=200000)
    probs = np.stack([p, 1 - p], axis=1)
    hits = rng.uniform(size=p.size) < p
    target = np.stack([hits, ~hits], axis=1).astype(float)
    assert calibration_metrics(probs, target)["ece"] < 0.01  # 200,000 rows: noise ~ sqrt(0.25 / 13,000) ~ 0.004
    # Soft targets: predicting the target distribution itself is perfectly calibrated.
    soft = softmax(rng.normal(size=(50, 7)))
    assert calibration_metrics(soft, soft)["ece"] == pytest.approx(0.0, abs=1e-12)  # float64 sums of 50 rows: ~1e-15


def test_calibration_of_overconfident_predictions_lowers_ece_and_nll(overconfident):
    probs, labels, _ = overconfident
    fitted = fit_target(("a", "b", "c", "d"), probs[:1000], labels[:1000], CalibrationConfig())
    assert fitted.params["temperature"]["temperature"] > 2.0
    assert fitted.method != "none" and fitted.cv_nll[fitted.method] < fitted.cv_nll["none"]
    calibrators = Calibrators("sha", 15, 5, {"emotions": fitted})
    # Scored on held-out rows, as the test split would be.
    report = calibration_report(
        calibrators, {"emotions": probs[1000:]}, {"emotions": labels[1000:]}, {"emotions": np.ones(500, bool)}
    )
    entry = report["targets"]["emotions"]
    for method in ("temperature", "vector", "isotonic"):
        assert entry["methods"][method]["ece"] < entry["before"]["ece"] / 2
        assert entry["methods"][method]["nll"] < entry["before"]["nll"]
    assert entry["after"] == entry["methods"][fitted.method]


def test_isotonic_output_is_a_valid_distribution(overconfident):
    probs, labels, _ = overconfident
    fitted = fit_target(("a", "b", "c", "d"), probs, labels, CalibrationConfig())
    out = apply_method("isotonic", fitted.params["isotonic"], np.vstack([probs, np.eye(4), np.full((1, 4), 0.25)]))
    assert np.all(out > 0) and np.all(out <= 1)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_calibrators_round_trip_through_json_and_bad_input_is_named(overconfident):
    probs, labels, _ = overconfident
    calibrators = Calibrators(
        "sha", 15, 5, {"verdict": fit_target(("a", "b", "c", "d"), probs, labels, CalibrationConfig())}
    )
    again = Calibrators.from_json(calibrators.to_json(), "calibrators.json")
    np.testing.assert_allclose(again.apply("verdict", probs[:5]), calibrators.apply("verdict", probs[:5]))
    with pytest.raises(ValueError, match="calibrators.json: not a valid calibrators file"):
        Calibrators.from_json({"targets": {}}, "calibrators.json")
    bad = probs[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="probabilities: row 1"):
        calibration_metrics(bad, labels[:3])
    few = fit_target(("a", "b", "c", "d"), probs[:6], labels[:6], CalibrationConfig())
    assert few.method == "none" and "too few" in few.reason


def test_calibration_settings_are_part_of_the_run_config(tmp_path):
    config = with_overrides(PRESETS["tiny"], ["calibration.folds=3"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").calibration == CalibrationConfig(folds=3)
    # A config.yaml written before the section existed loads with the defaults.
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del tree["calibration"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(tree))
    assert load_config(tmp_path / "old.yaml") == dataclasses.replace(config, calibration=CalibrationConfig())

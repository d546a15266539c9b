import json
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from redheart.scoring.bootstrap import bootstrap_ci
from redheart.scoring.metrics import (
    METRICS,
    batched_macro_f1,
    emotion_metrics,
    evaluate_predictions,
    headline,
    regression_metrics,
    verdict_metrics,
)


def one_hot(classes: list[int], width: int) -> np.ndarray:
    return np.eye(width)[classes]


def test_a_prediction_equal_to_either_tied_maximum_counts_as_right():
    target = np.array([[0.4, 0.4, 0.2, 0, 0, 0, 0]] * 3)
    probs = one_hot([0, 1, 2], 7)
    assert emotion_metrics(probs, target)["accuracy"] == pytest.approx(2 / 3)


def test_a_constant_predictor_gets_exactly_the_majority_share():
    emotions = one_hot([4, 4, 4, 2], 7) * 0.7 + 0.3 / 7
    constant = np.tile(emotions.mean(axis=0), (4, 1))
    assert emotion_metrics(constant, emotions)["accuracy"] == 0.75

    votes = np.array([[0, 5, 0, 0, 0], [1, 3, 0, 0, 0], [0, 2, 1, 0, 0], [4, 1, 0, 0, 0], [0, 9, 0, 0, 1]])
    always_other = np.tile([0.1, 0.6, 0.1, 0.1, 0.1], (5, 1))
    assert verdict_metrics(always_other, votes)["accuracy"] == 0.8


def test_a_perfect_predictor_scores_one_and_zero_error():
    emotions = np.array([[0.7, 0.1, 0.1, 0.1, 0, 0, 0], [0, 0, 0, 0, 0.2, 0.3, 0.5], [0, 0, 1.0, 0, 0, 0, 0]])
    scores = emotion_metrics(emotions, emotions)
    assert scores == {"accuracy": 1.0, "macro_f1": pytest.approx(3 / 7), "kl": pytest.approx(0.0), "n": 3}

    values = np.array([[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]])
    regression = regression_metrics(values, values, ["a", "b"])
    assert regression["mae"] == 0.0 and regression["rmse"] == 0.0
    assert regression["dims"]["b"]["pearson_r"] == pytest.approx(1.0)

    votes = np.array([[3, 1, 0, 0, 0], [0, 0, 0, 2, 0]])
    verdict = verdict_metrics(votes / votes.sum(axis=1, keepdims=True), votes)
    assert verdict["accuracy"] == 1.0
    # The cross-entropy of a perfect prediction is the entropy of the votes, not zero.
    assert verdict["cross_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / 2)


def test_macro_f1_matches_a_hand_computation_over_all_seven_classes():
    true, predicted = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: P = R = 1/2 -> F1 0.5; class 1: P 2/3, R 1 -> F1 0.8; class 2 and the four unseen classes: 0.
    scores = emotion_metrics(one_hot(predicted, 7), one_hot(true, 7))
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8) / 7)


def test_kl_and_regression_errors_match_hand_computations():
    target = np.array([[0.5, 0.5, 0, 0, 0, 0, 0]])
    probs = np.array([[0.25, 0.75, 0, 0, 0, 0, 0]])
    assert emotion_metrics(probs, target)["kl"] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))

    regression = regression_metrics(np.array([[0.0], [0.0], [1.0]]), np.array([[0.3], [0.0], [0.6]]), ["regret"])
    assert regression["dims"]["regret"]["mae"] == pytest.approx(0.7 / 3)
    assert regression["rmse"] == pytest.approx(math.sqrt(0.25 / 3))


def test_pearson_is_null_when_a_side_is_constant_and_the_result_stays_valid_json():
    target = np.array([[0.2, 0.1], [0.4, 0.1], [0.9, 0.1]])
    pred = np.array([[0.5, 0.3], [0.5, 0.1], [0.5, 0.2]])
    dims = regression_metrics(pred, target, ["constant_pred", "constant_target"])["dims"]
    assert dims["constant_pred"]["pearson_r"] is None
    assert dims["constant_target"]["pearson_r"] is None
    json.dumps(dims, allow_nan=False)


def all_targets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "emotions": rng.dirichlet(np.ones(7), size=n),
        "bentham_scores": rng.random((n, 4)),
        "regret_factor": rng.random((n, 1)),
        "surd_metrics": rng.random((n, 4)),
        "verdict": rng.integers(0, 5, size=(n, 5)) + np.eye(5)[rng.integers(0, 5, size=n)],
    }


def test_masking_excludes_rows_and_a_target_without_rows_reports_n_zero():
    targets = all_targets(6)
    preds = {name: values.copy() for name, values in targets.items()}
    preds["verdict"] = targets["verdict"] / targets["verdict"].sum(axis=1, keepdims=True)
    keep = np.array([True, True, False, True, False, True])
    present = {name: keep for name in targets}
    present["surd_metrics"] = np.zeros(6, dtype=bool)
    # Wrong predictions and even NaN targets on rows that are not present must not change anything.
    preds["emotions"][~keep] = np.roll(preds["emotions"][~keep], 1, axis=1)
    preds["bentham_scores"][~keep] += 0.5
    targets["regret_factor"][~keep] = np.nan

    metrics = evaluate_predictions(preds, targets, present)
    assert metrics["emotions"]["accuracy"] == 1.0 and metrics["emotions"]["n"] == 4
    assert metrics["bentham_scores"]["mae"] == 0.0
    assert metrics["regret_factor"]["n"] == 4
    assert metrics["verdict"]["accuracy"] == 1.0
    assert metrics["surd_metrics"] == {"n": 0}


def test_headline_averages_mae_over_the_nine_regression_dimensions():
    targets = all_targets(5)
    preds = dict(targets)
    preds["verdict"] = targets["verdict"] / targets["verdict"].sum(axis=1, keepdims=True)
    preds["regret_factor"] = targets["regret_factor"] + 0.9  # MAE 0.9 on one dimension of nine
    metrics = evaluate_predictions(preds, targets, {name: np.ones(5, dtype=bool) for name in targets})

    # Macro-F1 over every class, absent ones scoring 0, computed by scikit-learn from the argmax labels.
    def macro_f1(name: str, classes: int) -> float:
        true, predicted = targets[name].argmax(1), preds[name].argmax(1)
        return f1_score(true, predicted, labels=range(classes), average="macro", zero_division=0)

    emotion_f1, verdict_f1 = macro_f1("emotions", 7), macro_f1("verdict", 5)
    assert headline(metrics) == {
        "emotion_accuracy": 1.0,
        "emotion_macro_f1": pytest.approx(emotion_f1),
        "verdict_accuracy": 1.0,
        "verdict_macro_f1": pytest.approx(verdict_f1),
        "regression_mae": pytest.approx(0.1),
    }
    # A perfect predictor: F1 1 on each class seen, 0 on the others.
    assert emotion_f1 == pytest.approx(len(set(targets["emotions"].argmax(1))) / 7)
    assert headline({"emotions": {"n": 0}})["emotion_accuracy"] is None


def test_bad_input_names_the_field_and_the_problem():
    with pytest.raises(ValueError, match=r"emotions prediction: expected shape \(N, 7\)"):
        emotion_metrics(np.ones((2, 6)), np.ones((2, 7)) / 7)
    with pytest.raises(ValueError, match="verdict target: every row needs"):
        verdict_metrics(np.ones((1, 5)) / 5, np.zeros((1, 5)))
    with pytest.raises(ValueError, match="emotions: 3 rows have this target but there is no prediction"):
        targets = all_targets(3)
        evaluate_predictions({}, targets, {name: np.ones(3, dtype=bool) for name in targets})


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(1)
    widths = []
    for n_rows in (100, 2000):
        correct = rng.random(n_rows) < 0.7
        low, high = bootstrap_ci(lambda idx, correct=correct: correct[idx].mean(), n_rows, n_boot=300)
        assert low <= correct.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_batched_gives_the_same_interval_and_undefined_resamples_are_dropped():
    values = np.arange(50.0)
    single = bootstrap_ci(lambda idx: values[idx].mean(), 50, n_boot=200, seed=3)
    batched = bootstrap_ci(lambda idx: values[idx].mean(axis=1), 50, n_boot=200, seed=3, batched=True)
    assert single == pytest.approx(batched)
    assert bootstrap_ci(lambda idx: None, 50, n_boot=20) == (None, None)


def test_batched_macro_f1_matches_sklearn_on_every_resample():
    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    true[:3] = -1  # rows without the target are left out
    idx = rng.integers(0, 60, size=(20, 60))
    batched = batched_macro_f1(true, predicted, 5)(idx)
    for row, value in zip(idx, batched):
        keep = true[row] >= 0
        expected = f1_score(
            true[row][keep], predicted[row][keep], labels=list(range(5)), average="macro", zero_division=0
        )
        assert value == pytest.approx(expected)  # float64 counts both ways


def test_every_declared_metric_on_the_resample_of_every_row_once_is_its_point_value():
    rng = np.random.default_rng(4)
    n = 40
    targets = all_targets(n)
    preds = {name: value + rng.normal(scale=0.3, size=value.shape) for name, value in targets.items()}
    for name in ("emotions", "verdict"):
        preds[name] = rng.dirichlet(np.ones(targets[name].shape[1]), size=n)
    present = {name: rng.random(n) < 0.7 for name in targets} | {"surd_metrics": np.zeros(n, dtype=bool)}
    point = evaluate_predictions(preds, targets, present)
    every_row_once = np.arange(n)[None, :]
    for metric in METRICS.values():
        resampled = metric.resampled(preds, targets, present)
        assert resampled is not None, metric.key
        # Sums of at most 40 float64 terms taken in another order: within 40 * 2.2e-16 relative, so 1e-12 holds.
        assert resampled(every_row_once)[0] == pytest.approx(metric.value(point), rel=1e-12), metric.key
    absent = {name: np.zeros(n, dtype=bool) for name in targets}
    assert all(metric.resampled(preds, targets, absent) is None for metric in METRICS.values())

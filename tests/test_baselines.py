import numpy as np
import pytest
from scipy.special import rel_entr, softmax
from sklearn.linear_model import LogisticRegression

from redheart.scoring.baselines import compute_baselines, soft_logistic_regression
from redheart.scoring.metrics import headline


def linear_data_set(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features and all five targets, each a (noisy) linear function of the features."""
    weights = np.random.default_rng(0).normal(size=(8, 7 + 5 + 9))
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 8))
    z = features @ weights
    votes = np.stack([rng.multinomial(12, p) for p in softmax(2 * z[:, 7:12], axis=1)])
    regression = 0.5 + 0.05 * z[:, 12:] + rng.normal(scale=0.01, size=(n, 9))
    targets = {
        "emotions": softmax(z[:, :7], axis=1),
        "verdict": votes,
        "bentham_scores": regression[:, :4],
        "regret_factor": regression[:, 4:5],
        "surd_metrics": regression[:, 5:],
    }
    return features, targets, {name: np.ones(n, dtype=bool) for name in targets}


def test_the_linear_probe_beats_the_prior_when_the_labels_are_linear_in_the_features():
    results = compute_baselines(*linear_data_set(600, seed=1), *linear_data_set(300, seed=2))
    prior, probe = headline(results["class_prior"]), headline(results["linear_probe"])
    # Effect sizes, not float tolerances: the labels are linear in the features by construction, the data come from
    # numpy's seeded PCG64 and everything is float64, so these margins hold on any machine.
    assert probe["emotion_accuracy"] > prior["emotion_accuracy"] + 0.3
    assert probe["verdict_accuracy"] > prior["verdict_accuracy"] + 0.3
    assert probe["regression_mae"] < prior["regression_mae"] / 3
    assert results["linear_probe"]["emotions"]["kl"] < results["class_prior"]["emotions"]["kl"] / 3
    assert results["linear_probe"]["regret_factor"]["dims"]["regret_factor"]["pearson_r"] > 0.9


def test_soft_target_logistic_regression_reproduces_the_distributions():
    def true_distribution(x: np.ndarray) -> np.ndarray:
        return softmax(x * np.array([2.0, 0.0, -2.0]) + np.array([0.0, 1.0, 0.0]), axis=1)

    features = np.random.default_rng(3).normal(size=(400, 1))
    distributions = true_distribution(features)
    test_features = np.linspace(-2, 2, 41)[:, None]
    truth = true_distribution(test_features)

    def mean_kl(probs: np.ndarray) -> float:
        return float(rel_entr(truth, probs).sum(axis=1).mean())

    soft = mean_kl(soft_logistic_regression(features, distributions).predict_proba(test_features))
    prior = mean_kl(np.tile(distributions.mean(axis=0), (41, 1)))
    # Fitting the argmax alone learns the boundaries but grows overconfident: the soft fit must do better.
    hard_model = LogisticRegression(C=1.0, max_iter=500).fit(features, distributions.argmax(axis=1))
    hard = mean_kl(hard_model.predict_proba(test_features))
    # The soft fit's model class contains the true distribution: its KL is estimation error from 400 rows.
    assert soft < 0.01
    assert soft < prior / 10
    assert soft < hard / 3


def test_class_prior_and_mean_predictor_predict_the_mean_of_the_present_training_rows():
    features, targets, present = linear_data_set(50, seed=4)
    present["regret_factor"] = np.arange(50) < 25
    targets["regret_factor"][25:] = np.nan  # rows without the target must not reach any fit
    eval_features, eval_targets, eval_present = linear_data_set(20, seed=5)

    results = compute_baselines(features, targets, present, eval_features, eval_targets, eval_present)
    regret_mean = targets["regret_factor"][:25].mean()
    expected_mae = np.abs(eval_targets["regret_factor"] - regret_mean).mean()
    assert results["class_prior"]["regret_factor"]["mae"] == pytest.approx(expected_mae)  # float64 both ways
    assert results["class_prior"]["regret_factor"]["dims"]["regret_factor"]["pearson_r"] is None
    assert results["mean_predictor"] == results["class_prior"]
    assert np.isfinite(results["linear_probe"]["regret_factor"]["mae"])


def test_the_baselines_are_deterministic():
    train, evaluation = linear_data_set(200, seed=6), linear_data_set(50, seed=7)
    assert compute_baselines(*train, *evaluation) == compute_baselines(*train, *evaluation)


def test_a_target_without_training_rows_is_a_clear_error():
    features, targets, present = linear_data_set(30, seed=8)
    present["surd_metrics"] = np.zeros(30, dtype=bool)
    with pytest.raises(ValueError, match="surd_metrics: no training row has this target"):
        compute_baselines(features, targets, present, features, targets, present)


def test_targets_that_do_not_match_the_feature_rows_are_a_clear_error():
    features, targets, present = linear_data_set(30, seed=9)
    targets["verdict"] = targets["verdict"][:29]
    with pytest.raises(ValueError, match=r"train_targets\['verdict'\]: 29 rows for 30 feature rows"):
        compute_baselines(features, targets, present, features, targets, present)

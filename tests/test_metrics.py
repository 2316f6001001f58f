"""Our numpy metrics agree with scikit-learn; intervals behave as intervals should."""

from __future__ import annotations

import numpy as np
import pytest

from medvit_edge.evaluation.metrics import (
    auc_one_vs_rest,
    calibration,
    classification_metrics,
)
from medvit_edge.runtime.policy import softmax

sklearn_metrics = pytest.importorskip("sklearn.metrics")
LABELS = ["benign", "malignant", "normal"]


def _predictions(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = rng.choice(3, size=n, p=[0.56, 0.27, 0.17])
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[truth] * rng.random((n, 1))
    return truth, logits.argmax(1), softmax(logits)


def test_classification_metrics_match_sklearn(rng: np.random.Generator) -> None:
    truth, predicted, _ = _predictions(rng)
    ours = classification_metrics(truth, predicted, LABELS)
    assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))
    assert ours["balanced_accuracy"] == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(truth, predicted)
    )
    assert ours["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="macro"))
    recall = sklearn_metrics.recall_score(truth, predicted, average=None)
    precision = sklearn_metrics.precision_score(truth, predicted, average=None)
    for i, label in enumerate(LABELS):
        assert ours["per_class"][label]["recall"] == pytest.approx(recall[i])
        assert ours["per_class"][label]["precision"] == pytest.approx(precision[i])
    assert ours["confusion_matrix"] == sklearn_metrics.confusion_matrix(truth, predicted).tolist()


def test_auc_matches_sklearn_with_ties(rng: np.random.Generator) -> None:
    truth, _, probabilities = _predictions(rng)
    probabilities = np.round(probabilities, 2)  # force ties
    ours = auc_one_vs_rest(truth, probabilities)
    for k in range(3):
        assert ours[k] == pytest.approx(sklearn_metrics.roc_auc_score(truth == k, probabilities[:, k]))


def test_specificity_is_true_negative_rate(rng: np.random.Generator) -> None:
    truth, predicted, _ = _predictions(rng)
    ours = classification_metrics(truth, predicted, LABELS)
    for k, label in enumerate(LABELS):
        negatives = truth != k
        assert ours["per_class"][label]["specificity"] == pytest.approx((predicted[negatives] != k).mean())


def test_calibration_error_is_zero_when_confidence_equals_accuracy() -> None:
    probabilities = np.array([[0.75, 0.25]] * 4)
    assert calibration(probabilities, [0, 0, 0, 1])["ece"] == pytest.approx(0.0)
    assert calibration(probabilities, [1, 1, 1, 1])["ece"] == pytest.approx(0.75)

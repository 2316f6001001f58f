"""Classification metrics in numpy, shared by training, infer and evaluate (no sklearn needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(
        numerator, denominator, out=np.zeros(numerator.shape, dtype=float), where=denominator > 0
    )


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/specificity/F1.

    A class absent from ``y_true`` has recall 0 and is left out of balanced accuracy,
    as scikit-learn does.
    """
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    true_pos = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    total = matrix.sum()
    recall = _safe_divide(true_pos, support)
    precision = _safe_divide(true_pos, predicted)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    true_neg = total - support - predicted + true_pos
    specificity = _safe_divide(true_neg, total - support)
    present = support > 0
    return {
        "n": int(total),
        "accuracy": float(true_pos.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "specificity": float(specificity[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": matrix.tolist(),
    }


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """One level of keys (``recall_benign`` ...), as the HF Trainer logs them."""
    flat = {key: metrics[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
    for label, values in metrics["per_class"].items():
        flat[f"recall_{label}"] = values["recall"]
        flat[f"precision_{label}"] = values["precision"]
    return flat


def auc_one_vs_rest(y_true: Sequence[int], probabilities: np.ndarray) -> list[float | None]:
    """ROC AUC of each class against the rest (Mann-Whitney U with tied ranks averaged);
    None for a class that is absent or the only one present."""
    y = np.asarray(y_true)
    aucs: list[float | None] = []
    for k in range(probabilities.shape[1]):
        positive = y == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            aucs.append(None)
            continue
        ranks = _average_ranks(probabilities[:, k])
        aucs.append(float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)))
    return aucs


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def bootstrap_ci(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy and each class's recall (resampling images)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(samples, len(y)))
    correct = (y == p)[draws]
    accuracy = correct.mean(axis=1)
    recalls = []
    for k in range(num_classes):
        in_class = (y == k)[draws]
        hits = (correct & in_class).sum(axis=1)
        totals = in_class.sum(axis=1)
        recalls.append(hits[totals > 0] / totals[totals > 0])
    low, high = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def interval(values: np.ndarray) -> list[float] | None:
        return (
            [float(np.percentile(values, low)), float(np.percentile(values, high))] if len(values) else None
        )

    return {"accuracy": interval(accuracy), "recall": [interval(r) for r in recalls], "level": level}


def calibration(probabilities: np.ndarray, y_true: Sequence[int], bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of the top-1 confidence, and the reliability-diagram bins."""
    y = np.asarray(y_true)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if not members.any():
            continue
        accuracy, mean_conf = float(correct[members].mean()), float(confidence[members].mean())
        ece += members.mean() * abs(accuracy - mean_conf)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(members.sum()),
                "accuracy": accuracy,
                "confidence": mean_conf,
            }
        )
    return {"ece": float(ece), "bins": table}

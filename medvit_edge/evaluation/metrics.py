"""Classification metrics in numpy, shared by training, infer and evaluate (no sklearn needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


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


def recall_text(per_class: dict[str, Any]) -> str:
    """``benign 0.812, normal n/a (no labelled images)``: a class without a labelled image has no
    recall to report (its 0 in the metrics is a placeholder, not a measurement)."""
    return ", ".join(
        f"{label} {values['recall']:.3f}" if values.get("support", 1) else f"{label} n/a (no labelled images)"
        for label, values in per_class.items()
    )


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


def negative_log_likelihood(probabilities: np.ndarray, y_true: Sequence[int]) -> float:
    """Mean -log p(true class); probabilities floored at 1e-12 so one confident miss is finite."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return float("nan")
    return float(-np.log(np.maximum(probabilities[np.arange(len(y)), y], 1e-12)).mean())


def brier_score(probabilities: np.ndarray, y_true: Sequence[int]) -> float:
    """Mean squared distance between the probability vector and the one-hot truth (0 = perfect)."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return float("nan")
    onehot = np.eye(probabilities.shape[1])[y]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (None for 0 trials).

    Unlike the percentile bootstrap it does not collapse at the edges: 120/120 gives
    (0.969, 1.000), not (1.000, 1.000)."""
    from statistics import NormalDist  # here: the runtime imports this module and never needs it

    if trials <= 0:
        return None
    z = NormalDist().inv_cdf((1 + level) / 2)  # the standard normal quantile
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def binomial_upper_bound(errors: int, trials: int, delta: float) -> float:
    """One-sided Clopper–Pearson upper bound on an error rate: the largest ``p`` under which
    seeing at most ``errors`` in ``trials`` still has probability >= ``delta``. With probability
    at least ``1 - delta`` the true rate is below it (1.0 for 0 trials)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if trials <= 0 or errors >= trials:
        return 1.0
    i = np.arange(errors + 1)
    lg = math.lgamma
    log_comb = np.array([lg(trials + 1) - lg(k + 1) - lg(trials - k + 1) for k in range(errors + 1)])

    def cdf(p: float) -> float:  # P(Binomial(trials, p) <= errors), summed in log space
        terms = log_comb + i * math.log(p) + (trials - i) * math.log1p(-p)
        top = terms.max()
        return float(math.exp(top) * np.exp(terms - top).sum())

    low, high = errors / trials, 1.0
    for _ in range(60):  # bisection: the CDF falls as p rises; 2^-60 is far below any use
        middle = (low + high) / 2
        if middle >= 1.0:  # the bound is within a float step of 1 (log1p(-1) is undefined)
            break
        low, high = (middle, high) if middle > 0 and cdf(middle) >= delta else (low, middle)
    return high


def bootstrap_auc_and_balanced_accuracy(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile-bootstrap intervals (resampling images) for what has no closed-form interval:
    each class's one-vs-rest AUC and the balanced accuracy of the argmax labels.

    Proportions (accuracy, recall, specificity, coverage) use ``wilson_interval`` instead: the
    percentile bootstrap collapses to a zero-width interval at 0/n and n/n."""
    y = np.asarray(y_true, dtype=int)
    classes = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(samples, len(y)))
    weights = np.stack([np.bincount(row, minlength=len(y)) for row in draws]).astype(float)  # (S, N)
    balanced = _bootstrap_balanced(y, probabilities.argmax(1), weights, classes)
    aucs = [_bootstrap_auc(y == k, probabilities[:, k], weights) for k in range(classes)]
    return {
        "balanced_accuracy": _percentile(balanced, level),
        "auc": [_percentile(values, level) for values in aucs],
        "level": level,
        "samples": samples,
    }


def _bootstrap_balanced(
    y: np.ndarray, predicted: np.ndarray, weights: np.ndarray, classes: int
) -> np.ndarray:
    """Balanced accuracy of each resample (mean recall over the classes present in it)."""
    recalls = []
    for k in range(classes):
        totals = weights[:, y == k].sum(axis=1)
        hits = weights[:, (y == k) & (predicted == k)].sum(axis=1)
        recalls.append(np.where(totals > 0, hits / np.maximum(totals, 1), np.nan))
    stacked = np.stack(recalls, axis=1)
    present = ~np.isnan(stacked)
    return np.nansum(stacked, axis=1) / np.maximum(present.sum(axis=1), 1)


def _bootstrap_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each resample: P(score of a positive > score of a negative), ties counted half,
    with every image weighted by how often the resample drew it (exact, no re-ranking)."""
    if positive.all() or not positive.any():
        return np.empty(0)
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (P, Q)
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    auc = np.einsum("sp,pq,sq->s", w_pos, wins, w_neg)
    return auc[pairs > 0] / pairs[pairs > 0]


def _percentile(values: np.ndarray, level: float) -> tuple[float, float] | None:
    if len(values) == 0:
        return None
    low, high = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def roc_curve(positive: Sequence[bool], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest ROC: (false-positive rate, true-positive rate, threshold) at every distinct
    score, from "nothing positive" (threshold +inf) to "everything positive"."""
    is_pos = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
    tp = np.cumsum(sorted_pos)[last_of_tie]
    fp = np.cumsum(~sorted_pos)[last_of_tie]
    tpr = np.r_[0.0, tp / max(int(is_pos.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~is_pos).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, sorted_scores[last_of_tie]]


def risk_coverage(confidence: np.ndarray, correct: Sequence[bool]) -> dict[str, np.ndarray]:
    """Selective prediction: accept the images whose confidence is at least a threshold, for every
    distinct threshold (high to low). ``coverage`` = accepted share, ``risk`` = error share among
    the accepted, ``accepted`` = how many."""
    right = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="mergesort")
    sorted_conf = confidence[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_conf))[0], len(confidence) - 1]
    accepted = last_of_tie + 1
    errors = np.cumsum(~right[order])[last_of_tie]
    return {
        "threshold": sorted_conf[last_of_tie],
        "accepted": accepted,
        "coverage": accepted / max(len(confidence), 1),
        "risk": errors / accepted,
    }

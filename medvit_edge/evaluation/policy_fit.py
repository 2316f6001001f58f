"""Fitting a ``DecisionPolicy`` on validation logits: temperature scaling, operating points and
the (certified) refer rule. What the policy *does* with probabilities, and how a stored one is
read, is runtime code (``medvit_edge.runtime.policy``); this module runs at export only."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.evaluation.metrics import (
    binomial_upper_bound,
    brier_score,
    calibration,
    negative_log_likelihood,
    risk_coverage,
)
from medvit_edge.evaluation.refer_split import held_out_split, split_record
from medvit_edge.runtime.policy import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    DecisionPolicy,
    Goal,
    OperatingPoint,
    ReferRule,
    check_refer_settings,
    parse_operating_point,
    softmax,
)

logger = logging.getLogger(__name__)
_GOLDEN = (math.sqrt(5) - 1) / 2


def _parse_for(spec: str, labels: Sequence[str]) -> tuple[str, Goal, float]:
    """``parse_operating_point``, and its label must be one of the model's."""
    positive, goal, target = parse_operating_point(spec)
    if positive not in labels:
        raise UserError(
            f"operating point {spec!r}: {positive!r} is not a label of this model ({', '.join(labels)})"
        )
    return positive, goal, target


def _check_fit_inputs(values: np.ndarray, label_ids: Any) -> np.ndarray:
    y = np.asarray(label_ids)
    if values.ndim != 2 or len(values) != len(y):
        raise ValueError(f"expected (N, C) values for {len(y)} labels, got shape {values.shape}")
    if len(y) == 0:
        raise UserError("no labelled validation images to fit the decision policy on")
    if not np.isfinite(values).all():
        raise UserError("the validation logits/probabilities are not finite: cannot fit a decision policy")
    if y.min() < 0 or y.max() >= values.shape[1]:
        raise ValueError("label ids outside the model's classes")
    return y.astype(np.int64)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Exact mean -log softmax(logits / T)[y] (log-sum-exp; no probability floor, which would
    flatten the objective for confident models)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, label_ids: Sequence[int] | np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64)
    y = _check_fit_inputs(z, label_ids)
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while high - low > 1e-7:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = _nll(z, y, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = _nll(z, y, math.exp(b))
    temperature = math.exp((low + high) / 2)
    if temperature < MIN_TEMPERATURE * 1.01 or temperature > MAX_TEMPERATURE * 0.99:
        logger.warning(
            "temperature %.3g is at the edge of [%g, %g]: the validation images are too few or too "
            "easy (all right with a wide margin) to calibrate on",
            temperature,
            MIN_TEMPERATURE,
            MAX_TEMPERATURE,
        )
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def _next_float32(value: float) -> float:
    """The smallest float32 above ``value``: runtime probabilities are float32, so a threshold
    here separates ``value`` from everything above it exactly as on validation."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def choose_operating_point(
    probabilities: np.ndarray, label_ids: Sequence[int] | np.ndarray, labels: Sequence[str], spec: str
) -> OperatingPoint:
    """The threshold for ``spec`` on calibrated validation probabilities; ``UserError`` when the
    label is unknown, a class is missing from validation, or no threshold meets the goal."""
    positive, goal, target = _parse_for(spec, labels)
    p = np.asarray(probabilities, dtype=np.float64)
    y = _check_fit_inputs(p, label_ids)
    k = list(labels).index(positive)
    pos, neg = np.sort(p[y == k, k]), np.sort(p[y != k, k])
    if len(pos) == 0 or len(neg) == 0:
        missing = f"no {positive} images" if len(pos) == 0 else f"only {positive} images"
        raise UserError(
            f"operating point {spec!r}: the validation images hold {missing}; cannot choose a threshold"
        )
    if goal == "sensitivity":  # the highest threshold keeping ceil(target * positives) above it
        threshold = float(pos[::-1][math.ceil(target * len(pos) - 1e-9) - 1])
    else:  # the lowest threshold keeping ceil(target * negatives) below it
        threshold = _next_float32(neg[math.ceil(target * len(neg) - 1e-9) - 1])
        if threshold > 1.0:
            best = float((neg < 1.0).mean())
            raise UserError(
                f"operating point {spec!r}: no threshold on p({positive}) reaches specificity {target:g} "
                f"on validation (the best is {best:.3f}: negatives at probability 1)"
            )
    validation = {
        "sensitivity": float((pos >= threshold).mean()),
        "specificity": float((neg < threshold).mean()),
        "images": len(y),
        "positives": len(pos),
        "negatives": len(neg),
    }
    return OperatingPoint(positive, goal, target, threshold, validation)


def choose_refer_rule(
    probabilities: np.ndarray,
    label_ids: Sequence[int] | np.ndarray,
    target_risk: float,
    *,
    labels: Sequence[str] | None = None,
    operating_point: OperatingPoint | None = None,
    confidence: float = 0.0,
) -> ReferRule:
    """The refer threshold accepting the most validation images whose error among the accepted
    ones is at most ``target_risk``. Errors are counted on the decisions the policy makes: with
    ``operating_point`` (and ``labels``) its decisions, else the argmax.

    ``confidence`` 0: the error is met on the validation images (empirical). ``confidence`` c > 0:
    the error is certified for new images, with probability c (see ``_certified``)."""
    check_refer_settings(target_risk, confidence)
    p = np.asarray(probabilities, dtype=np.float64)
    y = _check_fit_inputs(p, label_ids)
    names = list(labels) if labels is not None else [str(i) for i in range(p.shape[1])]
    base = DecisionPolicy(operating_points=(operating_point,) if operating_point else ())
    right = base.decision_indices(p, names) == y
    # accept the images at or above each distinct confidence (a cut never splits a tie)
    curve = risk_coverage(p.max(axis=1), right)
    best, bound = (
        _certified(curve, target_risk, confidence) if confidence else (_empirical(curve, target_risk), None)
    )
    accepted, n = int(curve["accepted"][best]), len(y)
    validation = {
        "coverage": accepted / n,
        "risk": float(curve["risk"][best]),
        "images": n,
        "accepted": accepted,
    }
    if bound is not None:
        validation["risk_bound"] = bound
    return ReferRule(float(curve["threshold"][best]), target_risk, validation, confidence)


def _empirical(curve: dict[str, np.ndarray], target_risk: float) -> int:
    risks, counts = curve["risk"], curve["accepted"]
    meeting = np.nonzero(risks <= target_risk + 1e-12)[0]
    if not len(meeting):
        lowest = int(np.lexsort((-counts, risks))[0])  # the lowest risk, then the most accepted
        raise UserError(
            f"--refer-risk {target_risk:g}: no refer threshold reaches it on the validation images; the "
            f"lowest risk among accepted cases is {risks[lowest]:.3f} "
            f"(accepting {counts[lowest]}/{counts[-1]})"
        )
    return int(meeting[-1])  # the curve accepts more images at every step: the last one covers most


def _certified(curve: dict[str, np.ndarray], target_risk: float, confidence: float) -> tuple[int, float]:
    """Selection with guaranteed risk (Geifman & El-Yaniv 2017, "Selective classification for deep
    neural networks"): a binary search over the thresholds, each tested by its one-sided
    Clopper–Pearson bound at ``(1 - confidence) / steps``; the union bound over the ``steps``
    tests makes "risk on new images from the same distribution <= target" hold with probability
    ``confidence`` for the one returned. The search starts at the fewest accepted images that
    could ever certify the target (a count that needs no label), so it does not spend its steps on
    thresholds too strict to pass. Returns (curve index, its bound)."""
    counts, errors = curve["accepted"], np.rint(curve["risk"] * curve["accepted"]).astype(int)
    images = int(counts[-1])
    steps = max(1, math.ceil(math.log2(len(counts) + 1)))
    delta = (1 - confidence) / steps
    where = f"--refer-risk {target_risk:g} at --refer-confidence {confidence:g}"
    if target_risk <= 0:
        raise UserError(f"{where}: a risk of 0 can never be certified; give a risk above 0")
    # with no error among m accepted the bound is 1 - delta^(1/m): below the target only from here
    fewest = math.ceil(math.log(delta) / math.log1p(-target_risk))
    if fewest > images:
        raise UserError(
            f"{where}: certifying it needs at least {fewest} accepted validation images without an error, "
            f"and there are {images}; use more validation images, a larger --refer-risk, or "
            "--refer-confidence 0 for the empirical rule"
        )
    low, high, best, tested = int(np.searchsorted(counts, fewest)), len(counts) - 1, None, []
    for _ in range(steps):
        if low > high:
            break
        middle = (low + high + 1) // 2
        bound = binomial_upper_bound(int(errors[middle]), int(counts[middle]), delta)
        tested.append((bound, middle))
        if bound <= target_risk:
            best, low = (middle, bound), middle + 1
        else:
            high = middle - 1
    if best is None:
        bound, index = min(tested)
        raise UserError(
            f"{where}: no refer threshold can be certified on these {images} validation images; the best "
            f"bound reached is {bound:.3f} (accepting {counts[index]}). Use more validation images, a "
            "larger --refer-risk, or --refer-confidence 0 for the empirical rule"
        )
    return best


def _calibration_stats(probabilities: np.ndarray, y: np.ndarray, suffix: str) -> dict[str, float]:
    return {
        f"nll_{suffix}": round(negative_log_likelihood(probabilities, y), 6),
        f"ece_{suffix}": round(calibration(probabilities, y)["ece"], 6),
        f"brier_{suffix}": round(brier_score(probabilities, y), 6),
    }


def fit_policy(
    logits: np.ndarray,
    label_ids: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    operating_points: Sequence[str] = (),
    refer_risk: float | None = None,
    split: str = "validation",
    *,
    calibrate: bool = True,
    refer_confidence: float = 0.0,
) -> DecisionPolicy:
    """Temperature (unless ``calibrate`` is False), then each operating point and the refer rule
    on the calibrated probabilities. A certified refer rule is certified on a seeded held-out part
    of the images (refer_split); ``fitted_on`` records the split, the number of images and
    NLL/ECE/Brier before and after scaling."""
    z = np.asarray(logits, dtype=np.float64)
    y = _check_fit_inputs(z, label_ids)
    if z.shape[1] != len(labels):
        raise ValueError(f"{z.shape[1]} logit columns for {len(labels)} labels")
    for spec in operating_points:
        _parse_for(spec, labels)  # every spelling and label checked before any fitting
    # a certified rule is certified on images that fitted neither T nor the points (refer_split)
    held_out = refer_risk is not None and refer_confidence > 0 and (calibrate or bool(operating_points))
    fit, certify = held_out_split(len(y)) if held_out else (np.arange(len(y)), np.arange(len(y)))
    temperature = fit_temperature(z[fit], y[fit]) if calibrate else 1.0
    scaled = DecisionPolicy(temperature)
    probabilities = scaled.probabilities(np.asarray(logits, dtype=np.float32))
    points = tuple(
        choose_operating_point(probabilities[fit], y[fit], labels, spec) for spec in operating_points
    )
    refer = None
    if refer_risk is not None:
        applied = points[0] if points else None
        refer = choose_refer_rule(
            probabilities[certify],
            y[certify],
            refer_risk,
            labels=labels,
            operating_point=applied,
            confidence=refer_confidence,
        )
    fitted_on = {
        "split": split,
        "images": len(y),
        "calibrated": calibrate,
        **_calibration_stats(softmax(np.asarray(logits, dtype=np.float32)), y, "before"),
        **_calibration_stats(probabilities, y, "after"),
        **(split_record(fit, certify) if held_out else {}),
    }
    return DecisionPolicy(temperature, points, refer, fitted_on)

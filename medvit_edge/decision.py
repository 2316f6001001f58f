"""Decision support: calibrated probabilities, operating points and a "refer" rule, in the model.

A ``DecisionPolicy`` is fitted once at export, on the validation split's reference (PyTorch
fp32) logits, and stamped into every variant's metadata (key ``decision_policy``), so every
variant on every device turns its probabilities into decisions with the same numbers:

1. **Temperature scaling** (Guo et al. 2017): one scalar ``T``, probabilities
   ``softmax(logits / T)``, fitted by minimising the validation negative log-likelihood (a 1-D
   golden-section search on ``log T`` in [0.05, 20]; the NLL is convex in ``1/T``, so the search
   finds the minimum). It changes no argmax label, only how confident the probabilities say they
   are. Raw logits stay available (``Classifier.logits``/``run``).
2. **Operating points**: one-vs-rest thresholds on the calibrated probability of one class,
   e.g. ``malignant-sensitivity=0.95`` = the highest threshold whose validation sensitivity is at
   least 0.95 (``-specificity=0.9``: the lowest threshold whose validation specificity is at least
   0.9). The first one is applied: a case is ``malignant`` when ``p(malignant) >= threshold``,
   otherwise the most probable of the other classes. Each records the validation sensitivity and
   specificity it was chosen at.
3. **Selective prediction**: ``refer`` (hand the case to a radiologist) when the calibrated top
   probability is below a threshold, chosen as the one that accepts the most validation images
   while the error among the accepted ones stays at or below a target risk (e.g. 0.05). Refer is
   checked first, so an unsure case goes to a radiologist even when the operating point would
   have flagged it: both ``refer`` and a positive flag put the case in front of a human, and an
   unsure flag is exactly the case a radiologist should read. (Flag-first would make every false
   positive of a high-sensitivity point an error no refer threshold can remove.)

Why a refer threshold and not a split-conformal prediction set: the triage screen shows one
decision per image, and the integrator needs a bounded error among the cases the model decides
on its own. Conformal prediction guarantees that a *set* of labels covers the truth with a chosen
probability; it says nothing about the error of single decisions, and a set such as
{benign, malignant} is not a decision a triage list can act on.

What is guaranteed, plainly: the operating points meet their goals **on the validation images
they were chosen on** (empirical). The refer rule is **certified** by default: with
``confidence`` c (export's ``--refer-confidence``, 0.9) the threshold is the one selection with
guaranteed risk (Geifman & El-Yaniv 2017) picks, so that with probability c over the draw of the
validation images the error *rate* among accepted new images from the same distribution (same
scanners, same population) is at most the target. That guarantee assumes the confidence function
was fixed before the certifying images were seen, so ``fit_policy`` fits the temperature and the
operating points on one part of the validation set and certifies the refer rule on the other (a
seeded split, recorded in ``fitted_on``: medvit_edge.refer_split). A finite batch of new images can still show
more errors than that rate, and nothing is promised under a shift (another scanner or hospital).
It needs validation images: at 5% risk about 90 accepted ones without an error (86 for 157
validation images, more with errors), and export says so when there are too few. ``confidence`` 0
is the empirical rule, whose error on new images often exceeds the target (in 47 of 100
simulated validation sets in the tests). How every rule holds on new images is measured by
``medvit-edge evaluate``, which reports the test sensitivity, specificity, coverage and risk with
confidence intervals.

numpy only: this is runtime code.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.metrics import (
    binomial_upper_bound,
    brier_score,
    calibration,
    negative_log_likelihood,
    risk_coverage,
    softmax,
)
from medvit_edge.refer_split import held_out_split, split_record

logger = logging.getLogger(__name__)

REFER = "refer"  # the decision when the model hands the case to a radiologist
Goal = Literal["sensitivity", "specificity"]
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_SPEC = re.compile(r"^(?P<positive>.+)-(?P<goal>[a-z]+)=(?P<target>[^=]+)$")
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class OperatingPoint:
    """A one-vs-rest threshold on the calibrated probability of ``positive``."""

    positive: str
    goal: Goal
    target: float
    threshold: float  # chosen on validation
    validation: dict[str, float] = field(default_factory=dict)  # sensitivity, specificity, images...

    @property
    def name(self) -> str:
        """The CLI spelling, e.g. ``malignant-sensitivity=0.95``."""
        return f"{self.positive}-{self.goal}={self.target:g}"


@dataclass(frozen=True)
class ReferRule:
    """Refer when the calibrated top probability is below ``threshold``."""

    threshold: float
    target_risk: float  # at most this share of errors among accepted cases
    validation: dict[str, float] = field(default_factory=dict)  # coverage, risk, images, accepted
    # 0: the risk holds on the validation images; c > 0: with probability c it holds on new images
    # from the same distribution (validation["risk_bound"] is the bound that certified it)
    confidence: float = 0.0


@dataclass(frozen=True)
class DecisionPolicy:
    """Default: temperature 1, argmax, never refer (what a file without a policy does)."""

    temperature: float = 1.0
    operating_points: tuple[OperatingPoint, ...] = ()  # the first one is applied
    refer: ReferRule | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)  # split, images, NLL/ECE/Brier before/after

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or (
            self.temperature <= 0
        ):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / T)``, (N, C) float32; at T = 1 exactly ``softmax(logits)``."""
        logits = np.asarray(logits)
        return softmax(logits if self.temperature == 1.0 else logits / self.temperature)

    def decision_indices(self, probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Per row the index of the decided label, -1 for ``refer`` (see ``decide``)."""
        p = np.asarray(probabilities, dtype=np.float64)  # float32 values compare exactly
        if p.ndim != 2 or p.shape[1] != len(labels):
            raise ValueError(f"expected probabilities of shape (N, {len(labels)}), got {p.shape}")
        chosen = p.argmax(axis=1)
        positive = np.zeros(len(p), dtype=bool)
        if self.operating_points:
            point = self.operating_points[0]
            k = _label_index(labels, point.positive)
            positive = p[:, k] >= point.threshold
            others = p.copy()
            others[:, k] = -np.inf
            chosen = np.where(positive, k, others.argmax(axis=1))
        if self.refer is not None:  # unsure cases go to a radiologist, flagged or not
            chosen = np.where(p.max(axis=1, initial=0.0) < self.refer.threshold, -1, chosen)
        return chosen.astype(np.int64)

    def decide(self, probabilities: np.ndarray, labels: Sequence[str]) -> list[str]:
        """Calibrated probabilities (N, C) -> per row: ``refer`` when the top probability is below
        the refer threshold; else the first operating point's positive label when its probability
        reaches the threshold; else the argmax label (over the other classes when an operating
        point said "not positive")."""
        return [REFER if i < 0 else labels[i] for i in self.decision_indices(probabilities, labels)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "operating_points": [
                {
                    "positive": p.positive,
                    "goal": p.goal,
                    "target": p.target,
                    "threshold": p.threshold,
                    "validation": dict(p.validation),
                }
                for p in self.operating_points
            ],
            "refer": None
            if self.refer is None
            else {
                "threshold": self.refer.threshold,
                "target_risk": self.refer.target_risk,
                "confidence": self.refer.confidence,
                "validation": dict(self.refer.validation),
            },
            "fitted_on": dict(self.fitted_on),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "decision_policy") -> DecisionPolicy:
        """Strict: wrong types, unknown keys, thresholds outside [0, 1], a temperature that is not
        a positive finite number, or an unknown goal -> ``MetadataError`` naming ``source``."""
        from medvit_edge.policy_json import policy_from_dict  # keeps this module small

        return policy_from_dict(data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "decision_policy") -> DecisionPolicy:
        from medvit_edge.policy_json import policy_from_json

        return policy_from_json(text, source)

    def describe(self) -> list[tuple[str, str]]:
        """(name, text) rows for ``info`` and logs."""
        fitted = self.fitted_on
        text = f"{self.temperature:.4g}"
        if "nll_before" in fitted and "nll_after" in fitted:
            text += (
                f" (fitted on {fitted.get('images', '?')} {fitted.get('split', '')} images: NLL "
                f"{fitted['nll_before']:.3f} -> {fitted['nll_after']:.3f}, ECE "
                f"{fitted.get('ece_before', math.nan):.3f} -> {fitted.get('ece_after', math.nan):.3f})"
            )
        rows = [("temperature", text if self.temperature != 1.0 or fitted else "1 (not calibrated)")]
        for i, point in enumerate(self.operating_points):
            v = point.validation
            rows.append(
                (
                    "operating point" + (" (applied)" if i == 0 else ""),
                    f"{point.name}: p({point.positive}) >= {point.threshold:.4g} (validation "
                    f"sensitivity {v.get('sensitivity', math.nan):.3f}, "
                    f"specificity {v.get('specificity', math.nan):.3f})",
                )
            )
        if not self.operating_points:
            rows.append(("operating point", "none: the most probable label"))
        if self.refer is None:
            rows.append(("refer", "never"))
        else:
            v, rule = self.refer.validation, self.refer
            held = f" on {fitted['certify_images']} held-out images" if "certify_images" in fitted else ""
            certified = (
                f", at most {v['risk_bound']:.3f} with probability {rule.confidence:g}{held}"
                if rule.confidence and "risk_bound" in v
                else ""
            )
            rows.append(
                (
                    "refer",
                    f"when the top probability < {rule.threshold:.4g} (target risk {rule.target_risk:g}; "
                    f"validation coverage {v.get('coverage', math.nan):.3f}, "
                    f"risk {v.get('risk', math.nan):.3f}{certified})",
                )
            )
        return rows


def _label_index(labels: Sequence[str], label: str) -> int:
    try:
        return list(labels).index(label)
    except ValueError:
        raise ValueError(f"the decision policy names {label!r}, not a label ({', '.join(labels)})") from None


# -- fitting, on validation ---------------------------------------------------------------------


def parse_operating_point(spec: str) -> tuple[str, Goal, float]:
    """``"malignant-sensitivity=0.95"`` -> ("malignant", "sensitivity", 0.95); ``UserError`` else."""
    match = _SPEC.match(spec.strip())
    goals = get_args(Goal)
    hint = (
        "write it as LABEL-sensitivity=T or LABEL-specificity=T with 0 < T <= 1, "
        "e.g. malignant-sensitivity=0.95"
    )
    if match is None or match["goal"] not in goals:
        raise UserError(f"operating point {spec!r}: {hint}")
    try:
        target = float(match["target"])
    except ValueError:
        raise UserError(f"operating point {spec!r}: {match['target']!r} is not a number; {hint}") from None
    if not 0 < target <= 1:
        raise UserError(f"operating point {spec!r}: the target must be in (0, 1], got {target:g}")
    return match["positive"], match["goal"], target  # type: ignore[return-value]


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
    if not 0 <= target_risk < 1:
        raise UserError(f"--refer-risk must be in [0, 1), got {target_risk:g}")
    if not 0 <= confidence < 1:
        raise UserError(f"--refer-confidence must be in [0, 1), got {confidence:g}")
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
    on the calibrated probabilities of the same images. ``fitted_on`` records the split, the
    number of images and NLL/ECE/Brier before and after scaling."""
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

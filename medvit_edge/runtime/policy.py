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
seeded split, recorded in ``fitted_on``: medvit_edge/evaluation/refer_split.py). A finite batch
of new images can still show more errors than that rate, and nothing is promised under a shift
(another scanner or hospital).
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

from medvit_edge.errors import MetadataError, UserError

logger = logging.getLogger(__name__)

REFER = "refer"  # the decision when the model hands the case to a radiologist
Goal = Literal["sensitivity", "specificity"]
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_SPEC = re.compile(r"^(?P<positive>.+)-(?P<goal>[a-z]+)=(?P<target>[^=]+)$")


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
        return policy_from_dict(data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "decision_policy") -> DecisionPolicy:
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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_refer_settings(risk: float | None, confidence: float) -> None:
    """``--refer-risk`` and ``--refer-confidence`` in [0, 1): checked before any fitting."""
    if risk is not None and not 0 <= risk < 1:
        raise UserError(f"--refer-risk must be in [0, 1), got {risk:g}")
    if not 0 <= confidence < 1:
        raise UserError(f"--refer-confidence must be in [0, 1), got {confidence:g}")


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


# -- strict reading of a stored policy: nothing is guessed --------------------------------------

_POLICY_KEYS = {"temperature", "operating_points", "refer", "fitted_on"}
_POINT_KEYS = {"positive", "goal", "target", "threshold", "validation"}
_REFER_KEYS = {"threshold", "target_risk", "validation"}
_REFER_OPTIONAL = frozenset({"confidence"})  # files made before the certified rule have no confidence: 0


def policy_from_json(text: str, source: str) -> DecisionPolicy:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError, TypeError) as exc:  # ValueError: also 5000-digit integers
        raise MetadataError(f"{source}: metadata 'decision_policy' is not valid JSON ({exc})") from exc
    return policy_from_dict(data, source)


def policy_from_dict(data: Any, source: str) -> DecisionPolicy:
    where = f"{source}: metadata 'decision_policy'"
    _object(data, _POLICY_KEYS, where)
    temperature = _number(data["temperature"], f"{where} temperature")
    if temperature <= 0:
        raise MetadataError(f"{where} temperature must be positive, got {temperature:g}")
    points = data["operating_points"]
    if not isinstance(points, list):
        raise MetadataError(f"{where} operating_points must be a JSON list")
    refer = data["refer"]
    fitted_on = data["fitted_on"]
    _check_fitted_on(fitted_on, f"{where} fitted_on")
    return DecisionPolicy(
        temperature=temperature,
        operating_points=tuple(_point(p, f"{where} operating point {i + 1}") for i, p in enumerate(points)),
        refer=None if refer is None else _refer(refer, f"{where} refer"),
        fitted_on=fitted_on,
    )


def _point(data: Any, where: str) -> OperatingPoint:
    _object(data, _POINT_KEYS, where)
    positive, goal = data["positive"], data["goal"]
    if not isinstance(positive, str) or not positive:
        raise MetadataError(f"{where}: 'positive' must be a label name")
    if goal not in get_args(Goal):
        raise MetadataError(f"{where}: goal {goal!r} is not one of {', '.join(get_args(Goal))}")
    target = _number(data["target"], f"{where} target")
    if not 0 < target <= 1:
        raise MetadataError(f"{where}: target must be in (0, 1], got {target:g}")
    threshold = _unit(data["threshold"], f"{where} threshold")
    validation = _numbers(data["validation"], where)
    if not {"sensitivity", "specificity"} <= validation.keys():
        raise MetadataError(f"{where}: 'validation' must give the sensitivity and specificity")
    return OperatingPoint(positive, goal, target, threshold, validation)


def _refer(data: Any, where: str) -> ReferRule:
    _object(data, _REFER_KEYS, where, optional=_REFER_OPTIONAL)
    threshold = _unit(data["threshold"], f"{where} threshold")
    risk = _unit(data["target_risk"], f"{where} target_risk")
    confidence = _unit(data.get("confidence", 0.0), f"{where} confidence")
    validation = _numbers(data["validation"], where)
    if confidence >= 1:
        raise MetadataError(f"{where}: confidence must be below 1, got {confidence:g}")
    bound = validation.get("risk_bound")
    if confidence > 0 and (bound is None or not 0 <= bound <= risk):
        raise MetadataError(
            f"{where}: a certified rule (confidence {confidence:g}) needs validation.risk_bound in "
            f"[0, target_risk {risk:g}], got {bound!r}"
        )
    return ReferRule(threshold, risk, validation, confidence)


def _object(data: Any, keys: set[str], where: str, optional: frozenset[str] = frozenset()) -> None:
    if not isinstance(data, dict):
        raise MetadataError(f"{where} must be a JSON object")
    missing, unknown = sorted(keys - data.keys()), sorted(data.keys() - keys - optional)
    if missing or unknown:
        what = "; ".join(
            text
            for text in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(unknown)} (made by a newer medvit-edge?)" if unknown else "",
            )
            if text
        )
        raise MetadataError(f"{where}: {what}")


def _check_fitted_on(value: Any, where: str) -> None:
    """Free-form provenance, but what is shown as a number must be one."""
    if not isinstance(value, dict):
        raise MetadataError(f"{where} must be a JSON object")
    for key, item in value.items():
        if (
            key == "images"
            or key.endswith(("_images", "_seed"))
            or key.startswith(("nll_", "ece_", "brier_"))
        ):
            _number(item, f"{where} {key!r}")
        elif not isinstance(item, (str, bool)):
            raise MetadataError(f"{where} {key!r} must be a string or true/false")


def _number(value: Any, where: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else None
    except OverflowError:  # a 400-digit integer
        number = None
    if number is None or not math.isfinite(number):
        raise MetadataError(f"{where} must be a finite JSON number, got {str(value)[:40]}")
    return number


def _unit(value: Any, where: str) -> float:
    number = _number(value, where)
    if not 0 <= number <= 1:
        raise MetadataError(f"{where} must be in [0, 1], got {number:g}")
    return number


def _numbers(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise MetadataError(f"{where}: 'validation' must be a JSON object")
    checked = {str(key): _number(number, f"{where} validation {key!r}") for key, number in value.items()}
    return {key: value[key] if isinstance(value[key], int) else number for key, number in checked.items()}

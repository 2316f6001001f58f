"""Strict reading of a ``decision_policy`` (JSON) into ``medvit_edge.decision.DecisionPolicy``.

A policy decides what a triage list shows, so nothing is guessed: a wrong type, a missing or
unknown key (a newer policy feature this runtime would silently not apply), a threshold
outside [0, 1], a temperature that is not a positive finite number or an unknown goal is a
``MetadataError`` naming the file, never a default.
"""

from __future__ import annotations

import json
import math
from typing import Any, get_args

from medvit_edge.decision import DecisionPolicy, Goal, OperatingPoint, ReferRule
from medvit_edge.metadata import MetadataError

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

"""What ``evaluate`` reports about a model's decision policy, per variant, on the
evaluated split: calibration before/after the stored temperature, test sensitivity/specificity
at each stored operating point, the stored refer rule's coverage and accepted accuracy, a
risk–coverage table, and disagreement in *decisions* (not only labels) with a reference.

Every proportion gets a Wilson interval (``metrics.wilson_interval``): it stays honest at 0/n
and n/n, where the percentile bootstrap collapses to a zero-width interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medvit_edge.evaluation.metrics import (
    brier_score,
    calibration,
    negative_log_likelihood,
    risk_coverage,
    wilson_interval,
)
from medvit_edge.runtime.policy import REFER, DecisionPolicy, softmax

WILSON = "wilson"
# Rows of the risk–coverage table: accept when the calibrated top probability is at least ...
CONFIDENCE_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# ... and the most a threshold chosen on this split could accept at these risks (optimistic).
RISK_STEPS = (0.02, 0.05, 0.10)


@dataclass
class Proportion:
    """successes / trials with its 95% interval and the method that gave it (value and interval
    None for 0 trials: report.json stays strict JSON, no NaN)."""

    value: float | None
    successes: int
    trials: int
    low: float | None
    high: float | None
    method: str = WILSON


def proportion(successes: int, trials: int, level: float = 0.95) -> Proportion:
    interval = wilson_interval(int(successes), int(trials), level)
    low, high = interval if interval else (None, None)
    value = float(successes / trials) if trials else None
    return Proportion(value, int(successes), int(trials), low, high)


@dataclass
class CalibrationScores:
    ece: float
    nll: float
    brier: float


@dataclass
class CalibrationComparison:
    """Before: softmax of the raw logits. After: the stored policy's probabilities (softmax of
    logits / T). ``temperature`` None: the model stores none (after = before)."""

    temperature: float | None
    before: CalibrationScores
    after: CalibrationScores


@dataclass
class OperatingPointResult:
    name: str
    positive: str
    threshold: float
    validation: dict[str, float]  # what it was chosen at
    sensitivity: Proportion  # on the evaluated split
    specificity: Proportion


@dataclass
class ReferResult:
    """The stored refer rule as the runtime applies it (``policy.decide``) on the evaluated split."""

    threshold: float
    target_risk: float
    validation: dict[str, float]
    coverage: Proportion  # accepted (not referred) / images
    accepted_accuracy: Proportion  # decisions equal to the truth / accepted
    confidence: float = 0.0  # the rule's certification level (0: empirical, validation only)


@dataclass
class RiskCoverageRow:
    rule: str  # "confidence >= 0.90" or "risk <= 5% (chosen on this split)"
    threshold: float | None  # None: no threshold keeps the risk within the target
    coverage: Proportion
    accepted_accuracy: Proportion | None  # None when nothing is accepted


@dataclass
class DecisionSummary:
    """The decisions a variant makes with its stored policy, on the evaluated split."""

    policy_stored: bool  # False: the default policy (argmax, temperature 1, never refer)
    operating_points: list[OperatingPointResult]
    refer: ReferResult | None
    decision_accuracy: Proportion  # decisions equal to the truth / decisions that are not "refer"
    counts: dict[str, int]  # how many images got each decision
    risk_coverage: list[RiskCoverageRow]
    aurc: float  # area under the risk–coverage curve (lower is better)
    agreement: Proportion | None = None  # same decision as the decision reference / images
    reference: str = ""


@dataclass
class VariantDecisions:
    calibration: CalibrationComparison
    summary: DecisionSummary
    decisions: list[str] = field(default_factory=list)


def is_default(policy: DecisionPolicy) -> bool:
    return policy == DecisionPolicy()


def evaluate_policy(
    logits: np.ndarray, truth: np.ndarray, labels: list[str], policy: DecisionPolicy
) -> VariantDecisions:
    """Everything this module reports for one variant's logits under ``policy``."""
    probabilities = np.asarray(policy.probabilities(logits))
    decisions = list(policy.decide(probabilities, labels))
    truth_labels = [labels[int(t)] for t in truth]
    accepted = [d != REFER for d in decisions]
    right = sum(d == t for d, t, a in zip(decisions, truth_labels, accepted) if a)
    counts = {name: decisions.count(name) for name in [*labels, REFER] if decisions.count(name)}
    # what the policy decides when nothing is referred (operating point applied): the decisions
    # a refer threshold accepts or not, as the stored rule was chosen
    unreferred = replace(policy, refer=None).decision_indices(probabilities, labels)
    unreferred_correct = unreferred == truth
    summary = DecisionSummary(
        policy_stored=not is_default(policy),
        operating_points=operating_point_results(probabilities, truth, labels, policy),
        refer=_refer_result(policy, decisions, truth_labels),
        decision_accuracy=proportion(right, sum(accepted)),
        counts=counts,
        risk_coverage=risk_coverage_table(probabilities, truth, unreferred_correct),
        aurc=area_under_risk_coverage(probabilities, truth, unreferred_correct),
    )
    return VariantDecisions(compare_calibration(logits, truth, policy), summary, decisions)


def compare_calibration(
    logits: np.ndarray, truth: np.ndarray, policy: DecisionPolicy
) -> CalibrationComparison:
    # fit_policy(calibrate=False) records fitted_on but keeps T = 1: no temperature stored
    stored = policy.temperature != 1.0 or bool(policy.fitted_on.get("calibrated"))
    return CalibrationComparison(
        temperature=float(policy.temperature) if stored else None,
        before=_scores(softmax(logits), truth),
        after=_scores(np.asarray(policy.probabilities(logits)), truth),
    )


def _scores(probabilities: np.ndarray, truth: np.ndarray) -> CalibrationScores:
    return CalibrationScores(
        ece=calibration(probabilities, truth)["ece"],
        nll=negative_log_likelihood(probabilities, truth),
        brier=brier_score(probabilities, truth),
    )


def operating_point_results(
    probabilities: np.ndarray, truth: np.ndarray, labels: list[str], policy: DecisionPolicy
) -> list[OperatingPointResult]:
    """Test sensitivity and specificity of each stored one-vs-rest threshold (all of them, not
    only the first one that ``decide`` applies)."""
    results = []
    for point in policy.operating_points:  # labels were checked against the file's at load
        k = labels.index(point.positive)
        called = probabilities[:, k] >= point.threshold
        positive = truth == k
        results.append(
            OperatingPointResult(
                name=point.name,
                positive=point.positive,
                threshold=float(point.threshold),
                validation=dict(point.validation),
                sensitivity=proportion(int((called & positive).sum()), int(positive.sum())),
                specificity=proportion(int((~called & ~positive).sum()), int((~positive).sum())),
            )
        )
    return results


def _refer_result(
    policy: DecisionPolicy, decisions: list[str], truth_labels: list[str]
) -> ReferResult | None:
    rule = policy.refer
    if rule is None:
        return None
    accepted = [(d, t) for d, t in zip(decisions, truth_labels) if d != REFER]
    return ReferResult(
        threshold=float(rule.threshold),
        target_risk=float(rule.target_risk),
        validation=dict(rule.validation),
        coverage=proportion(len(accepted), len(decisions)),
        accepted_accuracy=proportion(sum(d == t for d, t in accepted), len(accepted)),
        confidence=float(rule.confidence),
    )


def risk_coverage_table(
    probabilities: np.ndarray, truth: np.ndarray, correct: np.ndarray | None = None
) -> list[RiskCoverageRow]:
    """Coverage and accuracy of the accepted decisions (``correct``: the policy's decisions
    without refer; default the argmax labels) when only images whose calibrated top probability
    reaches a threshold are accepted: at fixed thresholds, then at the lowest threshold keeping
    this split's risk within each of RISK_STEPS (chosen on the evaluated split itself, so
    optimistic: the stored refer rule was chosen on validation)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth if correct is None else correct
    rows = [_accept_row(f"confidence >= {t:.2f}", t, confidence, correct) for t in CONFIDENCE_STEPS]
    curve = risk_coverage(confidence, correct)
    for risk in RISK_STEPS:
        within = np.nonzero(curve["risk"] <= risk)[0]
        threshold = float(curve["threshold"][within[-1]]) if len(within) else None
        rows.append(_accept_row(f"risk <= {risk:.0%} (chosen on this split)", threshold, confidence, correct))
    return rows


def _accept_row(
    rule: str, threshold: float | None, confidence: np.ndarray, correct: np.ndarray
) -> RiskCoverageRow:
    accepted = confidence >= (threshold if threshold is not None else np.inf)
    n = int(accepted.sum())
    return RiskCoverageRow(
        rule=rule,
        threshold=threshold,
        coverage=proportion(n, len(confidence)),
        accepted_accuracy=proportion(int(correct[accepted].sum()), n) if n else None,
    )


def area_under_risk_coverage(
    probabilities: np.ndarray, truth: np.ndarray, correct: np.ndarray | None = None
) -> float:
    """Mean risk over coverages 1/N .. N/N (images tied in confidence are accepted together)."""
    correct = probabilities.argmax(axis=1) == truth if correct is None else correct
    curve = risk_coverage(probabilities.max(axis=1), correct)
    sizes = np.diff(np.r_[0, curve["accepted"]])
    return float((curve["risk"] * sizes).sum() / max(int(sizes.sum()), 1))


def disagreements(
    keys: list[str],
    truth_labels: list[str],
    chosen: dict[str, list[str]],
    probabilities: dict[str, np.ndarray],
    reference: str,
    what: str = "decision",
) -> list[dict[str, Any]]:
    """Images where a variant's ``what`` (its label, or its policy's decision) differs from the
    reference's, with both calibrated probability vectors."""
    found = []
    ref = chosen[reference]
    for name, made in chosen.items():
        for i, (mine, theirs) in enumerate(zip(made, ref)):
            if mine != theirs:
                found.append(
                    {
                        "variant": name,
                        "image": keys[i],
                        "truth": truth_labels[i],
                        f"reference_{what}": theirs,
                        f"variant_{what}": mine,
                        "reference_probs": [round(float(p), 4) for p in probabilities[reference][i]],
                        "variant_probs": [round(float(p), 4) for p in probabilities[name][i]],
                    }
                )
    return found


def describe_policy(policy: DecisionPolicy, source: str) -> dict[str, Any]:
    """The stored policy in a few fields for the report (``source``: the file it was read from)."""
    return {
        "source": source,
        "stored": not is_default(policy),
        "temperature": float(policy.temperature),
        "operating_points": [p.name for p in policy.operating_points],
        "refer_threshold": policy.refer.threshold if policy.refer else None,
        "refer_target_risk": policy.refer.target_risk if policy.refer else None,
        "refer_confidence": policy.refer.confidence if policy.refer else None,
        "refer_risk_bound": policy.refer.validation.get("risk_bound") if policy.refer else None,
        "fitted_on": dict(policy.fitted_on),
    }

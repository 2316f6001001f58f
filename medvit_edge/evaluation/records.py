"""The evaluation report's records: one row per variant, the whole report, and which interval
method each quantity gets. ``evaluate`` fills them; ``report`` and ``report_plots`` render them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medvit_edge.evaluation.decision_report import CalibrationComparison, DecisionSummary
from medvit_edge.runtime.manifest import to_json_dict

BOOTSTRAP = "percentile bootstrap (images resampled)"
# Which interval each reported quantity gets: closed-form Wilson for every proportion (honest at
# 0/n and n/n), the bootstrap only where no closed form exists.
INTERVAL_METHODS = {
    "accuracy": "wilson",
    "recall (sensitivity)": "wilson",
    "specificity": "wilson",
    "operating-point sensitivity/specificity": "wilson",
    "coverage": "wilson",
    "accepted accuracy": "wilson",
    "decision agreement": "wilson",
    "balanced accuracy": BOOTSTRAP,
    "auc": BOOTSTRAP,
}


@dataclass
class VariantEvaluation:
    """One row of the report."""

    variant: str
    status: str
    size_mb: float
    accuracy: float
    accuracy_ci: tuple[float, float]
    balanced_accuracy: float
    macro_f1: float
    recall: dict[str, float]
    recall_ci: dict[str, tuple[float, float]]
    specificity: dict[str, float]
    auc: dict[str, float | None]
    ece: float
    confusion_matrix: list[list[int]]
    latency_p50_ms: float
    latency_p95_ms: float
    memory_mb: float
    throughput_batch: int
    throughput_ips: float
    parity_reference: str = ""
    max_abs_logit_diff: float = 0.0
    top1_agreement: float = 1.0
    # 95% intervals: Wilson for proportions, percentile bootstrap for AUC and balanced accuracy
    balanced_accuracy_ci: tuple[float, float] | None = None
    specificity_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    auc_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    calibration: CalibrationComparison | None = None  # before/after the stored temperature
    decision: DecisionSummary | None = None  # what its stored policy decides

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


@dataclass
class EvaluationReport:
    run_dir: str
    data: str
    split: str | None
    images: int
    skipped: list[str]
    labels: list[str]
    reference: str
    machine: str
    variants: list[VariantEvaluation]
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    data_flags: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    interval_methods: dict[str, str] = field(default_factory=lambda: dict(INTERVAL_METHODS))
    policy: dict[str, Any] = field(default_factory=dict)  # the reference's stored decision policy
    decision_reference: str = ""  # decisions are compared with this variant's
    decision_disagreements: list[dict[str, Any]] = field(default_factory=list)
    policy_mismatch: list[str] = field(default_factory=list)  # variants storing another policy
    input_size: int = 0  # the model's input side (what the latency column's tensors are)
    # overlap with the run's own training images (an external --data set)
    training_overlap: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)

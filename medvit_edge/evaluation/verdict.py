"""Is the model any good? Accuracy beside the majority-class baseline, said out loud.

On imbalanced data a model that always answers the commonest class scores that class's share
(BUSI test: 0.558 for "benign"); an accuracy at or below it, or a class never recognised (recall
0), means the model has learnt nothing usable, however green the rest of the output looks.
train, export and evaluate print the same line and the same warnings (on stderr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvit_edge.evaluation.metrics import recall_text

if TYPE_CHECKING:
    from medvit_edge.evaluation.records import EvaluationReport


@dataclass(frozen=True)
class Verdict:
    accuracy: float
    baseline: float  # accuracy of always answering ``majority`` on the same images
    majority: str
    zero_recall: tuple[str, ...]  # classes present in the images and never recognised
    images: int

    @property
    def weak(self) -> bool:
        return self.accuracy <= self.baseline or bool(self.zero_recall)


def verdict(metrics: dict[str, Any]) -> Verdict | None:
    """From ``metrics.classification_metrics`` output; None without images."""
    per_class = metrics.get("per_class") or {}
    support = {label: int(values.get("support", 0)) for label, values in per_class.items()}
    total = sum(support.values())
    if not total:
        return None
    majority = max(support, key=lambda label: support[label])
    zero = tuple(k for k, v in per_class.items() if support[k] > 0 and float(v["recall"]) == 0.0)
    return Verdict(float(metrics["accuracy"]), support[majority] / total, majority, zero, total)


def baseline_text(found: Verdict) -> str:
    return f"majority-class baseline {found.baseline:.3f}: always '{found.majority}'"


def warnings_for(found: Verdict, where: str) -> list[str]:
    """One line per problem, for stderr; ``where`` names the images (``the test split``)."""
    lines = []
    if found.accuracy <= found.baseline:
        lines.append(
            f"warning: accuracy {found.accuracy:.3f} on {where} does not beat always answering "
            f"'{found.majority}' ({found.baseline:.3f}): this model is not usable yet (train "
            "longer or on more data, or check the recipe)"
        )
    if found.zero_recall:
        lines.append(
            f"warning: recall 0 on {where} for {', '.join(found.zero_recall)}: the model never "
            "recognises that class"
        )
    return lines


def result_line(metrics: dict[str, Any], split: str) -> tuple[str, list[str]]:
    """train's result line (accuracy, baseline, balanced accuracy, recalls) and its warnings."""
    found = verdict(metrics)
    recalls = recall_text(metrics["per_class"])
    baseline = f" ({baseline_text(found)})" if found else ""
    line = (
        f"{split} accuracy {metrics['accuracy']:.3f}{baseline}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}; recall: {recalls}"
    )
    where = f"the {split} split ({found.images} images)" if found else split
    return line, warnings_for(found, where) if found else []


def row_verdict(accuracy: float, recall: dict[str, float], matrix: list[list[int]]) -> Verdict | None:
    """A verdict from one evaluated variant (its confusion matrix gives the class counts)."""
    per_class = {
        label: {"recall": recall[label], "support": int(sum(matrix[i]))} for i, label in enumerate(recall)
    }
    return verdict({"accuracy": accuracy, "per_class": per_class})


def evaluation_verdict(report: EvaluationReport) -> list[str]:
    """evaluate's baseline line (stdout) and its warnings (lines starting "warning:", stderr):
    the reference row's, another variant's only where the reference's do not already say it, and
    the overlap of an external set with the training images."""
    from medvit_edge.io.duplicates import overlap_warning

    found = {
        row.variant: row_verdict(row.accuracy, row.recall, row.confusion_matrix) for row in report.variants
    }
    first = next(iter(found.values()), None)
    if first is None:
        return []
    lines = [
        f"majority-class baseline on these {first.images} images: {first.baseline:.3f} "
        f"(always '{first.majority}')"
    ]
    for name, one in found.items():
        if one is not None and one.weak and (name == report.variants[0].variant or not first.weak):
            lines += [
                line.replace("warning: ", f"warning: {name}: ", 1)
                for line in warnings_for(one, "these images")
            ]
    warning = overlap_warning(report.training_overlap, report.data)
    return lines + ([warning] if warning else [])

"""Is the model any good? Accuracy beside the majority-class baseline, said out loud.

On imbalanced data a model that always answers the commonest class scores that class's share
(BUSI test: 0.558 for "benign"); an accuracy at or below it, or a class never recognised (recall
0), means the model has learnt nothing usable, however green the rest of the output looks.
train, export and evaluate print the same line and the same warnings (on stderr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in metrics["per_class"].items())
    baseline = f" ({baseline_text(found)})" if found else ""
    line = (
        f"{split} accuracy {metrics['accuracy']:.3f}{baseline}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}; recall: {recalls}"
    )
    where = f"the {split} split ({found.images} images)" if found else split
    return line, warnings_for(found, where) if found else []

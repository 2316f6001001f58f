"""`evaluate` on the tiny phantom model: every column, sklearn-equal metrics, plots, and the
manifest's int8 numbers equal to what evaluate measures through the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvit_edge.evaluate import EvaluateConfig, evaluate

from .conftest import needs_export

pytestmark = [needs_export]
COLUMNS = [
    "variant",
    "status",
    "size_mb",
    "accuracy",
    "accuracy_ci",
    "balanced_accuracy",
    "recall",
    "recall_ci",
    "specificity",
    "auc",
    "ece",
    "max_abs_logit_diff",
    "top1_agreement",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_ips",
    "memory_mb",
    "confusion_matrix",
]


@pytest.fixture(scope="module")
def report(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("evaluation")
    run_dir = tiny_export.parent
    result = evaluate(EvaluateConfig(run_dir=run_dir, output=output, latency_runs=5, bootstrap_samples=300))
    return result.to_dict(), output


def test_report_has_every_variant_and_column(report: tuple[dict, Path]) -> None:
    data, output = report
    assert [row["variant"] for row in data["variants"]] == ["pytorch-fp32", "fp32", "fp16", "int8-dynamic"]
    for row in data["variants"]:
        assert set(COLUMNS) <= set(row), set(COLUMNS) - set(row)
    assert data["images"] == 24 and data["reference"] == "pytorch-fp32"  # 8 test phantoms per class
    fp32 = data["variants"][1]
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    saved = json.loads((output / "report.json").read_text())
    assert saved["variants"][0]["accuracy"] == data["variants"][0]["accuracy"]
    text = (output / "report.md").read_text()
    assert (
        "| int8-dynamic |" in text
        and "Disagreements" in text
        and "label-conflict images evaluated: 0" in text
    )


def test_metrics_agree_with_sklearn(report: tuple[dict, Path]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    data, _ = report
    for row in data["variants"]:
        matrix = np.array(row["confusion_matrix"])
        truth = np.repeat(np.arange(3), matrix.sum(axis=1))
        predicted = np.concatenate([np.repeat(np.arange(3), matrix[i]) for i in range(3)])
        assert row["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
        assert row["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(truth, predicted))
        recall = metrics.recall_score(truth, predicted, average=None, zero_division=0)
        assert [row["recall"][k] for k in ("benign", "malignant", "normal")] == pytest.approx(recall.tolist())
        low, high = row["accuracy_ci"]
        assert low <= row["accuracy"] <= high


def test_plots_are_written(report: tuple[dict, Path]) -> None:
    data, output = report
    assert len(data["plots"]) == 3
    for name in data["plots"]:
        png = output / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_manifest_int8_numbers_equal_what_evaluate_measures(tiny_run: Path, tmp_path: Path) -> None:
    """Export validates through the runtime (one image per call for dynamic int8), so the
    manifest's int8 agreement, accuracy and parity are what `evaluate` measures on the same images."""
    from medvit_edge.export import ExportConfig, export

    split = tiny_run / "split.csv"
    onnx_dir = tmp_path / "onnx"
    exported = export(
        ExportConfig(
            run_dir=tiny_run, output=onnx_dir, int8=True, data=split, data_split="test", allow_degraded=True
        )
    )
    record = next(v for v in exported.manifest.variants if v.variant == "int8-dynamic")
    measured = evaluate(
        EvaluateConfig(
            run_dir=tiny_run, onnx_dir=onnx_dir, data=split, split="test", output=tmp_path / "e", plots=False
        )
    )
    row = next(r for r in measured.variants if r.variant == "int8-dynamic")
    assert record.validation.images == measured.images
    assert record.validation.accuracy == row.accuracy
    assert record.validation.top1_agreement == row.top1_agreement
    assert record.validation.max_abs_logit_diff == pytest.approx(row.max_abs_logit_diff, rel=1e-3, abs=1e-6)

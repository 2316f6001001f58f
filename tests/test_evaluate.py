"""`evaluate` on the tiny phantom model: every column, sklearn-equal metrics, honest intervals
with their methods, calibration before/after, operating points, refer rule, risk–coverage table,
decision disagreement, plots, and the manifest's int8 numbers equal to what evaluate measures
through the runtime."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate
from medvit_edge.evaluation.metrics import wilson_interval
from medvit_edge.evaluation.policy_fit import fit_policy
from medvit_edge.io.labelled import read_labelled_set
from medvit_edge.io.reader import read_labelled_image
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.policy import REFER, DecisionPolicy, ReferRule
from medvit_edge.runtime.preprocess import preprocess_batch

from .conftest import needs_export, needs_torch

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
    "balanced_accuracy_ci",
    "specificity_ci",
    "auc_ci",
    "calibration",
    "decision",
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
        and "Label disagreements" in text
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
    assert data["plots"] == [
        "confusion_matrices.png",
        "reliability.png",
        "latency_accuracy.png",
        "roc.png",
        "risk_coverage.png",
    ]
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


def test_intervals_name_their_method_and_stay_honest(report: tuple[dict, Path]) -> None:
    data, output = report
    methods = data["interval_methods"]
    assert methods["accuracy"] == "wilson" and methods["specificity"] == "wilson"
    assert (
        methods["auc"].startswith("percentile bootstrap") and methods["balanced accuracy"] == methods["auc"]
    )
    for row in data["variants"]:
        correct = int(np.trace(np.array(row["confusion_matrix"])))
        assert tuple(row["accuracy_ci"]) == pytest.approx(wilson_interval(correct, data["images"]))
        assert row["accuracy_ci"][0] < 1.0  # even when every image is right
        for label in ("benign", "malignant", "normal"):
            low, high = row["specificity_ci"][label]
            assert low <= row["specificity"][label] <= high and low < high
            low, high = row["auc_ci"][label]
            assert low <= row["auc"][label] <= high
        low, high = row["balanced_accuracy_ci"]
        assert low <= row["balanced_accuracy"] <= high
    text = (output / "report.md").read_text()
    assert (
        "wilson: accuracy" in text
        and "percentile bootstrap (images resampled): balanced accuracy, auc" in text
    )


def test_calibration_is_reported_before_and_after_the_stored_temperature(report: tuple[dict, Path]) -> None:
    data, _ = report
    stored = Classifier.load(Path(data["run_dir"]) / "onnx" / "model.onnx", device="cpu").metadata.policy
    for row in data["variants"]:
        calibration = row["calibration"]
        if stored.temperature != 1.0:
            assert calibration["temperature"] == pytest.approx(stored.temperature)
            assert calibration["before"]["nll"] != calibration["after"]["nll"]
        for stage in ("before", "after"):
            assert set(calibration[stage]) == {"ece", "nll", "brier"}
        assert row["ece"] == pytest.approx(calibration["after"]["ece"])  # what the runtime reports


def _stamp(tiny_export: Path, onnx_dir: Path, policy: DecisionPolicy) -> Path:
    """A copy of the tiny export whose files all carry ``policy`` (the exporter's write_metadata)."""
    from medvit_edge.export.variants import write_metadata

    shutil.copytree(tiny_export, onnx_dir)
    (onnx_dir / "manifest.json").unlink()  # its checksums are of the unstamped files
    for path in sorted(onnx_dir.glob("model*.onnx")):
        metadata = Classifier.load(path, device="cpu", verify=False).metadata
        write_metadata(path, dataclasses.replace(metadata, policy=policy))
    return onnx_dir


def test_default_policy_is_reported_as_such(tiny_export: Path, tmp_path: Path) -> None:
    """Files without a policy: argmax decisions, no temperature, every case accepted."""
    onnx_dir = _stamp(tiny_export, tmp_path / "onnx", DecisionPolicy())
    cfg = EvaluateConfig(
        run_dir=tiny_export.parent, onnx_dir=onnx_dir, output=tmp_path / "e", pytorch=False, plots=False
    )
    data = evaluate(dataclasses.replace(cfg, latency_runs=1, bootstrap_samples=50)).to_dict()
    assert data["policy"]["stored"] is False and data["decision_reference"] == "fp32"
    for row in data["variants"]:
        calibration = row["calibration"]
        assert calibration["temperature"] is None and calibration["before"] == calibration["after"]
        decision = row["decision"]
        assert decision["operating_points"] == [] and decision["refer"] is None
        assert decision["agreement"]["trials"] == data["images"] and decision["reference"] == "fp32"
        assert sum(decision["counts"].values()) == data["images"] and "refer" not in decision["counts"]
        predicted = np.array(row["confusion_matrix"]).sum(axis=0)  # decisions are the argmax labels
        assert [decision["counts"].get(label, 0) for label in data["labels"]] == predicted.tolist()
        rules = [r["rule"] for r in decision["risk_coverage"]]
        assert "confidence >= 0.90" in rules and "risk <= 5% (chosen on this split)" in rules
    text = (tmp_path / "e" / "report.md").read_text()
    assert "No operating point stored" in text and "No refer rule stored" in text
    assert "No stored temperature in: fp32, fp16, int8-dynamic" in text
    assert "### Risk–coverage" in text and "## Decisions compared with `fp32`" in text


def _no_nan(name: str) -> None:
    raise AssertionError(f"report.json holds {name}: not strict JSON")


@pytest.fixture(scope="module")
def stamped(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DecisionPolicy]:
    """The tiny export with a policy fitted on the run's validation split by decision.fit_policy
    (temperature, malignant-sensitivity=0.95), and a refer rule at the median validation top
    probability (built by hand: the tiny model is too weak for any fixed target risk)."""
    run_dir = tiny_export.parent
    fp32 = Classifier.load(tiny_export / "model.onnx", device="cpu")
    validation = [i for i in read_labelled_set(run_dir / "split.csv") if i.split == "validation"]
    pixels = preprocess_batch([read_labelled_image(i.path, i.frame) for i in validation], fp32.spec)
    ids = [fp32.labels.index(i.label) for i in validation]
    fitted = fit_policy(fp32.run(pixels), ids, fp32.labels, ["malignant-sensitivity=0.95"], None)
    probabilities = fitted.probabilities(fp32.run(pixels))
    threshold = float(np.median(probabilities.max(axis=1)))
    with_refer = dataclasses.replace(fitted, refer=ReferRule(threshold, 0.3))
    decided = with_refer.decide(probabilities, fp32.labels)
    kept = [d == fp32.labels[i] for d, i in zip(decided, ids) if d != REFER]
    measured = {
        "coverage": len(kept) / len(ids),
        "risk": 1 - sum(kept) / max(len(kept), 1),
        "images": len(ids),
    }
    policy = dataclasses.replace(with_refer, refer=ReferRule(threshold, 0.3, measured))
    return run_dir, _stamp(tiny_export, tmp_path_factory.mktemp("stamped") / "onnx", policy), policy


def test_stored_policy_is_evaluated_per_variant(
    stamped: tuple[Path, Path, DecisionPolicy], tmp_path: Path
) -> None:
    run_dir, onnx_dir, policy = stamped
    assert policy.refer is not None
    result = evaluate(
        EvaluateConfig(
            run_dir=run_dir,
            onnx_dir=onnx_dir,
            output=tmp_path,
            latency_runs=2,
            bootstrap_samples=200,
        )
    )
    data = json.loads((tmp_path / "report.json").read_text(), parse_constant=_no_nan)
    assert data["policy"]["temperature"] == pytest.approx(policy.temperature) and data["policy"]["stored"]
    assert data["policy_mismatch"] == []
    fp32_file = Classifier.load(onnx_dir / "model.onnx", device="cpu")
    for row in data["variants"]:
        assert row["calibration"]["temperature"] == pytest.approx(policy.temperature)
        point = row["decision"]["operating_points"][0]
        assert point["name"] == "malignant-sensitivity=0.95" and point["validation"] == dict(
            policy.operating_points[0].validation
        )
        for key in ("sensitivity", "specificity"):
            assert (
                point[key]["method"] == "wilson"
                and point[key]["low"] <= point[key]["value"] <= point[key]["high"]
            )
        assert point["sensitivity"]["trials"] == 8  # test malignant phantoms
        refer = row["decision"]["refer"]
        assert refer["threshold"] == pytest.approx(policy.refer.threshold)
        assert (
            refer["coverage"]["trials"] == data["images"] and refer["accepted_accuracy"]["method"] == "wilson"
        )
    # the fp32 row's decisions are what the runtime decides for the same images
    test_images = [i for i in read_labelled_set(run_dir / "split.csv") if i.split == "test"]
    decided = fp32_file.metadata.policy.decide(
        fp32_file.predict_proba([str(i.path) for i in test_images]), fp32_file.labels
    )
    row = next(r for r in result.variants if r.variant == "fp32")
    assert row.decision is not None
    assert row.decision.counts == {d: decided.count(d) for d in row.decision.counts}
    assert sum(row.decision.counts.values()) == len(decided) == data["images"]
    disagreeing = {d["variant"] for d in result.decision_disagreements}
    for other in result.variants:
        assert other.decision is not None and other.decision.agreement is not None
        differ = other.decision.agreement.trials - other.decision.agreement.successes
        assert differ == sum(d["variant"] == other.variant for d in result.decision_disagreements)
        assert (differ > 0) == (other.variant in disagreeing)
    text = (tmp_path / "report.md").read_text()
    assert "| malignant-sensitivity=0.95 |" in text and "refer when top p <" in text
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "risk_coverage.png").is_file()


@needs_torch
def test_threads_hold_for_the_evaluation_only(tiny_export: Path, tmp_path: Path) -> None:
    """--threads is the evaluation's: a process that calls evaluate() keeps its own torch setting
    (training after it in the same process would otherwise run, and round, on one thread)."""
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    cfg = EvaluateConfig(
        run_dir=tiny_export.parent,
        output=tmp_path / "eval",
        threads=wanted,
        latency_runs=2,
        bootstrap_samples=50,
    )
    seen = []
    original = torch.set_num_threads
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), original(n)))
        evaluate(cfg)
    assert seen[0] == wanted and torch.get_num_threads() == before

"""The report's statistics without a model: Wilson vs bootstrap at the edges, the AUC/balanced
accuracy bootstrap, ROC and risk–coverage curves, the reliability plot's sparse-bin data, label
offsets of the latency chart, and what a decision policy yields on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from medvit_edge.evaluation.decision_report import evaluate_policy, proportion, risk_coverage_table
from medvit_edge.evaluation.metrics import (
    auc_one_vs_rest,
    bootstrap_auc_and_balanced_accuracy,
    classification_metrics,
    risk_coverage,
    roc_curve,
    wilson_interval,
)
from medvit_edge.evaluation.report_plots import (
    CHAR_WIDTH,
    LABEL_HEIGHT,
    SPARSE_BIN,
    place_labels,
    reliability_data,
)
from medvit_edge.runtime.policy import REFER, DecisionPolicy, OperatingPoint, ReferRule, softmax

LABELS = ["benign", "malignant", "normal"]


def _logits(rng: np.random.Generator, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    logits = rng.normal(size=(n, 3)) + 2.5 * np.eye(3)[truth] * rng.random((n, 1))
    return truth, logits.astype(np.float32)


def _bootstrap_accuracy(truth: np.ndarray, predicted: np.ndarray, samples: int) -> list[float]:
    """The percentile bootstrap of accuracy that Wilson replaced in the reports."""
    draws = np.random.default_rng(0).integers(0, len(truth), size=(samples, len(truth)))
    accuracy = (truth == predicted)[draws].mean(axis=1)
    return [float(np.percentile(accuracy, 2.5)), float(np.percentile(accuracy, 97.5))]


def test_wilson_stays_honest_where_the_bootstrap_collapses() -> None:
    truth = np.zeros(120, dtype=int)
    boot = _bootstrap_accuracy(truth, truth, samples=500)
    assert boot == [1.0, 1.0]  # the "1.000 (1.000–1.000)"
    low, high = wilson_interval(120, 120)
    assert 0.96 < low < 1.0 and high == 1.0
    low0, high0 = wilson_interval(0, 120)
    assert low0 == 0.0 and 0.0 < high0 < 0.04
    wrong = _bootstrap_accuracy(truth, np.ones(120, dtype=int), samples=500)
    assert wrong == [0.0, 0.0]
    # away from the edges the two agree roughly
    rng = np.random.default_rng(0)
    predicted = np.where(rng.random(120) < 0.8, truth, 1)
    boot_mid = _bootstrap_accuracy(truth, predicted, samples=2000)
    wilson_mid = wilson_interval(int((predicted == truth).sum()), 120)
    assert wilson_mid == pytest.approx(boot_mid, abs=0.03)
    assert proportion(120, 120).low == low and proportion(120, 120).method == "wilson"
    assert proportion(0, 0).low is None


def test_bootstrap_auc_and_balanced_accuracy_bracket_the_estimates(rng: np.random.Generator) -> None:
    truth, logits = _logits(rng)
    probabilities = softmax(logits)
    boot = bootstrap_auc_and_balanced_accuracy(truth, probabilities, samples=400, seed=2)
    aucs = auc_one_vs_rest(truth, probabilities)
    for k in range(3):
        low, high = boot["auc"][k]
        assert low < aucs[k] < high and high - low < 0.25
    balanced = classification_metrics(truth, probabilities.argmax(1), LABELS)["balanced_accuracy"]
    low, high = boot["balanced_accuracy"]
    assert low < balanced < high
    # a class never present has no AUC and so no interval
    assert (
        bootstrap_auc_and_balanced_accuracy(np.zeros(10, int), softmax(logits[:10]), samples=50)["auc"][1]
        is None
    )


def test_roc_and_risk_coverage_curves_match_sklearn(rng: np.random.Generator) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    truth, logits = _logits(rng)
    probabilities = np.round(softmax(logits), 2)  # ties
    for k in range(3):
        fpr, tpr, thresholds = roc_curve(truth == k, probabilities[:, k])
        ref_fpr, ref_tpr, ref_thresholds = metrics.roc_curve(
            truth == k, probabilities[:, k], drop_intermediate=False
        )
        assert fpr == pytest.approx(ref_fpr) and tpr == pytest.approx(ref_tpr)
        assert thresholds[1:] == pytest.approx(ref_thresholds[1:])
        assert np.trapezoid(tpr, fpr) == pytest.approx(auc_one_vs_rest(truth, probabilities)[k])
    confidence = np.array([0.9, 0.9, 0.8, 0.7, 0.6])
    curve = risk_coverage(confidence, [True, False, True, True, False])
    assert curve["accepted"].tolist() == [2, 3, 4, 5]  # the two tied at 0.9 are accepted together
    assert curve["risk"].tolist() == pytest.approx([0.5, 1 / 3, 0.25, 0.4])


def test_reliability_data_marks_sparse_bins() -> None:
    # 12 images at confidence 0.95 (11 right) and 2 at 0.55 (both right): the 2-image bin is sparse
    confident = np.tile([[0.95, 0.03, 0.02]], (12, 1))
    unsure = np.tile([[0.55, 0.40, 0.05]], (2, 1))
    probabilities = np.vstack([confident, unsure])
    truth = np.array([0] * 11 + [1] + [0, 0])
    bins = reliability_data(probabilities, truth)
    by_low = {round(b["low"], 1): b for b in bins}
    assert by_low[0.9]["count"] == 12 and not by_low[0.9]["sparse"]
    assert by_low[0.5]["count"] == 2 and by_low[0.5]["sparse"] and by_low[0.5]["accuracy"] == 1.0
    assert SPARSE_BIN == 5 and [
        b["sparse"] for b in reliability_data(probabilities, truth, sparse_below=1)
    ] == [
        False,
        False,
    ]


def test_labels_of_coinciding_markers_do_not_overlap() -> None:
    """The latency chart's fp32/fp16/int8 markers sit on one spot: their labels must not cover
    one another, a marker, or leave the axes."""
    size = (400.0, 250.0)
    markers = [(30.0, 120.0), (31.0, 120.0), (30.0, 121.0), (385.0, 120.0)]  # the last at the right edge
    texts = ["fp32 (0.7 MB)", "fp16 (0.4 MB)", "int8-dynamic (0.3 MB)", "pytorch-fp32 (0.6 MB)"]
    spots = place_labels(markers, texts, size)
    boxes = []
    for (mx, my), text, (dx, dy, align) in zip(markers, texts, spots):
        width = CHAR_WIDTH * len(text)
        x0 = mx + dx if align == "left" else mx + dx - width
        boxes.append((x0, my + dy - LABEL_HEIGHT / 2, x0 + width, my + dy + LABEL_HEIGHT / 2))
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[2] <= size[0] and a[1] >= 0 and a[3] <= size[1]
        for b in boxes[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
        assert not any(a[0] < x < a[2] and a[1] < y < a[3] for x, y in markers)
    assert spots[3][2] == "right"  # no room on the right of the edge marker


def test_leader_lines_of_a_crowded_latency_chart_do_not_cross() -> None:
    """Six variants of the BUSI report, four of them within 1 ms at one accuracy: no label's
    leader line crosses another's or runs through a label."""
    from medvit_edge.evaluation.report_plots import _segments_cross

    size = (495.0, 250.0)
    markers = [(69.0, 136.0), (96.0, 114.0), (162.0, 114.0), (177.0, 114.0), (201.0, 114.0), (312.0, 114.0)]
    names = ["openvino-int8", "fp32", "int8-dynamic", "openvino-fp32", "fp16", "pytorch-fp32"]
    texts = [f"{name} (11.4 MB)" for name in names]
    spots = place_labels(markers, texts, size)
    leaders = [(mx, my, mx + dx, my + dy) for (mx, my), (dx, dy, _) in zip(markers, spots)]
    for i, a in enumerate(leaders):
        for b in leaders[i + 1 :]:
            assert not _segments_cross(a, b), (a, b)
    assert _segments_cross((0, 0, 10, 10), (0, 10, 10, 0))  # the check itself sees a crossing


def test_default_policy_decides_the_argmax(rng: np.random.Generator) -> None:
    truth, logits = _logits(rng, 60)
    outcome = evaluate_policy(logits, truth, LABELS, DecisionPolicy())
    assert outcome.decisions == [LABELS[i] for i in logits.argmax(1)]
    summary = outcome.summary
    assert not summary.policy_stored and summary.operating_points == [] and summary.refer is None
    assert outcome.calibration.temperature is None
    assert outcome.calibration.before == outcome.calibration.after
    assert summary.decision_accuracy.trials == 60
    assert summary.decision_accuracy.successes == int((logits.argmax(1) == truth).sum())


def test_stored_policy_is_reported_on_the_decisions_it_makes(rng: np.random.Generator) -> None:
    truth, logits = _logits(rng)
    point = OperatingPoint("malignant", "sensitivity", 0.9, 0.2, {"sensitivity": 0.91, "specificity": 0.7})
    refer = ReferRule(0.6, 0.1, {"coverage": 0.8, "risk": 0.09})
    policy = DecisionPolicy(temperature=1.7, operating_points=(point,), refer=refer)
    outcome = evaluate_policy(logits, truth, LABELS, policy)
    probabilities = policy.probabilities(logits)
    called = probabilities[:, 1] >= 0.2
    result = outcome.summary.operating_points[0]
    assert result.name == "malignant-sensitivity=0.9" and result.validation["sensitivity"] == 0.91
    assert result.sensitivity.successes == int((called & (truth == 1)).sum())
    assert result.sensitivity.trials == int((truth == 1).sum())
    assert result.specificity.successes == int((~called & (truth != 1)).sum())
    referred = outcome.decisions.count(REFER)
    assert referred == int((probabilities.max(1) < 0.6).sum()) > 0  # refer first, flagged or not
    rule = outcome.summary.refer
    assert rule is not None and rule.coverage.successes == 240 - referred
    assert outcome.calibration.temperature == 1.7
    assert outcome.calibration.after.nll != outcome.calibration.before.nll
    table = risk_coverage_table(probabilities, truth)
    assert [r.rule for r in table][:2] == ["confidence >= 0.50", "confidence >= 0.60"]
    coverages = [r.coverage.value for r in table[:7]]
    assert coverages == sorted(coverages, reverse=True)  # higher threshold, fewer accepted
    for row in table[7:]:  # "risk <= x" rows keep the risk on these images within x
        if row.accepted_accuracy is not None:
            assert (
                1 - row.accepted_accuracy.value <= float(row.rule.split("<= ")[1].split("%")[0]) / 100 + 1e-9
            )


def test_zero_width_bootstrap_intervals_are_called_out() -> None:
    from types import SimpleNamespace

    from medvit_edge.evaluation.report import _degenerate_note

    perfect = SimpleNamespace(variant="fp32", balanced_accuracy_ci=(1.0, 1.0), auc_ci={"benign": (1.0, 1.0)})
    usual = SimpleNamespace(variant="fp16", balanced_accuracy_ci=(0.8, 0.9), auc_ci={"benign": None})
    note = _degenerate_note(SimpleNamespace(variants=[perfect, usual], images=120))  # type: ignore[arg-type]
    assert "(fp32 balanced accuracy, fp32 AUC benign)" in note and "resample of the 120 images" in note
    assert "fp16" not in note
    assert _degenerate_note(SimpleNamespace(variants=[usual], images=120)) == ""  # type: ignore[arg-type]

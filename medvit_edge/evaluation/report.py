"""The evaluation report: report.json, report.md and PNG plots (plots need matplotlib; they are
drawn by ``report_plots``, which imports it only when called)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medvit_edge.evaluation.decision_report import Proportion, RiskCoverageRow
from medvit_edge.evaluation.metrics import wilson_interval
from medvit_edge.files import atomic_writer, write_json_atomic
from medvit_edge.runtime.policy import REFER, DecisionPolicy
from medvit_edge.timing import MODEL_ONLY, PREPROCESS_AND_MODEL, latency_scope

if TYPE_CHECKING:
    from medvit_edge.evaluation.records import EvaluationReport, VariantEvaluation

MAX_LISTED = 50  # disagreeing images listed in report.md (all are in report.json)


def write_report(
    report: EvaluationReport,
    all_logits: dict[str, np.ndarray],
    truth: np.ndarray,
    output: Path,
    plots: bool = True,
    policies: dict[str, DecisionPolicy] | None = None,
) -> None:
    from medvit_edge.evaluation.report_plots import draw_plots

    output.mkdir(parents=True, exist_ok=True)
    policies = policies or {name: DecisionPolicy() for name in all_logits}
    report.plots = draw_plots(report, all_logits, truth, policies, output) if plots else []
    write_json_atomic(output / "report.json", report.to_dict())
    with atomic_writer(output / "report.md") as handle:
        handle.write(render_markdown(report))


def _ci(interval: tuple[float, float] | list[float] | None) -> str:
    return f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else ""


def _prop(value: Proportion | None) -> str:
    """0.958 (23/24; 0.798–0.993)."""
    if value is None or value.value is None:
        return "n/a (0 images)"
    interval = (
        f"; {value.low:.3f}–{value.high:.3f}" if value.low is not None and value.high is not None else ""
    )
    return f"{value.value:.3f} ({value.successes}/{value.trials}{interval})"


def summary_table(rows: list[VariantEvaluation], labels: list[str]) -> list[str]:
    """The side-by-side table (markdown), one row per variant."""
    header = (
        ["variant", "status", "size MB", "accuracy (95% CI)", "bal. acc. (95% CI)"]
        + [f"recall {label}" for label in labels]
        + ["max abs Δlogit", "agreement", "p50 ms", "p95 ms", "img/s", "memory MB"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.variant,
            row.status,
            f"{row.size_mb:.2f}",
            f"{row.accuracy:.3f}{_ci(row.accuracy_ci)}",
            f"{row.balanced_accuracy:.3f}{_ci(row.balanced_accuracy_ci)}",
            *[f"{row.recall[label]:.3f}" for label in labels],
            f"{row.max_abs_logit_diff:.1e}",
            f"{row.top1_agreement:.1%}",
            f"{row.latency_p50_ms:.1f}",
            f"{row.latency_p95_ms:.1f}",
            f"{row.throughput_ips:.1f}",
            f"{row.memory_mb:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def latency_note(report: EvaluationReport) -> str:
    """What evaluate's p50/p95 ms and img/s cover (the same words as export, info, benchmark)."""
    side = report.input_size
    tensor = f"one preprocessed {side}x{side} tensor" if side else "one preprocessed tensor"
    batch = report.variants[0].throughput_batch if report.variants else 1
    return (
        f"p50/p95 ms per image: {latency_scope(MODEL_ONLY, 1, tensor)} (raw-input files: "
        f"{PREPROCESS_AND_MODEL} from the decoded image); img/s at batch {batch}"
    )


def _verdict_lines(report: EvaluationReport) -> list[str]:
    """The majority-class baseline and evaluate's warnings, as the command prints them."""
    from medvit_edge.evaluation.verdict import evaluation_verdict

    found = evaluation_verdict(report)
    return [f"- {line.replace('warning: ', '**Warning:** ', 1)}" for line in found] + ([""] if found else [])


def render_markdown(report: EvaluationReport) -> str:
    labels, rows = report.labels, report.variants
    lines = [
        "# Variant comparison",
        "",
        f"Model `{report.run_dir}`, {report.images} images from `{report.data}`"
        + (f" (split `{report.split}`)" if report.split else "")
        + f". Machine: {report.machine}.",
        f"Parity is measured against `{report.reference}` on the same preprocessed tensors; "
        f"{latency_note(report)}; memory is the resident "
        "memory that loading and running each model added to the process.",
        "",
        _interval_note(report),
        "",
        *summary_table(rows, labels),
        "",
        *_verdict_lines(report),
        *_per_class(rows, labels),
        *_calibration_lines(report),
        *_operating_point_lines(report),
        *_refer_lines(report),
        *_risk_coverage_lines(report),
        *_decision_lines(report),
    ]
    lines += _flags(report)
    lines += _disagreement_lines(report)
    if report.plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report.plots]
    lines += ["", "Research use only: not for diagnosis."]
    return "\n".join(lines) + "\n"


def _interval_note(report: EvaluationReport) -> str:
    by_method: dict[str, list[str]] = {}
    for quantity, method in report.interval_methods.items():
        by_method.setdefault(method, []).append(quantity)
    parts = [f"{method}: {', '.join(quantities)}" for method, quantities in by_method.items()]
    n = report.images
    low, high = wilson_interval(n, n) or (0.0, 1.0)
    return (
        "All intervals are 95%. Method per quantity — "
        + "; ".join(parts)
        + f". Wilson score intervals stay honest at 0/n and n/n ({n}/{n} correct gives "
        f"{low:.3f}–{high:.3f}, where the percentile bootstrap gives 1.000–1.000); the bootstrap "
        "is used only where no closed form exists." + _degenerate_note(report)
    )


def _degenerate_note(report: EvaluationReport) -> str:
    """Say so where a bootstrap interval has zero width: every resample gave the same value
    (usually a perfect score), which is not certainty."""
    found = [
        f"{row.variant} {name}"
        for row in report.variants
        for name, ci in [
            ("balanced accuracy", row.balanced_accuracy_ci),
            *((f"AUC {label}", ci) for label, ci in row.auc_ci.items()),
        ]
        if ci is not None and ci[0] == ci[1]
    ]
    if not found:
        return ""
    shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    return (
        f" Zero-width bootstrap intervals ({shown}) mean every resample of the {report.images} "
        "images scored the same (usually perfectly), not certainty: read them with the Wilson "
        "intervals of the underlying proportions."
    )


def _per_class(rows: list[VariantEvaluation], labels: list[str]) -> list[str]:
    lines = [
        "## Per-class detail",
        "",
        "| variant | class | recall (sensitivity), Wilson CI | specificity, Wilson CI "
        "| AUC one-vs-rest, bootstrap CI |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for label in labels:
            auc = row.auc.get(label)
            auc_text = f"{auc:.3f}{_ci(row.auc_ci.get(label))}" if auc is not None else "n/a"
            lines.append(
                f"| {row.variant} | {label} | {row.recall[label]:.3f}{_ci(row.recall_ci.get(label))} "
                f"| {row.specificity[label]:.3f}{_ci(row.specificity_ci.get(label))} | {auc_text} |"
            )
    return [*lines, ""]


def _calibration_lines(report: EvaluationReport) -> list[str]:
    lines = [
        "## Calibration",
        "",
        f"On the {report.images} evaluated images. Before: softmax of the raw logits; after: the "
        "probabilities the runtime reports (softmax of logits / the stored temperature). ECE: 10 bins.",
        "",
        "| variant | temperature | ECE before → after | NLL before → after | Brier before → after |",
        "|---|---|---|---|---|",
    ]
    missing = []
    for row in report.variants:
        c = row.calibration
        if c is None:
            continue
        if c.temperature is None:
            missing.append(row.variant)
        b, a = c.before, c.after
        temperature = f"{c.temperature:.3f}" if c.temperature is not None else "none stored"
        lines.append(
            f"| {row.variant} | {temperature} | {b.ece:.3f} → {a.ece:.3f} | {b.nll:.3f} → {a.nll:.3f} "
            f"| {b.brier:.3f} → {a.brier:.3f} |"
        )
    if missing:
        lines += ["", f"No stored temperature in: {', '.join(missing)} (after = before)."]
    if any(row.status == "reference" for row in report.variants):
        lines += [
            "",
            f"`{report.variants[0].variant}` carries no metadata: it is evaluated with the policy of "
            f"`{report.policy.get('source', 'the first file')}` (export fits one policy on its "
            "validation logits and stamps it into every file).",
        ]
    return [*lines, ""]


def _operating_point_lines(report: EvaluationReport) -> list[str]:
    lines = ["## Operating points", ""]
    found = [
        (row.variant, p) for row in report.variants if row.decision for p in row.decision.operating_points
    ]
    if not found:
        return [
            *lines,
            "No operating point stored: decisions are the argmax labels. Store one at export "
            "(`--operating-point LABEL-sensitivity=0.95`).",
            "",
        ]
    lines += [
        "Each stored threshold on the calibrated probability of its class, one-vs-rest: the "
        "validation values it was chosen at beside what it gives on these images (Wilson 95% CI). "
        "The runtime applies the first one.",
        "",
        "| variant | operating point | threshold | validation sens. / spec. | sensitivity here "
        "| specificity here |",
        "|---|---|---|---|---|---|",
    ]
    for variant, p in found:
        val = p.validation
        chosen = f"{val.get('sensitivity', float('nan')):.3f} / {val.get('specificity', float('nan')):.3f}"
        lines.append(
            f"| {variant} | {p.name} | {p.threshold:.4g} | {chosen} | {_prop(p.sensitivity)} "
            f"| {_prop(p.specificity)} |"
        )
    return [*lines, ""]


def _refer_lines(report: EvaluationReport) -> list[str]:
    lines = ["## Selective prediction (refer)", ""]
    rules = [(row, row.decision.refer) for row in report.variants if row.decision and row.decision.refer]
    if not rules:
        lines.append(
            "No refer rule stored: every image gets a decision (coverage 1). Accuracy of the decisions: "
            + ", ".join(
                f"{r.variant} {_prop(r.decision.decision_accuracy)}" for r in report.variants if r.decision
            )
            + "."
        )
        return [*lines, ""]
    lines += [
        f"`{REFER}` when the calibrated top probability is below the stored threshold (checked "
        "before the operating point). Coverage = images decided / images; accepted "
        "accuracy = decisions equal to the truth / images decided (Wilson 95% CI). A rule certified "
        "at confidence c (`--refer-confidence`) shows its validation bound: with probability c the "
        "risk on new images is at most that; an empirical rule (c = 0) promises nothing beyond "
        "the validation images.",
        "",
        "| variant | refer when top p < | target risk | validation coverage / risk | coverage here "
        "| accepted accuracy here |",
        "|---|---|---|---|---|---|",
    ]
    for row, rule in rules:
        val = rule.validation
        chosen = f"{val.get('coverage', float('nan')):.3f} / {val.get('risk', float('nan')):.3f}"
        if rule.confidence and "risk_bound" in val:
            chosen += f" (≤ {val['risk_bound']:.3f} at {rule.confidence:g})"
        else:
            chosen += " (empirical)"
        lines.append(
            f"| {row.variant} | {rule.threshold:.4g} | {rule.target_risk:g} | {chosen} "
            f"| {_prop(rule.coverage)} | {_prop(rule.accepted_accuracy)} |"
        )
    return [*lines, ""]


def _risk_coverage_lines(report: EvaluationReport) -> list[str]:
    """One row per acceptance rule, one column per variant: accepted/images = coverage, then the
    accuracy of the accepted images with its Wilson interval (all rows are in report.json)."""
    rows = [r for r in report.variants if r.decision]
    lines = [
        "### Risk–coverage",
        "",
        "Accept an image when its calibrated top probability reaches the threshold. Each cell: "
        "accepted/images = coverage; accuracy of the accepted decisions (the stored operating "
        "point applied, as the stored refer rule was chosen; the argmax labels without one; Wilson 95% CI). "
        "`risk <= x` rows use the lowest threshold (t) meeting x on these images themselves, so "
        "they are optimistic: a deployed rule is chosen on validation, as the stored one is. "
        "AURC, the area under the risk–coverage curve (lower is better): "
        + ", ".join(f"{r.variant} {r.decision.aurc:.4f}" for r in rows if r.decision)
        + ".",
        "",
        "| accept when | " + " | ".join(r.variant for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    steps = [row.decision.risk_coverage for row in rows if row.decision]
    for i, first in enumerate(steps[0] if steps else []):
        cells = [_risk_cell(variant_steps[i], first.rule.startswith("risk")) for variant_steps in steps]
        lines.append(f"| {first.rule} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _risk_cell(step: RiskCoverageRow, show_threshold: bool) -> str:
    if step.threshold is None:
        return "no threshold reaches it"
    c = step.coverage
    text = f"t={step.threshold:.3f}: " if show_threshold else ""
    text += f"{c.successes}/{c.trials} = {c.value:.2f}"
    a = step.accepted_accuracy
    if a is not None and a.value is not None and a.low is not None and a.high is not None:
        text += f"; acc {a.value:.3f} ({a.low:.3f}–{a.high:.3f})"
    return text


def _decision_lines(report: EvaluationReport) -> list[str]:
    reference = report.decision_reference
    lines = [
        f"## Decisions compared with `{reference}`",
        "",
        "Decisions come from each file's stored policy (`DecisionPolicy.decide`: refer, then the "
        "operating point, then the argmax label), so this counts every changed decision, refer included, "
        "not only changed labels.",
        "",
        "| variant | same decision as reference (Wilson CI) | differ | decisions made |",
        "|---|---|---|---|",
    ]
    for row in report.variants:
        d = row.decision
        if d is None or d.agreement is None:
            continue
        made = ", ".join(f"{name} {count}" for name, count in d.counts.items())
        differ = d.agreement.trials - d.agreement.successes
        share = differ / d.agreement.trials if d.agreement.trials else 0.0
        lines.append(f"| {row.variant} | {_prop(d.agreement)} | {differ} ({share:.1%}) | {made} |")
    if report.policy_mismatch:
        lines += [
            "",
            f"Warning: these files store a different policy than `{reference}`: {report.policy_mismatch}.",
        ]
    found = report.decision_disagreements
    if found:
        lines += [
            "",
            "| variant | image | truth | reference decision | variant decision | reference probs "
            "| variant probs |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in found[:MAX_LISTED]:
            lines.append(
                f"| {d['variant']} | {d['image']} | {d['truth']} | {d['reference_decision']} "
                f"| {d['variant_decision']} | {d['reference_probs']} | {d['variant_probs']} |"
            )
        if len(found) > MAX_LISTED:
            lines.append(f"\n{len(found) - MAX_LISTED} more in report.json.")
    return [*lines, ""]


def _flags(report: EvaluationReport) -> list[str]:
    flags = report.data_flags
    lines = ["## Data notes", ""]
    conflicts = flags["label_conflict_images"]
    lines.append(
        f"- label-conflict images evaluated: {len(conflicts)}"
        + (f" ({', '.join(conflicts[:5])})" if conflicts else "")
    )
    if flags["group_column_present"]:
        lines.append(
            f"- {flags['duplicate_group_images']} evaluated images share a near-duplicate group with another "
            "evaluated image: they are correlated, so every interval here is somewhat optimistic"
        )
    else:
        lines.append("- the data has no duplicate-group column: near-duplicates were not checked")
    if report.skipped:
        lines.append(f"- unreadable images skipped: {len(report.skipped)}")
    return [*lines, ""]


def _disagreement_lines(report: EvaluationReport) -> list[str]:
    found = report.disagreements
    lines = ["## Label disagreements with the reference", ""]
    if not found:
        return [*lines, "None: every variant gives the reference's label on every image."]
    lines += [
        "| variant | image | truth | reference | variant says | reference probs | variant probs |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in found[:MAX_LISTED]:
        lines.append(
            f"| {d['variant']} | {d['image']} | {d['truth']} | {d['reference_label']} | {d['variant_label']} "
            f"| {d['reference_probs']} | {d['variant_probs']} |"
        )
    if len(found) > MAX_LISTED:
        lines.append(f"\n{len(found) - MAX_LISTED} more in report.json.")
    return lines

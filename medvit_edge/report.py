"""The evaluation report: report.json, report.md and PNG plots (plots need matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvit_edge.files import atomic_writer, write_json_atomic
from medvit_edge.metrics import calibration, softmax

if TYPE_CHECKING:
    from medvit_edge.evaluate import EvaluationReport, VariantEvaluation


def write_report(
    report: EvaluationReport,
    all_logits: dict[str, np.ndarray],
    truth: np.ndarray,
    output: Path,
    plots: bool = True,
) -> None:
    output.mkdir(parents=True, exist_ok=True)
    report.plots = _plots(report, all_logits, truth, output) if plots else []
    write_json_atomic(output / "report.json", report.to_dict())
    with atomic_writer(output / "report.md") as handle:
        handle.write(render_markdown(report))


def summary_table(rows: list[VariantEvaluation], labels: list[str]) -> list[str]:
    """The side-by-side table (markdown), one row per variant."""
    header = (
        ["variant", "status", "size MB", "accuracy (95% CI)", "bal. acc."]
        + [f"recall {label}" for label in labels]
        + ["max abs Δlogit", "agreement", "p50 ms", "p95 ms", "img/s", "memory MB"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        ci = row.accuracy_ci
        accuracy = f"{row.accuracy:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        recalls = [f"{row.recall[label]:.3f}" for label in labels]
        cells = [
            row.variant,
            row.status,
            f"{row.size_mb:.2f}",
            accuracy,
            f"{row.balanced_accuracy:.3f}",
            *recalls,
            f"{row.max_abs_logit_diff:.1e}",
            f"{row.top1_agreement:.1%}",
            f"{row.latency_p50_ms:.1f}",
            f"{row.latency_p95_ms:.1f}",
            f"{row.throughput_ips:.1f}",
            f"{row.memory_mb:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: EvaluationReport) -> str:
    labels, rows = report.labels, report.variants
    lines = [
        "# Variant comparison",
        "",
        f"Model `{report.run_dir}`, {report.images} images from `{report.data}`"
        + (f" (split `{report.split}`)" if report.split else "")
        + f". Machine: {report.machine}.",
        f"Parity is measured against `{report.reference}` on the same preprocessed tensors; "
        f"latency is batch 1, throughput at batch {rows[0].throughput_batch}; memory is the resident "
        "memory that loading and running each model added to the process.",
        "",
        *summary_table(rows, labels),
        "",
        "## Per-class detail",
        "",
        "| variant | class | recall (sensitivity) 95% CI | specificity | AUC (one-vs-rest) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for label in labels:
            ci = row.recall_ci.get(label)
            auc = row.auc.get(label)
            auc_text = f"{auc:.3f}" if auc is not None else "n/a"
            interval = f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
            lines.append(
                f"| {row.variant} | {label} | {row.recall[label]:.3f}{interval} "
                f"| {row.specificity[label]:.3f} | {auc_text} |"
            )
    lines += [
        "",
        "Calibration (expected calibration error, 10 bins): "
        + ", ".join(f"{r.variant} {r.ece:.3f}" for r in rows),
        "",
    ]
    lines += _flags(report)
    lines += _disagreement_lines(report)
    if report.plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report.plots]
    lines += ["", "Research use only: not for diagnosis."]
    return "\n".join(lines) + "\n"


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
            "evaluated image: they are correlated, so the bootstrap intervals are somewhat optimistic"
        )
    else:
        lines.append("- the data has no duplicate-group column: near-duplicates were not checked")
    if report.skipped:
        lines.append(f"- unreadable images skipped: {len(report.skipped)}")
    return [*lines, ""]


def _disagreement_lines(report: EvaluationReport) -> list[str]:
    found = report.disagreements
    lines = ["## Disagreements with the reference", ""]
    if not found:
        return [*lines, "None: every variant gives the reference's label on every image."]
    lines += [
        "| variant | image | truth | reference | variant says | reference probs | variant probs |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in found[:50]:
        lines.append(
            f"| {d['variant']} | {d['image']} | {d['truth']} | {d['reference_label']} | {d['variant_label']} "
            f"| {d['reference_probs']} | {d['variant_probs']} |"
        )
    if len(found) > 50:
        lines.append(f"\n{len(found) - 50} more in report.json.")
    return lines


def _plots(
    report: EvaluationReport, all_logits: dict[str, np.ndarray], truth: np.ndarray, output: Path
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = [
        _confusion_grid(plt, report, output),
        _reliability(plt, all_logits, truth, output),
        _latency_accuracy(plt, report, output),
    ]
    return written


def _confusion_grid(plt: Any, report: EvaluationReport, output: Path) -> str:
    rows, labels = report.variants, report.labels
    fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 3.4), squeeze=False)
    for axis, row in zip(axes[0], rows):
        counts = np.asarray(row.confusion_matrix)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                axis.text(
                    j,
                    i,
                    f"{counts[i, j]}\n{shares[i, j]:.0%}",
                    ha="center",
                    va="center",
                    color="white" if shares[i, j] > 0.6 else "black",
                    fontsize=8,
                )
        axis.set(
            xticks=range(len(labels)),
            yticks=range(len(labels)),
            xticklabels=labels,
            yticklabels=labels,
            title=row.variant,
            xlabel="predicted",
        )
    axes[0][0].set_ylabel("true")
    fig.tight_layout()
    fig.savefig(output / "confusion_matrices.png", dpi=90)
    plt.close(fig)
    return "confusion_matrices.png"


def _reliability(plt: Any, all_logits: dict[str, np.ndarray], truth: np.ndarray, output: Path) -> str:
    fig, axis = plt.subplots(figsize=(4.6, 4.2))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for name, logits in all_logits.items():
        bins = calibration(softmax(logits), truth)["bins"]
        axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name, alpha=0.8)
    axis.set(
        xlabel="confidence (top-1 probability)",
        ylabel="accuracy",
        title="Reliability diagram",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "reliability.png", dpi=90)
    plt.close(fig)
    return "reliability.png"


def _latency_accuracy(plt: Any, report: EvaluationReport, output: Path) -> str:
    """One marker per variant, area by file size; a legend instead of labels that would collide."""
    rows = report.variants
    biggest = max(r.size_mb for r in rows) or 1.0
    fig, axis = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        axis.scatter(
            row.latency_p50_ms,
            row.accuracy,
            s=40 + 260 * row.size_mb / biggest,
            alpha=0.75,
            label=f"{row.variant} ({row.size_mb:.1f} MB)",
        )
    accuracies = [r.accuracy for r in rows]
    pad = max(0.02, (max(accuracies) - min(accuracies)) * 0.5)
    axis.set_ylim(max(0.0, min(accuracies) - pad), min(1.0, max(accuracies) + pad))
    axis.set_xlim(0, max(r.latency_p50_ms for r in rows) * 1.15)
    axis.set(
        xlabel="latency p50, batch 1 (ms)", ylabel="accuracy", title="Latency vs accuracy (area: file size)"
    )
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), markerscale=0.5)
    fig.tight_layout()
    fig.savefig(output / "latency_accuracy.png", dpi=90)
    plt.close(fig)
    return "latency_accuracy.png"

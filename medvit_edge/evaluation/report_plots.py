"""The evaluation report's PNG plots. matplotlib is imported inside ``draw_plots`` only, so
``import medvit_edge.cli`` (and the runtime) never pull it in; the ``*_data`` functions are
plain numpy and say what each plot shows (the tests check them, not pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvit_edge.evaluation.metrics import calibration, risk_coverage, roc_curve
from medvit_edge.runtime.policy import softmax

if TYPE_CHECKING:
    from medvit_edge.evaluation.records import EvaluationReport

# A reliability bin with fewer images than this says little: drawn hatched grey with its count.
SPARSE_BIN = 5
LINE_STYLES = ("-", "--", "-.", ":")  # variants that coincide stay visible one on top of another


def reliability_data(
    probabilities: np.ndarray, truth: np.ndarray, bins: int = 10, sparse_below: int = SPARSE_BIN
) -> list[dict[str, Any]]:
    """The non-empty confidence bins: low/high edges, count, accuracy, mean confidence and
    ``sparse`` (count < ``sparse_below``)."""
    table = calibration(probabilities, truth, bins)["bins"]
    return [{**row, "sparse": row["count"] < sparse_below} for row in table]


GRID_COLUMNS = 3  # confusion matrices per row of the grid
LABEL_HEIGHT = 12.0  # points, for 8-pt text
CHAR_WIDTH = 4.8  # points per character of 8-pt text (a safe over-estimate)


def place_labels(
    markers: list[tuple[float, float]], texts: list[str], size: tuple[float, float]
) -> list[tuple[float, float, str]]:
    """Where each marker's label goes, as (dx, dy, horizontal alignment) in points from the
    marker: greedily, nearest first, the first spot right or left of it (stepping up and down)
    whose box overlaps no label placed before it, no marker and stays inside the axes
    (``size``: axes width and height in points; ``markers`` in points from the lower left)."""
    placed: list[tuple[float, float, float, float]] = []
    leaders: list[tuple[float, float, float, float]] = []  # marker -> label, as drawn
    result: list[tuple[float, float, str]] = [(14.0, 0.0, "left")] * len(markers)
    steps = [0.0] + [sign * k * (LABEL_HEIGHT + 2) for k in range(1, 9) for sign in (1, -1)]
    for i in sorted(range(len(markers)), key=lambda j: markers[j]):
        mx, my = markers[i]
        text_width = CHAR_WIDTH * len(texts[i])
        candidates = [(dx, dy) for dy in steps for dx in (14.0, -14.0, 36.0, -36.0)]
        dx, dy = next(
            (
                c
                for c in candidates
                if _free(mx, my, c[0], c[1], text_width, size, placed, markers)
                and not _crosses((mx, my, mx + c[0], my + c[1]), leaders, placed)
            ),
            (14.0, steps[-1]),
        )
        align = "left" if dx > 0 else "right"
        x0 = mx + dx if align == "left" else mx + dx - text_width
        placed.append((x0, my + dy - LABEL_HEIGHT / 2, x0 + text_width, my + dy + LABEL_HEIGHT / 2))
        leaders.append((mx, my, mx + dx, my + dy))
        result[i] = (dx, dy, align)
    return result


def _crosses(
    line: tuple[float, float, float, float],
    leaders: list[tuple[float, float, float, float]],
    boxes: list[tuple[float, float, float, float]],
) -> bool:
    """The leader ``line`` crosses a leader drawn before, or runs through a label placed before."""
    if any(_segments_cross(line, other) for other in leaders):
        return True
    for x0, y0, x1, y1 in boxes:
        edges = ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0))
        if any(_segments_cross(line, edge) for edge in edges):
            return True
    return False


def _segments_cross(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Proper intersection of two segments (touching ends do not count)."""

    def side(x0: float, y0: float, x1: float, y1: float, x: float, y: float) -> float:
        return (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)

    d1 = side(*a, b[0], b[1])
    d2 = side(*a, b[2], b[3])
    d3 = side(*b, a[0], a[1])
    d4 = side(*b, a[2], a[3])
    return d1 * d2 < 0 and d3 * d4 < 0


def _free(
    mx: float,
    my: float,
    dx: float,
    dy: float,
    text_width: float,
    size: tuple[float, float],
    placed: list[tuple[float, float, float, float]],
    markers: list[tuple[float, float]],
) -> bool:
    x0 = mx + dx if dx > 0 else mx + dx - text_width
    box = (x0, my + dy - LABEL_HEIGHT / 2, x0 + text_width, my + dy + LABEL_HEIGHT / 2)
    if box[0] < 0 or box[1] < 0 or box[2] > size[0] or box[3] > size[1]:
        return False
    if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
        return False
    return not any(box[0] - 4 < x < box[2] + 4 and box[1] - 4 < y < box[3] + 4 for x, y in markers)


def draw_plots(
    report: EvaluationReport,
    all_logits: dict[str, np.ndarray],
    truth: np.ndarray,
    policies: dict[str, Any],
    output: Path,
) -> list[str]:
    """Every plot as a PNG in ``output``; the file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    calibrated = {name: policies[name].probabilities(logits) for name, logits in all_logits.items()}
    raw = {name: softmax(logits) for name, logits in all_logits.items()}
    return [
        _confusion_grid(plt, report, output),
        _reliability(plt, raw, calibrated, truth, policies, output),
        _latency_accuracy(plt, report, output),
        _roc(plt, report, calibrated, truth, policies, output),
        _risk_coverage(plt, report, calibrated, truth, policies, output),
    ]


def _save(plt: Any, fig: Any, output: Path, name: str) -> str:
    from medvit_edge.files import atomic_writer

    with atomic_writer(output / name, "wb") as handle:  # never half a PNG after a crash
        fig.savefig(handle, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return name


def _confusion_grid(plt: Any, report: EvaluationReport, output: Path) -> str:
    rows, labels = report.variants, report.labels
    # a grid of at most GRID_COLUMNS per row: 9 variants are 3 x 3, not one 2665 px wide strip
    columns = min(len(rows), GRID_COLUMNS)
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.3 * columns, 3.4 * lines), squeeze=False)
    for axis in axes.flat[len(rows) :]:
        axis.set_visible(False)
    for axis, row in zip(axes.flat, rows):
        counts = np.asarray(row.confusion_matrix)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                white = shares[i, j] > 0.6
                text = f"{counts[i, j]}\n{shares[i, j]:.0%}"
                axis.text(
                    j, i, text, ha="center", va="center", color="white" if white else "black", fontsize=8
                )
        axis.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels)
        axis.set(title=row.variant, xlabel="predicted")
    for line in axes:
        line[0].set_ylabel("true")
    fig.tight_layout()
    return _save(plt, fig, output, "confusion_matrices.png")


def _reliability(
    plt: Any,
    raw: dict[str, np.ndarray],
    calibrated: dict[str, np.ndarray],
    truth: np.ndarray,
    policies: dict[str, Any],
    output: Path,
) -> str:
    """One panel per variant (so coinciding variants cannot hide one another); a second row
    after temperature scaling when any model stores a temperature."""
    names = list(raw)
    scaled = any(policies[n].temperature != 1.0 for n in names)
    stages = [("raw softmax", raw)] + ([("calibrated", calibrated)] if scaled else [])
    fig, axes = plt.subplots(
        len(stages), len(names), figsize=(3.0 * len(names), 3.2 * len(stages)), squeeze=False, sharey=True
    )
    for r, (stage, probabilities) in enumerate(stages):
        for c, name in enumerate(names):
            suffix = f", T={policies[name].temperature:.2f}" if stage == "calibrated" else ""
            data = reliability_data(probabilities[name], truth)
            _reliability_panel(axes[r][c], data, f"{name}\n{stage}{suffix}")
            axes[r][c].set_ylabel("accuracy" if c == 0 else "")
    fig.suptitle(
        f"Reliability: bar = accuracy of the images in a confidence bin (n = how many, at its foot); "
        f"hatched grey: a bin of fewer than {SPARSE_BIN} images, its accuracy only a hollow marker",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(plt, fig, output, "reliability.png")


def _reliability_panel(axis: Any, bins: list[dict[str, Any]], title: str) -> None:
    """Bars: accuracy per bin. A sparse bin gets no bar (its accuracy, often 0 or 1 from one or
    two images, would look like a finding): a hatched grey band over the whole bin and a hollow
    marker at its accuracy. Every bin's count is written upright at its foot, so neighbouring
    counts never collide."""
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    for b in bins:
        width = b["high"] - b["low"]
        centre = b["low"] + width / 2
        if b["sparse"]:
            axis.bar(
                b["low"], 1.0, width=width, align="edge", color="whitesmoke", hatch="///", edgecolor="silver"
            )
            axis.plot(
                centre, b["accuracy"], "o", markerfacecolor="none", markeredgecolor="dimgrey", markersize=5
            )
        else:
            axis.bar(
                b["low"],
                b["accuracy"],
                width=width,
                align="edge",
                color="tab:blue",
                edgecolor="navy",
                alpha=0.8,
            )
            axis.plot(b["confidence"], b["accuracy"], "k.", markersize=4)  # the bin's mean confidence
        axis.text(
            centre,
            0.06,  # above a hollow marker at accuracy 0
            f"n={b['count']}",
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=7,
            color="dimgrey" if b["sparse"] else "black",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.8},
        )
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / max(
        sum(b["count"] for b in bins), 1
    )
    axis.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (top-1)", title=f"{title}\nECE {ece:.3f}")
    axis.title.set_fontsize(8)


def _latency_accuracy(plt: Any, report: EvaluationReport, output: Path) -> str:
    """A labelled marker per variant (area: file size). Labels are placed so none covers
    another label or a marker (``place_labels``), with leader lines; the axes are padded so no
    marker sits on an edge."""
    rows = report.variants
    biggest = max(r.size_mb for r in rows) or 1.0
    fig, axis = plt.subplots(figsize=(6.4, 4.0))
    xs = np.maximum(np.array([r.latency_p50_ms for r in rows]), 1e-3)
    ys = np.array([r.accuracy for r in rows])
    # ONNX variants can run in well under a millisecond where PyTorch takes tens: a log axis
    # keeps them apart
    log = xs.max() / xs.min() > 10
    x_low, x_high = (xs.min() / 3, xs.max() * 6) if log else (0.0, xs.max() * 1.6)
    pad = max(0.03, float(ys.max() - ys.min()) * 0.35)
    y_low, y_high = float(ys.min() - pad), float(ys.max() + pad)
    if log:
        axis.set_xscale("log")
    axis.set(xlim=(x_low, x_high), ylim=(y_low, y_high), ylabel="accuracy (argmax)")
    axis.set_xlabel("latency p50, batch 1 (ms)" + (", log scale" if log else ""))
    axis.set_title("Latency vs accuracy (marker area: file size)", fontsize=10)
    axis.grid(alpha=0.3)
    fig.tight_layout()
    box = axis.get_window_extent()
    size = (box.width * 72 / fig.dpi, box.height * 72 / fig.dpi)  # the axes in points
    fx = np.log(xs / x_low) / np.log(x_high / x_low) if log else xs / x_high
    markers = [(float(x) * size[0], float((y - y_low) / (y_high - y_low)) * size[1]) for x, y in zip(fx, ys)]
    texts = [f"{row.variant} ({row.size_mb:.1f} MB)" for row in rows]
    spots = place_labels(markers, texts, size)
    for row, text, (dx, dy, align), colour in zip(rows, texts, spots, _colours(len(rows))):
        axis.scatter(
            row.latency_p50_ms, row.accuracy, s=40 + 260 * row.size_mb / biggest, alpha=0.6, color=colour
        )
        axis.annotate(
            text,
            (row.latency_p50_ms, row.accuracy),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=8,
            va="center",
            ha=align,
            arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6},
        )
    return _save(plt, fig, output, "latency_accuracy.png")


def _colours(count: int) -> list[Any]:
    import matplotlib

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(count)]


def _roc(
    plt: Any,
    report: EvaluationReport,
    calibrated: dict[str, np.ndarray],
    truth: np.ndarray,
    policies: dict[str, Any],
    output: Path,
) -> str:
    """One-vs-rest ROC, one panel per class, variants overlaid; each stored operating point is
    marked where every variant lands on the test images (o) and where it was chosen (*)."""
    labels = report.labels
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.8), squeeze=False)
    for k, (axis, label) in enumerate(zip(axes[0], labels)):
        positive = truth == k
        axis.plot([0, 1], [0, 1], color="lightgrey", linewidth=1)
        for i, (name, colour) in enumerate(zip(calibrated, _colours(len(calibrated)))):
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, calibrated[name][:, k])
            auc = next(r.auc.get(label) for r in report.variants if r.variant == name)
            style = LINE_STYLES[i % len(LINE_STYLES)]
            width = 2.6 - 0.5 * (i % 4)
            legend = f"{name} (AUC {auc:.3f})" if auc is not None else name
            axis.plot(fpr, tpr, style, color=colour, linewidth=width, label=legend)
            _mark_points(axis, policies[name], label, calibrated[name][:, k], positive, colour, i == 0)
        axis.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.04), xlabel="1 − specificity", title=f"{label} vs rest")
        axis.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("sensitivity")
    fig.tight_layout()
    return _save(plt, fig, output, "roc.png")


def _mark_points(
    axis: Any, policy: Any, label: str, scores: np.ndarray, positive: np.ndarray, colour: Any, first: bool
) -> None:
    for point in policy.operating_points:
        if point.positive != label:
            continue
        called = scores >= point.threshold
        sensitivity = float(called[positive].mean())
        fpr = float(called[~positive].mean())
        axis.plot(fpr, sensitivity, "o", color=colour, markersize=7, markeredgecolor="black")
        if first:  # the validation point and the name once per panel
            val = point.validation
            axis.plot(1 - val["specificity"], val["sensitivity"], "*", color="black", markersize=10)
            axis.annotate(
                f"{point.name}\n(* validation, o test)",
                (fpr, sensitivity),
                xytext=(12, -28),
                textcoords="offset points",
                fontsize=7,
                arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6},
            )


def _risk_coverage(
    plt: Any,
    report: EvaluationReport,
    calibrated: dict[str, np.ndarray],
    truth: np.ndarray,
    policies: dict[str, Any],
    output: Path,
) -> str:
    """Risk (errors among accepted) against coverage when only images at or above a confidence
    are accepted (argmax labels); each variant's stored policy marked where its own decisions
    land (operating point and refer rule applied, as in the report's refer table)."""
    fig, axis = plt.subplots(figsize=(6.0, 4.0))
    top = 0.05
    for i, (row, colour) in enumerate(zip(report.variants, _colours(len(report.variants)))):
        probabilities = calibrated[row.variant]
        curve = risk_coverage(probabilities.max(1), probabilities.argmax(1) == truth)
        top = max(top, float(curve["risk"].max()))
        width = 2.4 - 0.4 * (i % 4)
        style = LINE_STYLES[i % len(LINE_STYLES)]
        axis.plot(curve["coverage"], curve["risk"], style, color=colour, label=row.variant, linewidth=width)
        rule = row.decision.refer if row.decision else None
        if rule is not None and rule.accepted_accuracy.value is not None and rule.coverage.value is not None:
            risk = 1 - rule.accepted_accuracy.value
            top = max(top, risk)
            axis.plot(rule.coverage.value, risk, "o", color=colour, markeredgecolor="black", markersize=8)
    refers = [p.refer for p in policies.values() if p.refer is not None]
    if refers:
        target = refers[0].target_risk
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        note = (
            f"target risk {target:.0%}; o: the stored policy's own decisions (refer rule + operating point)"
        )
        axis.text(0.02, target, note, fontsize=7, va="bottom", color="dimgrey")
    axis.set(
        xlim=(0, 1.03),
        ylim=(-0.01, top * 1.2 + 0.01),
        xlabel="coverage (share accepted)",
        ylabel="risk (error share among accepted)",
    )
    axis.set_title("Risk–coverage (accept when calibrated top probability ≥ threshold)", fontsize=9)
    axis.legend(fontsize=8, loc="upper left")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    return _save(plt, fig, output, "risk_coverage.png")

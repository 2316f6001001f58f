"""Token-merged twins (``export --merge-tokens R|auto|r0,r1,...``): the PyTorch model with token
merging (medvit_edge.train.merging) exported as its own graph, ``model.tome8.onnx``, and every
variant asked for built from it as from ``model.onnx`` (fp16, int8 under the accuracy guard,
raw-input and OpenVINO twins).

Every twin is validated against the *unmerged* PyTorch model on the validation images with the
int8 guard's tolerance (top-1 agreement, accuracy and guarded-class recall): merging changes the
computation, so even the fp32 twin cannot keep fp32's 1e-4 logits.

``auto`` tries uniform schedules r = 1, 2, 3, 4, 6, 8 ... in turn (each one's fp32 merged graph,
run by onnxruntime: agreement, accuracy, recall, batch-1 latency) and keeps the largest r before
the first that fails the guard; larger r only merges more, so the search stops there. Then one
schedule that merges more in the later layers (the last passing r in the first half of the
layers, the failing r in the second half) is tried, and kept when it passes (it merges more
tokens). It needs labelled validation images (the guard's accuracy and recall). The search goes
into the manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.runtime.manifest import MergeReport, MergeTrial, VariantRecord
from medvit_edge.runtime.variants import MERGE_TAG, VARIANTS, Variant
from medvit_edge.timing import measure_latency
from medvit_edge.train.merging import AUTO, MergePlan, MergeRequest, export_merged_onnx, patch_count

from .config import RAW_INPUT_MIN_OPSET
from .context import ExportContext
from .int8 import guarded_int8, openvino_build
from .openvino import onnx_to_openvino
from .validate import compare
from .variants import onnx_to_fp16

logger = logging.getLogger(__name__)

MERGE_OPSET = 17  # the default: ScatterElements' reduction needs 16; raw-input twins need 18
AUTO_CANDIDATES = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32)
TRIAL_RUNS = 10
# onnxruntime's CPU ScatterElements cannot add in float16; the sizes' log stays exact too
MERGE_KEEP_FLOAT32 = ("ScatterElements", "Log")


def merge_opset(ctx: ExportContext) -> int:
    cfg = ctx.cfg
    return cfg.opset or (RAW_INPUT_MIN_OPSET if cfg.raw_input else MERGE_OPSET)


def check_merging(ctx: ExportContext) -> None:
    """Before any variant is built: a schedule must fit the model's layers, and auto needs labels."""
    requested = ctx.cfg.merge_tokens
    if not ctx.cfg.merging or requested is None:
        return
    if requested == AUTO and ctx.validation.label_ids is None:
        raise UserError(
            f"--merge-tokens auto needs labelled validation images (the guard checks accuracy and "
            f"recall); {ctx.validation.source} has none: pass --data or a fixed --merge-tokens R"
        )
    if requested != AUTO:
        layers = ctx.model.config.num_hidden_layers
        MergePlan.make(MergeRequest.parse(requested), patch_count(ctx.model), layers)


def resolve_merging(ctx: ExportContext) -> MergePlan | None:
    """The schedule of the merged twins (searched once for ``auto``); None when auto found
    nothing that passes the guard. Sets ``ctx.merge_plan`` and ``ctx.merge_report``."""
    if ctx.merge_report is not None:
        return ctx.merge_plan
    requested = str(ctx.cfg.merge_tokens)
    patches, layers = patch_count(ctx.model), ctx.model.config.num_hidden_layers
    if requested == AUTO:
        plan, report = search(ctx, patches, layers)
    else:
        plan = MergePlan.make(MergeRequest.parse(requested), patches, layers)
        report = MergeReport(requested, plan.r, plan.schedule, tuple(plan.tokens))
    ctx.merge_plan, ctx.merge_report = plan, report
    if plan is not None:
        logger.info("token merging %s: r %s, tokens per layer %s", plan.tag, list(plan.schedule), plan.tokens)
    return plan


def build_merged(ctx: ExportContext, variant: Variant) -> VariantRecord:
    """One merged twin, built from the merged fp32 graph as its unmerged row is from model.onnx."""
    assert ctx.merge_plan is not None and variant.unmerged is not None and variant.base is None
    started, target = time.perf_counter(), ctx.path(variant)
    source = ctx.path(VARIANTS[f"fp32-{MERGE_TAG}"])
    kind = variant.unmerged
    if kind == "fp32":
        export_merged_onnx(ctx.model, ctx.merge_plan.request, target, ctx.spec.size, merge_opset(ctx))
    elif kind == "fp16":
        onnx_to_fp16(source, target, MERGE_KEEP_FLOAT32)
    elif kind in ("int8-dynamic", "int8-static"):
        return guarded_int8(ctx, variant, source=source)
    elif kind == "openvino-fp32":
        onnx_to_openvino(source, target)
    elif kind == "openvino-int8":
        return guarded_int8(ctx, variant, openvino_build(ctx, variant, source), source)
    else:
        raise ValueError(f"no merged build for {variant.name}")
    return ctx.finish(variant, started)


def search(ctx: ExportContext, patches: int, layers: int) -> tuple[MergePlan | None, MergeReport]:
    """Uniform r in ``AUTO_CANDIDATES`` (distinct schedules only), ascending, until one fails;
    then one schedule between the last that passed and the first that failed (the later half of
    the layers at the failed r), kept when it passes: it merges more tokens."""
    check_merging(ctx)  # labelled images
    unmerged_ms = _latency_ms(ctx.fp32_path, ctx.validation.pixels)
    trials: list[MergeTrial] = []
    best: MergePlan | None = None
    failed: int | None = None
    seen: set[tuple[int, ...]] = set()
    for r in AUTO_CANDIDATES:
        plan = MergePlan.make(MergeRequest(r), patches, layers)
        if plan.schedule in seen or r > patches // 2:
            continue
        seen.add(plan.schedule)
        if not _try(ctx, plan, trials, unmerged_ms):
            failed = r
            break
        best = plan
    if best is not None and failed is not None and layers > 1:
        half = layers // 2
        later = MergeRequest.parse(",".join(map(str, [best.r] * half + [failed] * (layers - half))))
        plan = MergePlan.make(later, patches, layers)
        if plan.schedule not in seen and _try(ctx, plan, trials, unmerged_ms):
            best = plan
    if best is None:
        logger.warning("--merge-tokens auto: no r passes the guard; no merged twins written")
    report = MergeReport(
        requested=AUTO,
        r=best.r if best else None,
        schedule=best.schedule if best else (),
        tokens=tuple(best.tokens) if best else (),
        unmerged_latency_ms=round(unmerged_ms, 3),
        search=tuple(trials),
    )
    return best, report


def _try(ctx: ExportContext, plan: MergePlan, trials: list[MergeTrial], unmerged_ms: float) -> bool:
    trial = run_trial(ctx, plan)
    trials.append(trial)
    logger.info(
        "  auto %s %s: agreement %.2f%%, %.1f ms (unmerged %.1f)%s",
        plan.tag,
        list(plan.schedule),
        100 * trial.top1_agreement,
        trial.latency_ms,
        unmerged_ms,
        "" if trial.passed else "; " + "; ".join(trial.failures),
    )
    return trial.passed


def run_trial(ctx: ExportContext, plan: MergePlan) -> MergeTrial:
    """The merged fp32 graph of ``plan`` (a scratch file) against the unmerged PyTorch model."""
    cfg, validation = ctx.cfg, ctx.validation
    path = ctx.scratch / f"trial.{plan.tag}.onnx"
    export_merged_onnx(ctx.model, plan.request, path, ctx.spec.size, merge_opset(ctx))
    session = _session(path)
    logits = np.concatenate(
        [
            session.run(None, {"pixel_values": validation.pixels[start : start + 32]})[0]
            for start in range(0, len(validation.pixels), 32)
        ]
    ).astype(np.float32)
    check = compare(
        ctx.reference,
        logits,
        validation.label_ids,
        ctx.labels,
        cfg.tolerances[f"fp32-{MERGE_TAG}"],
        cfg.guard_classes,
    )
    return MergeTrial(
        r=plan.r,
        schedule=plan.schedule,
        top1_agreement=check.top1_agreement,
        accuracy=check.accuracy,
        recall={label: check.recall[label] for label in cfg.guard_classes if label in check.recall},
        latency_ms=round(_latency_ms(path, validation.pixels, session), 3),
        passed=check.passed,
        failures=check.failures,
        requested=plan.request.to_text(),
    )


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _latency_ms(path: Path, pixels: np.ndarray, session: Any = None) -> float:
    """Median batch-1 ms of the bare graph (no metadata needed): the search's cost figure."""
    session = session or _session(path)
    return measure_latency(
        lambda i: session.run(None, {"pixel_values": pixels[i % len(pixels)][None]}), TRIAL_RUNS
    ).p50_ms


def describe(report: MergeReport) -> list[str]:
    """Lines ``export`` prints: the schedule, and each r auto tried."""
    lines = []
    if report.r is None:
        lines.append(f"token merging {report.requested}: no r passes the guard; no merged twins")
    else:
        lines.append(
            f"token merging {report.requested}: r {report.r}, per layer {list(report.schedule)}, "
            f"tokens {report.tokens[0]} -> {report.tokens[-1]}"
        )
    if report.search:
        lines.append(f"  unmerged fp32: {report.unmerged_latency_ms:.1f} ms")
    for trial in report.search:
        accuracy = f"{trial.accuracy:.3f}" if trial.accuracy is not None else "n/a"
        recall = ", ".join(f"{k} recall {v:.3f}" for k, v in trial.recall.items())
        verdict = "passed" if trial.passed else "failed: " + "; ".join(trial.failures)
        shown = f"r {trial.r:>2}" if "," not in trial.requested else f"schedule {trial.requested}"
        lines.append(
            f"  {shown}: agreement {trial.top1_agreement:.2%}, accuracy {accuracy}"
            f"{', ' + recall if recall else ''}, {trial.latency_ms:.1f} ms; {verdict}"
        )
    return lines

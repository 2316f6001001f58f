"""int8 variants with the accuracy guard: when full int8 fails its tolerances, keep the most
sensitive layers in float and record what that cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.io.reader import read_labelled_image
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import GuardAttempt, GuardReport, VariantRecord
from medvit_edge.runtime.preprocess import preprocess_batch
from medvit_edge.runtime.variants import Variant
from medvit_edge.timing import measure_latency

from .config import Int8Config
from .context import ExportContext
from .guard import closeness, exclusion_schedule, rank_sensitive_nodes
from .validate import choose_images
from .variants import onnx_to_int8_dynamic, onnx_to_int8_static

Build = Callable[[tuple[str, ...]], dict[str, Any]]


def guarded_int8(
    ctx: ExportContext, variant: Variant, build: Build | None = None, source: Path | None = None
) -> VariantRecord:
    """Full int8 first; if it fails, keep 1, 2, 4 ... of the most sensitive layers in float until
    one passes, else keep the attempt closest to PyTorch. ``build`` makes one attempt (default:
    onnxruntime's quantizer for the variant; export/openvino.py passes NNCF's), from the ``source``
    graph (default model.onnx), whose layers are the ones ranked."""
    cfg, int8 = ctx.cfg, ctx.cfg.int8_config
    build = build or _builder(ctx, variant, int8, source or ctx.fp32_path)
    record = _attempt(ctx, variant, build, ())
    if record.status == "passed" or not cfg.int8_guard_search:
        return record
    full, full_latency = record, _latency_ms(ctx.loaded[variant.name], ctx.validation.pixels)
    ranked = rank_sensitive_nodes(source or ctx.fp32_path, ctx.validation.pixels[:16], int8)
    attempts: list[tuple[tuple[str, ...], VariantRecord]] = [((), record)]
    for excluded in exclusion_schedule(ranked):
        record = _attempt(ctx, variant, build, excluded)
        attempts.append((excluded, record))
        if record.status == "passed":
            break
    if record.status != "passed":
        excluded, best = min(attempts, key=lambda attempt: closeness(attempt[1].validation))
        # the file on disk is the last attempt's: rebuild the best one unless it is that one
        record = best if best is record else _attempt(ctx, variant, build, excluded)
    report = GuardReport(
        full_int8=full.validation,
        full_int8_size_bytes=full.size_bytes,
        full_int8_latency_ms=full_latency,
        excluded_nodes=tuple(record.quantization.get("excluded_nodes", ())),
        tried=tuple(
            GuardAttempt(len(ex), e.validation.max_abs_logit_diff, e.validation.top1_agreement)
            for ex, e in attempts[1:]
        ),
        quantizable=len(ranked),
        size_bytes_cost=record.size_bytes - full.size_bytes,
        latency_ms=_latency_ms(ctx.loaded[variant.name], ctx.validation.pixels),
    )
    return replace(record, guard=report)


def _attempt(ctx: ExportContext, variant: Variant, build: Build, excluded: tuple[str, ...]) -> VariantRecord:
    started = time.perf_counter()
    quantization = build(excluded)
    return ctx.finish(variant, started, quantization)


def _builder(ctx: ExportContext, variant: Variant, int8: Int8Config, source: Path) -> Build:
    target = ctx.path(variant)
    if variant.name.startswith("int8-dynamic"):  # and its token-merged twin
        return lambda exclude: onnx_to_int8_dynamic(source, target, int8, exclude)
    calibration = calibration_pixels(ctx)
    method = ctx.cfg.calibration_method
    return lambda exclude: onnx_to_int8_static(source, target, int8, calibration, method, exclude)


def openvino_build(ctx: ExportContext, variant: Variant, source: Path) -> Build:
    """NNCF's attempt for the guard: the ONNX graph ``source`` (the unfused fp32 one, or a
    token-merged twin's) as an int8 IR, the given layers kept in float."""
    from .openvino import convert_onnx, openvino_to_int8

    calibration = calibration_pixels(ctx)
    settings, target = ctx.cfg.openvino_int8, ctx.path(variant)
    converted = convert_onnx(source)  # once: every attempt quantizes a copy
    return lambda exclude: openvino_to_int8(converted, target, settings, calibration, exclude)


def calibration_pixels(ctx: ExportContext) -> np.ndarray:
    """Default: the run's training images (never the validation images we judge on)."""
    cfg = ctx.cfg
    images = choose_images(cfg, "train", cfg.calibration_data, None, option="--calibration-data")
    if any(image.split == "train" for image in images):  # a split CSV: never its validation/test rows
        images = [image for image in images if image.split == "train"]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(images), min(cfg.calibration_size, len(images)), replace=False)
    decoded = [read_labelled_image(images[i].path, images[i].frame) for i in sorted(picks)]
    return preprocess_batch(decoded, ctx.spec)


def _latency_ms(classifier: Classifier, pixels: np.ndarray, runs: int = 10) -> float:
    """Median batch-1 latency of the model alone (preprocessed tensors in), through the runtime:
    the guard's cost figure."""
    return measure_latency(lambda i: classifier.run(pixels[i % len(pixels)][None]), runs).p50_ms

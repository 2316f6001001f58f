"""int8 variants with the accuracy guard: when full int8 fails its tolerances, keep the most
sensitive layers in float and record what that cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvit_edge.manifest import GuardAttempt, GuardReport, VariantRecord
from medvit_edge.preprocess import preprocess_batch
from medvit_edge.reader import read_labelled_image
from medvit_edge.runtime import Classifier
from medvit_edge.timing import measure_latency
from medvit_edge.variants import Variant

from .config import Int8Config
from .guard import closeness, exclusion_schedule, rank_sensitive_nodes
from .validate import choose_images
from .variants import onnx_to_int8_dynamic, onnx_to_int8_static

if TYPE_CHECKING:
    from .run import Exporter

Build = Callable[[tuple[str, ...]], dict[str, Any]]


def guarded_int8(
    exporter: Exporter, variant: Variant, build: Build | None = None, source: Path | None = None
) -> VariantRecord:
    """Full int8 first; if it fails, keep 1, 2, 4 ... of the most sensitive layers in float until
    one passes, else keep the attempt closest to PyTorch. ``build`` makes one attempt (default:
    onnxruntime's quantizer for the variant; export/openvino.py passes NNCF's), from the ``source``
    graph (default model.onnx), whose layers are the ones ranked."""
    cfg, int8 = exporter.cfg, exporter.cfg.int8_config
    build = build or _builder(exporter, variant, int8, source or exporter.fp32_path)
    record = _attempt(exporter, variant, build, ())
    if record.status == "passed" or not cfg.int8_guard_search:
        return record
    full, full_latency = record, _latency_ms(exporter.path(variant), exporter.validation.pixels)
    ranked = rank_sensitive_nodes(source or exporter.fp32_path, exporter.validation.pixels[:16], int8)
    attempts: list[tuple[tuple[str, ...], VariantRecord]] = [((), record)]
    for excluded in exclusion_schedule(ranked):
        record = _attempt(exporter, variant, build, excluded)
        attempts.append((excluded, record))
        if record.status == "passed":
            break
    if record.status != "passed":
        excluded, best = min(attempts, key=lambda attempt: closeness(attempt[1].validation))
        # the file on disk is the last attempt's: rebuild the best one unless it is that one
        record = best if best is record else _attempt(exporter, variant, build, excluded)
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
        latency_ms=_latency_ms(exporter.path(variant), exporter.validation.pixels),
    )
    return replace(record, guard=report)


def _attempt(exporter: Exporter, variant: Variant, build: Build, excluded: tuple[str, ...]) -> VariantRecord:
    started = time.perf_counter()
    quantization = build(excluded)
    return exporter.finish(variant, started, quantization)


def _builder(exporter: Exporter, variant: Variant, int8: Int8Config, source: Path) -> Build:
    target = exporter.path(variant)
    if variant.name.startswith("int8-dynamic"):  # and its token-merged twin
        return lambda exclude: onnx_to_int8_dynamic(source, target, int8, exclude)
    calibration = calibration_pixels(exporter)
    method = exporter.cfg.calibration_method
    return lambda exclude: onnx_to_int8_static(source, target, int8, calibration, method, exclude)


def calibration_pixels(exporter: Exporter) -> np.ndarray:
    """Default: the run's training images (never the validation images we judge on)."""
    cfg = exporter.cfg
    images = choose_images(cfg, "train", cfg.calibration_data, None)
    if any(image.split == "train" for image in images):  # a split CSV: never its validation/test rows
        images = [image for image in images if image.split == "train"]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(images), min(cfg.calibration_size, len(images)), replace=False)
    decoded = [read_labelled_image(images[i].path, images[i].frame) for i in sorted(picks)]
    return preprocess_batch(decoded, exporter.spec)


def _latency_ms(path: Path, pixels: np.ndarray, runs: int = 10) -> float:
    """Median batch-1 latency through the runtime: the guard's cost figure."""
    classifier = Classifier.load(path, device="cpu", verify=False)
    return measure_latency(lambda i: classifier.run(pixels[i % len(pixels)][None]), runs).p50_ms

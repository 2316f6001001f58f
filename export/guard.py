"""Accuracy-guarded int8: when full int8 fails its tolerances, keep the most sensitive layers in
float and say what that cost."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .variants import onnx_to_int8_dynamic, onnx_to_int8_static


def make_int8(ctx: Any, fp32_path: Path, make_variant: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    cfg = ctx.cfg
    path = cfg.output / "model.int8.onnx"
    variant = f"int8-{cfg.int8}"
    build = _builder(ctx, fp32_path, path)
    entry = make_variant(ctx, variant, path, lambda: build(()))
    if entry["status"] == "passed" or not cfg.int8_guard_search:
        return entry
    full = {
        "size_bytes": entry["size_bytes"],
        "latency_ms": _latency_ms(path, ctx.validation.pixels),
        "validation": entry["validation"],
    }
    ranked = rank_sensitive_nodes(fp32_path, ctx.validation.pixels[:16], cfg.target)
    attempts: list[tuple[Any, dict[str, Any]]] = [((), entry)]  # full int8 stays a candidate
    count = 1
    while count <= max(1, len(ranked) // 2):
        excluded = ranked[:count]
        entry = make_variant(ctx, variant, path, lambda ex=excluded: build(ex))
        attempts.append((excluded, entry))
        if entry["status"] == "passed":
            break
        count *= 2
    if entry["status"] != "passed":
        # none passed: keep the attempt closest to PyTorch (full int8 included), not the last one
        excluded, best = min(
            attempts,
            key=lambda a: (len(a[1]["validation"]["failures"]), a[1]["validation"]["max_abs_logit_diff"]),
        )
        entry = best if best is entry else make_variant(ctx, variant, path, lambda ex=excluded: build(ex))
    entry["guard"] = {
        "full_int8": full,
        "excluded_nodes": entry.get("quantization", {}).get("excluded_nodes", []),
        "tried": [
            {
                "kept_float": len(ex),
                "max_abs_logit_diff": e["validation"]["max_abs_logit_diff"],
                "top1_agreement": e["validation"]["top1_agreement"],
            }
            for ex, e in attempts[1:]
        ],
        "quantizable": len(ranked),
        "size_bytes_cost": entry["size_bytes"] - full["size_bytes"],
        "latency_ms": _latency_ms(path, ctx.validation.pixels),
    }
    return entry


def _builder(ctx: Any, fp32_path: Path, path: Path) -> Callable[[Any], dict[str, Any]]:
    cfg = ctx.cfg
    if cfg.int8 == "dynamic":
        return lambda exclude: onnx_to_int8_dynamic(fp32_path, path, cfg.target, exclude)
    calibration = _calibration_pixels(ctx)
    return lambda exclude: onnx_to_int8_static(
        fp32_path, path, cfg.target, calibration, cfg.calibration_method, exclude
    )


def _calibration_pixels(ctx: Any) -> np.ndarray:
    """Default: the run's training images (never the validation images we judge on)."""
    from medvit_edge.images import load_image
    from medvit_edge.preprocess import preprocess_batch

    from .validate import choose_images

    cfg = ctx.cfg
    images = choose_images(cfg, "train", cfg.calibration_data, None)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(images), min(cfg.calibration_size, len(images)), replace=False)
    return preprocess_batch([load_image(images[i].path) for i in sorted(picks)], ctx.spec)


def rank_sensitive_nodes(fp32_path: Path, pixels: np.ndarray, preset: str) -> list[str]:
    """Weight MatMuls, most harmed by int8 first: each layer's own error, measured by simulating
    dynamic quantization (uint8 per-tensor activations, int8 per-channel weights) on the real
    fp32 activations that feed it, so errors from upstream layers do not blur the ranking."""
    import onnx
    from onnx import numpy_helper

    from .config import INT8_PRESETS

    model = onnx.load(str(fp32_path))
    weights = {init.name: init for init in model.graph.initializer}
    nodes = [
        (n.name, n.input[0], n.input[1])
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights
    ]
    activations = _run_with_outputs(fp32_path, sorted({x for _, x, _ in nodes}), pixels)
    reduce_range = bool(INT8_PRESETS[preset]["reduce_range"])
    rng = np.random.default_rng(0)
    scores = {}
    for name, x_name, w_name in nodes:
        x = activations[x_name].reshape(-1, activations[x_name].shape[-1]).astype(np.float64)
        x = x[rng.choice(len(x), min(len(x), 2048), replace=False)]
        w = numpy_helper.to_array(weights[w_name]).astype(np.float64)
        exact = x @ w
        approximate = _fake_quant_activation(x) @ _fake_quant_weight(w, reduce_range)
        scores[name] = float(np.linalg.norm(approximate - exact) / (np.linalg.norm(exact) + 1e-12))
    return sorted(scores, key=lambda n: -scores[n])


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """onnxruntime's DynamicQuantizeLinear: asymmetric uint8 over the whole tensor, 0 included."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero_point = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


def _fake_quant_weight(w: np.ndarray, reduce_range: bool) -> np.ndarray:
    """Symmetric int8 per output channel (7-bit with reduce_range)."""
    limit = 63 if reduce_range else 127
    scale = np.abs(w).max(axis=0, keepdims=True) / limit
    scale[scale == 0] = 1.0
    return np.round(w / scale) * scale


def _run_with_outputs(path: Path, tensors: list[str], pixels: np.ndarray) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    present = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    wanted = [t for t in tensors if t in present]
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in existing)
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / "probe.onnx"
        onnx.save(model, str(probe))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        outputs = session.run(wanted, {session.get_inputs()[0].name: pixels})
    return dict(zip(wanted, outputs))


def _latency_ms(path: Path, pixels: np.ndarray, repeats: int = 10) -> float:
    """Median batch-1 latency, a rough cost figure for the guard's report."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sample = pixels[:1]
    session.run(None, {name: sample})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {name: sample})
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))

"""Accuracy-guarded int8: when full int8 fails its tolerances, keep the most sensitive layers in
float and say what that cost."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .variants import onnx_to_int8_dynamic, onnx_to_int8_static, quantizable_matmuls


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
    ranked = rank_sensitive_nodes(fp32_path, path, ctx.validation.pixels[:32])
    count = 1
    while count <= max(1, len(ranked) // 2):
        excluded = ranked[:count]
        entry = make_variant(ctx, variant, path, lambda ex=excluded: build(ex))
        if entry["status"] == "passed":
            break
        count *= 2
    entry["guard"] = {
        "full_int8": full,
        "excluded_nodes": entry.get("quantization", {}).get("excluded_nodes", []),
        "kept_float": len(entry.get("quantization", {}).get("excluded_nodes", [])),
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


def rank_sensitive_nodes(fp32_path: Path, int8_path: Path, pixels: np.ndarray) -> list[str]:
    """Quantized nodes, most harmful first: the relative error each adds at its output over the
    error already present at its input (one pass through each graph)."""
    import onnx

    names = set(quantizable_matmuls(fp32_path))
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    nodes = [(n.name, n.input[0], n.output[0]) for n in graph.node if n.name in names]
    tensors = sorted({t for _, i, o in nodes for t in (i, o)})
    reference = _run_with_outputs(fp32_path, tensors, pixels)
    quantized = _run_with_outputs(int8_path, tensors, pixels)

    def error(name: str) -> float:
        if name not in reference or name not in quantized:
            return 0.0
        ref = reference[name]
        return float(np.linalg.norm(quantized[name] - ref) / (np.linalg.norm(ref) + 1e-12))

    scores = {name: error(out) - error(inp) for name, inp, out in nodes}
    return sorted(scores, key=lambda n: -scores[n])


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

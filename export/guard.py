"""The int8 accuracy guard's analysis: which layers int8 hurts most, which sets of them to keep
in float, and which attempt to keep. The exporter runs the attempts (export/exporter.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medvit_edge.runtime.manifest import Validation

from .config import Int8Config


def exclusion_schedule(ranked: Sequence[str]) -> list[tuple[str, ...]]:
    """Keep 1, 2, 4 ... of the most sensitive layers in float, up to half of them: few attempts,
    and the first that passes costs the least."""
    schedule, count = [], 1
    while count <= max(1, len(ranked) // 2):
        schedule.append(tuple(ranked[:count]))
        count *= 2
    return schedule


def closeness(validation: Validation) -> tuple[int, float]:
    """Sort key among failed attempts: fewest failed checks, then closest to PyTorch."""
    return len(validation.failures), validation.max_abs_logit_diff


def rank_sensitive_nodes(fp32_path: Path, pixels: np.ndarray, int8: Int8Config) -> list[str]:
    """Weight MatMuls, most harmed by int8 first: each layer's own error, measured by simulating
    dynamic quantization (uint8 per-tensor activations, int8 per-channel weights) on the real
    fp32 activations that feed it, so errors from upstream layers do not blur the ranking."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    weights = {init.name: init for init in model.graph.initializer}
    nodes = [
        (n.name, n.input[0], n.input[1])
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights
    ]
    activations = _run_with_outputs(fp32_path, sorted({x for _, x, _ in nodes}), pixels)
    reduce_range = int8.reduce_range
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

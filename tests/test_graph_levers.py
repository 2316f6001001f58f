"""bench/graph_levers.py and bench/attention_fusion.py rewrite the fp32 graph before int8; the
speed they bought is in BENCHMARKS.md, and here: each rewrite keeps the model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_each_rewrite_keeps_the_logits_and_changes_the_graph(tiny_export: Path, tmp_path: Path) -> None:
    from bench.attention_fusion import fuse_attention
    from bench.graph_levers import merge_qkv, patch_embedding_as_matmul

    source = tiny_export / "model.onnx"
    config = json.loads(next(tiny_export.parent.rglob("config.json")).read_text())
    shape = [d.dim_value for d in onnx.load(str(source)).graph.input[0].type.tensor_type.shape.dim]
    size = shape[-1]
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    reference = _logits(source, x)
    layers = _ops(source)["Softmax"]

    merged = tmp_path / "qkv.onnx"
    assert merge_qkv(source, merged) == layers  # every layer's Q, K and V found
    assert _ops(merged)["Split"] == layers
    patched = tmp_path / "patch.onnx"
    patch_embedding_as_matmul(merged, patched, image_size=size)
    assert "Conv" not in _ops(patched)
    heads = config["num_attention_heads"]
    fused = tmp_path / "fused.onnx"
    assert fuse_attention(patched, fused, heads)["MultiHeadAttention"] == layers
    for path in (merged, patched, fused):
        np.testing.assert_allclose(_logits(path, x), reference, atol=1e-4, rtol=1e-4, err_msg=path.name)

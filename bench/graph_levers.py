"""Graph rewrites measured by bench/int8_levers.py as onnxruntime int8 levers, and dropped (each
within noise of the shipped int8 on ViT-B/L, or slower): the profile they aimed at is below.

Profiled on ViT-B int8 (onnxruntime 1.32, 2 threads, AVX-512 VNNI): the integer GEMMs take ~72%
of the time, the float attention MatMuls ~10%, GELU ~4%, the patch-embedding Conv (still float)
~3%, LayerNorm ~3%, transposes ~2%. Each rewrite attacks one of those and keeps the logits
(fp32 graphs equal to 1e-6 before quantization):

- ``merge_qkv``: one MatMul with the Q, K and V weights side by side and a ``Split`` after it, so
  each layer quantizes its input once and runs one 3×wider integer GEMM instead of three.
- ``patch_embedding_as_matmul``: the 16×16/stride-16 Conv becomes reshape → transpose → MatMul, so
  dynamic int8 quantizes the patch embedding too.
- ``ort_transformer_optimize``: onnxruntime's own transformer optimizer (SkipLayerNormalization,
  BiasGelu, and MultiHeadAttention where bench/attention_fusion.py fused it first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def merge_qkv(source: Path, target: Path) -> int:
    """Write ``source`` with each layer's three square, biased projections of one tensor merged;
    returns how many layers were merged."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    _bypass_identities(graph, weights)
    groups = _projection_groups(graph, weights)
    replaced: dict[str, list[Any]] = {}
    dropped: set[str] = set()
    for number, (tensor, members) in enumerate(groups.items()):
        stacked = np.concatenate(
            [numpy_helper.to_array(weights[mm.input[1]]) for mm, _, _ in members], axis=1
        )
        bias = np.concatenate([numpy_helper.to_array(weights[b]) for _, _, b in members])
        widths = np.array([stacked.shape[1] // 3] * 3, dtype=np.int64)
        names = [f"qkv_weight_{number}", f"qkv_bias_{number}", f"qkv_split_{number}"]
        graph.initializer.extend(
            numpy_helper.from_array(array, name)
            for array, name in zip((stacked, bias, widths), names, strict=True)
        )
        replaced[members[0][0].name] = [
            helper.make_node("MatMul", [tensor, names[0]], [f"qkv_{number}_mm"], name=f"QKV_MatMul_{number}"),
            helper.make_node(
                "Add", [f"qkv_{number}_mm", names[1]], [f"qkv_{number}"], name=f"QKV_Add_{number}"
            ),
            helper.make_node(
                "Split", [f"qkv_{number}", names[2]], [add.output[0] for _, add, _ in members], axis=-1
            ),
        ]
        dropped.update(node.name for mm, add, _ in members for node in (mm, add))
    nodes = [
        new for node in graph.node for new in [*replaced.get(node.name, []), node] if new.name not in dropped
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    onnx.save(model, str(target))
    return len(groups)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _bypass_identities(graph: Any, weights: dict[str, Any]) -> None:
    """The exporter shares equal initializers through Identity nodes (random init: all-zero
    biases); point their users at the initializer itself."""
    alias = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    for node in graph.node:
        for position, name in enumerate(node.input):
            while name in alias and name not in weights:
                name = alias[name]
            node.input[position] = name


def _projection_groups(graph: Any, weights: dict[str, Any]) -> dict[str, list[tuple[Any, Any, str]]]:
    """Input tensor -> its three (MatMul, bias Add, bias name) square projections."""
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    groups: dict[str, list[tuple[Any, Any, str]]] = {}
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or weight.dims[0] != weight.dims[1]:
            continue
        after = users.get(node.output[0], [])
        bias = next((name for name in after[0].input if name in weights), None) if len(after) == 1 else None
        if after and after[0].op_type == "Add" and bias is not None:
            groups.setdefault(node.input[0], []).append((node, after[0], bias))
    return {tensor: members for tensor, members in groups.items() if len(members) == 3}


def patch_embedding_as_matmul(source: Path, target: Path, image_size: int = 224) -> None:
    """Replace the patch-embedding Conv (kernel = stride = patch) by the same product as a MatMul
    over flattened patches; the Conv's [B, hidden, grid, grid] output is rebuilt for its users."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    conv = next(node for node in graph.node if node.op_type == "Conv")
    kernel = numpy_helper.to_array(weights[conv.input[1]])
    hidden, channels, patch, _ = kernel.shape
    grid = image_size // patch
    constants = {
        "pe_patches_shape": np.array([-1, channels, grid, patch, grid, patch], np.int64),
        "pe_tokens_shape": np.array([-1, grid * grid, channels * patch * patch], np.int64),
        "pe_weight": kernel.reshape(hidden, -1).T.copy(),
        "pe_bias": numpy_helper.to_array(weights[conv.input[2]]),
        "pe_map_shape": np.array([-1, hidden, grid, grid], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    nodes = [
        helper.make_node("Reshape", [conv.input[0], "pe_patches_shape"], ["pe_patches"]),
        helper.make_node("Transpose", ["pe_patches"], ["pe_patches_t"], perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Reshape", ["pe_patches_t", "pe_tokens_shape"], ["pe_tokens"]),
        helper.make_node(
            "MatMul", ["pe_tokens", "pe_weight"], ["pe_projected"], name="PatchEmbedding_MatMul"
        ),
        helper.make_node("Add", ["pe_projected", "pe_bias"], ["pe_embedded"]),
        helper.make_node("Transpose", ["pe_embedded"], ["pe_embedded_t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["pe_embedded_t", "pe_map_shape"], [conv.output[0]]),
    ]
    position = list(graph.node).index(conv)
    graph.node.remove(conv)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    _drop_unused_initializers(graph)
    onnx.save(model, str(target))


def ort_transformer_optimize(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime.transformers.optimizer (model type vit, offline fusions only); returns the
    fused operator counts."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(
        str(source), model_type="vit", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
    optimized.save_model_to_file(str(target))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}

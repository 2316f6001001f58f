"""A lever measured by bench/int8_levers.py and dropped (≈1% on ViT-B/L int8, within noise): fuse
each exported self-attention core into onnxruntime's ``MultiHeadAttention`` kernel.

The Optimum export spells attention as ~50 small nodes per layer (reshapes, transposes, two
scaling ``Mul``s, two batched ``MatMul``s, ``Softmax``); onnxruntime's own transformer optimizer
does not recognise this spelling (it fuses nothing in it), and profiled on ViT-B int8 those nodes
took ~16% of the time. ``com.microsoft.MultiHeadAttention`` takes the projected query, key and
value (B, S, hidden) and does the rest in one threaded kernel. The Q/K/V and output projections
stay ordinary ``MatMul``s, so dynamic int8 still quantizes them.

Matching is structural, from each ``Softmax`` outwards; a layer whose shape differs in any way is
left as it is (and counted as not fused), so the graph always stays correct (fp32 ViT-B: max
|Δlogit| 9e-7 against the unfused graph).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
CONTRIB_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class AttentionCore:
    query: str  # (B, S, hidden) tensors entering the per-head reshapes
    key: str
    value: str
    output: str  # the (B, S, hidden) tensor the core produced
    scale: float  # applied to Q·Kᵀ


def fuse_attention(source: Path, target: Path, num_heads: int) -> dict[str, int]:
    """Write ``source`` with every matched attention core fused; returns fused/unfused counts."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    graph = model.graph
    index = _GraphIndex(graph)
    fused: list[tuple[str, Any, str, str]] = []  # (anchor node, new node, old output, new output)
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    for number, softmax in enumerate(softmaxes):
        core = _match(index, softmax)
        if core is None:
            continue
        output = f"{core.output}/fused_attention_{number}"
        node = helper.make_node(
            "MultiHeadAttention",
            [core.query, core.key, core.value],
            [output],
            name=f"MultiHeadAttention_{number}",
            domain=CONTRIB_DOMAIN,
            num_heads=num_heads,
            scale=core.scale,
        )
        fused.append((index.producer[core.output].name, node, core.output, output))
    _rewire(graph, fused)
    if fused and not any(op.domain == CONTRIB_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    onnx.save(model, str(target))
    counts = {"MultiHeadAttention": len(fused), "attention_not_fused": len(softmaxes) - len(fused)}
    logger.info("attention fusion: %s", counts)
    return counts


class _GraphIndex:
    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def node(self, tensor: str, op_type: str) -> Any | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, tensor: str, op_type: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _perm(node: Any) -> list[int]:
    from onnx import helper

    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [])


def _head_split(index: _GraphIndex, tensor: str, perm: list[int]) -> tuple[str, Any] | None:
    """``Transpose(perm)(Reshape(x))`` -> (x, the Transpose node)."""
    transpose = index.node(tensor, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = index.node(transpose.input[0], "Reshape")
    return (reshape.input[0], transpose) if reshape is not None else None


def _scaled(index: _GraphIndex, tensor: str) -> tuple[str, float] | None:
    """``Mul(x, c)`` with a scalar constant -> (x, c); a tensor without the Mul -> (x, 1)."""
    mul = index.node(tensor, "Mul")
    if mul is None:
        return tensor, 1.0
    value = index.constants.get(mul.input[1])
    if value is None or np.asarray(value).size != 1:
        return None
    return mul.input[0], float(np.asarray(value).reshape(()))


def _match(index: _GraphIndex, softmax: Any) -> AttentionCore | None:
    """Softmax(scale·Q·Kᵀ)·V with per-head reshapes/transposes around it, or None."""
    scores = index.node(softmax.input[0], "MatMul")
    context = index.only_consumer(softmax.output[0], "MatMul")
    if scores is None or context is None or context.input[0] != softmax.output[0]:
        return None
    q_side, k_side = _scaled(index, scores.input[0]), _scaled(index, scores.input[1])
    if q_side is None or k_side is None:
        return None
    query = _head_split(index, q_side[0], [0, 2, 1, 3])
    key = _head_split(index, k_side[0], [0, 2, 3, 1])
    value = _head_split(index, context.input[1], [0, 2, 1, 3])
    merge = index.only_consumer(context.output[0], "Transpose")
    if None in (query, key, value, merge) or _perm(merge) != [0, 2, 1, 3]:
        return None
    users = index.consumers.get(merge.output[0], [])
    merged = [n for n in users if n.op_type == "Reshape"]
    # the other users may only be the Shape nodes computing that Reshape's target (dead once fused)
    if len(merged) != 1 or any(n.op_type not in ("Reshape", "Shape") for n in users):
        return None
    scale = q_side[1] * k_side[1]
    if not math.isfinite(scale) or scale <= 0:
        return None
    return AttentionCore(query[0], key[0], value[0], merged[0].output[0], scale)  # type: ignore[index]


def _rewire(graph: Any, fused: list[tuple[str, Any, str, str]]) -> None:
    """Insert each fused node after its anchor, point consumers at it, drop what nothing uses."""
    renamed = {old: new for _, _, old, new in fused}
    after = {anchor: node for anchor, node, _, _ in fused}
    nodes = []
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
        nodes.append(node)
        if node.name in after:
            nodes.append(after[node.name])
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))

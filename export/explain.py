"""The explainability variant (``export --explain``): the fp32 graph with every encoder layer's
attention probabilities as extra outputs, for ``infer --overlays`` (medvit_edge/inference/explain.py).

The attention probabilities are the outputs of the ``Softmax`` inside each self-attention block,
``(N, heads, T, T)`` with ``T`` = special tokens + patches. They are taken from the *unfused*
graph: onnxruntime's offline transformer fusions (``--optimize``) turn each block into one
``Attention`` op that never materialises them. Each becomes a graph output ``attentions.<layer>``
(through an ``Identity``, so the names do not depend on how the exporter named its nodes), after
``logits``, which stays the first output: the runtime reads logits from output 0 as for every
other file. onnxruntime keeps a fused kernel from swallowing a tensor that is a graph output, so
the logits are computed as in ``model.onnx`` (validated like fp32: within 1e-4 of PyTorch).

A separate file keeps the deployed model lean: fetching ``L x heads x T^2`` floats per image
costs time and memory that a model that only classifies should not pay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.inference.explain import ATTENTION_OUTPUT_PREFIX

logger = logging.getLogger(__name__)

LOGITS = "logits"


class ExplainExportError(UserError):
    """The graph has no attention probabilities to expose (exit 2, one line)."""


def add_attention_outputs(source: Path, target: Path, num_heads: int) -> list[str]:
    """Write ``target``: ``source`` with each attention Softmax also a graph output. Returns the
    new output names, in layer order."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    softmaxes = attention_softmaxes(model, num_heads)
    if not softmaxes:
        raise ExplainExportError(
            f"{source}: no self-attention Softmax of shape (N, {num_heads}, T, T) in the graph "
            "(a fused Attention op hides them); export --explain needs the unfused graph"
        )
    if not graph.output or graph.output[0].name != LOGITS:
        raise ExplainExportError(f"{source}: the first output is not {LOGITS!r}")
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    names = []
    for layer, (tensor, tokens) in enumerate(softmaxes):
        name = f"{ATTENTION_OUTPUT_PREFIX}{layer}"
        graph.node.append(onnx.helper.make_node("Identity", [tensor], [name], name=f"medvit_explain/{name}"))
        dims: list[Any] = [batch.dim_param or batch.dim_value or "batch_size", num_heads, tokens, tokens]
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
        names.append(name)
    onnx.save(model, str(target))
    logger.info("  explain: %d attention maps of %d tokens exposed", len(names), softmaxes[0][1])
    return names


def attention_softmaxes(model: Any, num_heads: int) -> list[tuple[str, int]]:
    """``(output name, T)`` of every Softmax whose output is ``(N, num_heads, T, T)``, in graph
    (= layer) order. ONNX shape inference cannot follow the exporter's dynamic reshapes, so the
    shapes are measured: one run of a copy with every Softmax as an output, on a zero image."""
    import onnx
    import onnxruntime

    candidates = [node.output[0] for node in model.graph.node if node.op_type == "Softmax"]
    if not candidates:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in candidates
    )
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    shape = [dim if isinstance(dim, int) else 1 for dim in image.shape]
    values = session.run(candidates, {image.name: np.zeros(shape, np.float32)})
    return [
        (name, int(value.shape[2]))
        for name, value in zip(candidates, values)
        if value.ndim == 4 and value.shape[1] == num_heads and value.shape[2] == value.shape[3]
    ]

"""Raw-input twins: the preprocessing spec as ONNX ops in front of an exported classifier.

A raw-input file takes ``image``, uint8 ``[N, H, W, 3]`` RGB (N, H and W dynamic), and gives
``probabilities`` (float32 ``[N, classes]``: **calibrated**, ``softmax(logits / T)`` with the
decision policy's temperature, computed as ``medvit_edge.runtime.policy`` does: float32 division, then
the softmax in float64), ``logits`` (float32 ``[N, classes]``, before the temperature) and
``decision`` (int64 ``[N]``: the policy's decision, the index of the decided label or -1 for
"refer", with the operating point and refer rule compared in float64 like the runtime). An
integrator in any language then needs onnxruntime and an image decoder, nothing of ours, and
gets exactly the numbers and decisions ``Classifier``/``infer`` give.

The graph follows ``medvit_edge.runtime.preprocess`` step by step:

* ``Resize`` on the uint8 tensor with ``antialias=1``, ``exclude_outside=1`` and
  ``half_pixel`` coordinates: onnxruntime's antialiased uint8 kernel is a port of Pillow's
  ``Resample.c`` (the same separable filter with its support scaled by the downscale factor,
  taps outside the image dropped and the weights renormalised, 22-bit fixed-point weights, the
  horizontal pass first with a rounded uint8 intermediate). Bicubic is Pillow's
  (``cubic_coeff_a=-0.5``, not ONNX's default -0.75). onnxruntime computes the weights in
  float32 where Pillow uses float64: a weight can differ by one unit of 2^-22, which moves a
  sum that sits exactly on a rounding tie (frequent for ratios like 480/224 = 15/7, whose
  weights are short binary fractions) by one grey level; the uint8 intermediate can carry that
  into a second level. Resizing in float instead keeps every value within one level but leaves
  about a fifth of them off by one (no rounded intermediate): worse (BENCHMARKS.md).
* ``shortest_edge``: the output size is integer arithmetic on the dynamic H, W:
  ``resize_size * H // min(H, W)`` and ``resize_size * W // min(H, W)``, which equals
  torchvision's ``int(resize_size * long / short)`` (exact for these integers); ``squash``:
  ``size x size``.
* zero padding when the resized image is smaller than the crop (torchvision's rule), then the
  centre crop at ``round((H - size) / 2)``: ONNX ``Round`` rounds half to even, like Python.
* NHWC -> NCHW while still uint8, then ``(v / 255 - mean[c]) / std[c]`` in float32, the
  numpy path's operations in its order: for the same pixels, the same values bit for bit.

Pillow filters without an ONNX equivalent (box, hamming, lanczos) are refused, and so is
nearest: Pillow picks its source pixel by accumulating the step in float64 and ONNX's nearest
rounding modes land one pixel off on exact ties, which moved whole columns of BUSI frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.runtime.classifier import RAW_INPUT_NAME
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.preprocess import PreprocessSpec

from .config import RAW_INPUT_MIN_OPSET

logger = logging.getLogger(__name__)

MIN_OPSET = RAW_INPUT_MIN_OPSET
PREFIX = "medvit_raw/"
MODEL_INPUT = "pixel_values"
LOGITS = "logits"
PROBABILITIES = "probabilities"
DECISION = "decision"  # int64 [N]: the decided label's index, -1 for refer

# Pillow's antialiased resample: the filter's support scaled by the downscale factor, pixel
# centres at (i + 0.5) * in/out, taps outside the image dropped and the rest renormalised.
_PILLOW_FILTER = {"antialias": 1, "exclude_outside": 1, "coordinate_transformation_mode": "half_pixel"}
# Pillow's filters that ONNX Resize can express, and the attributes that make it match Pillow.
_RESIZE_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "bilinear": {"mode": "linear", **_PILLOW_FILTER},
    "bicubic": {"mode": "cubic", "cubic_coeff_a": -0.5, **_PILLOW_FILTER},
}


class RawInputError(UserError):
    """The model cannot be given a raw-input front end (exit 2, one line)."""


def check_spec(spec: PreprocessSpec) -> None:
    """``UserError`` for a spec the graph cannot reproduce (a filter ONNX Resize lacks)."""
    if spec.interpolation not in _RESIZE_ATTRIBUTES:
        raise UserError(
            f"--raw-input: interpolation {spec.interpolation!r} has no ONNX Resize equivalent "
            f"(raw-input files support {' and '.join(sorted(_RESIZE_ATTRIBUTES))})"
        )


def add_raw_input(
    source: Path,
    target: Path,
    spec: PreprocessSpec,
    policy: DecisionPolicy | None = None,
    labels: Sequence[str] = (),
) -> dict[str, str]:
    """Write ``target``: ``source`` with the preprocessing graph in front of its input and the
    decision policy behind its logits (calibrated probabilities and the decision). Returns the
    source's metadata_props (they are replaced later)."""
    import onnx

    model = onnx.load(str(source))
    _check_model(model, source)
    graph = model.graph
    old_input = graph.input[0]
    nodes, initializers = preprocessing_nodes(spec, MODEL_INPUT)
    tail = _Builder("medvit_policy/")
    policy_outputs(tail, policy or DecisionPolicy(), list(labels))
    all_nodes = [*nodes, *graph.node, *tail.nodes]
    del graph.node[:]
    graph.node.extend(all_nodes)
    graph.initializer.extend([*initializers, *tail.initializers])
    graph.input.remove(old_input)
    graph.input.insert(0, image_input())
    logits = next(o for o in graph.output if o.name == LOGITS)
    dims = _dims(logits)
    probabilities = onnx.helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, dims)
    decision = onnx.helper.make_tensor_value_info(DECISION, onnx.TensorProto.INT64, dims[:1])
    outputs = [probabilities, logits, decision]
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.save(model, str(target))
    return {prop.key: prop.value for prop in model.metadata_props}


def policy_outputs(builder: _Builder, policy: DecisionPolicy, labels: list[str]) -> None:
    """``logits`` -> ``probabilities`` (DecisionPolicy.probabilities) and ``decision``
    (DecisionPolicy.decision_indices), the same operations in the same precisions."""
    scaled = LOGITS
    if policy.temperature != 1.0:  # float32 / float32, as numpy divides float32 logits by T
        scaled = builder.node("Div", [LOGITS, builder.const(policy.temperature, np.float32)])
    wide = builder.node("Cast", [scaled], to=_DOUBLE)  # metrics.softmax works in float64
    shifted = builder.node("Sub", [wide, builder.node("ReduceMax", [wide, builder.const([-1])], keepdims=1)])
    exp = builder.node("Exp", [shifted])
    total = builder.node("ReduceSum", [exp, builder.const([-1])], keepdims=1)
    builder.node("Cast", [builder.node("Div", [exp, total])], outputs=[PROBABILITIES], to=_FLOAT)
    p = builder.node("Cast", [PROBABILITIES], to=_DOUBLE)  # float32 values compared in float64
    chosen = builder.node("ArgMax", [p], axis=1, keepdims=0)
    if policy.operating_points:
        point = policy.operating_points[0]
        k = labels.index(point.positive)
        column = builder.node("Gather", [p, builder.const(k)], axis=1)
        positive = builder.node("GreaterOrEqual", [column, builder.const(point.threshold, np.float64)])
        mask = builder.const(np.arange(len(labels)) == k, np.bool_)
        others = builder.node("Where", [mask, builder.const(-np.inf, np.float64), p])
        best_other = builder.node("ArgMax", [others], axis=1, keepdims=0)
        chosen = builder.node("Where", [positive, builder.const(k), best_other])
    if policy.refer is not None:
        top = builder.node("ReduceMax", [p, builder.const([1])], keepdims=0)
        unsure = builder.node("Less", [top, builder.const(policy.refer.threshold, np.float64)])
        chosen = builder.node("Where", [unsure, builder.const(-1), chosen])
    builder.node("Identity", [chosen], outputs=[DECISION])


def _dims(value_info: Any) -> list[Any]:
    return [d.dim_param or d.dim_value or None for d in value_info.type.tensor_type.shape.dim]


def image_input() -> Any:
    import onnx

    return onnx.helper.make_tensor_value_info(
        RAW_INPUT_NAME, onnx.TensorProto.UINT8, ["batch", "height", "width", 3]
    )


def _check_model(model: Any, source: Path) -> None:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version < MIN_OPSET:
        raise RawInputError(f"{source}: opset {version}; raw-input files need opset {MIN_OPSET} (--opset 18)")
    names = [i.name for i in model.graph.input]
    if names != [MODEL_INPUT]:
        raise RawInputError(f"{source}: expected one input {MODEL_INPUT!r}, found {names}")
    if LOGITS not in [o.name for o in model.graph.output]:
        raise RawInputError(f"{source}: no {LOGITS!r} output")


def preprocessing_nodes(
    spec: PreprocessSpec, output: str, float_resize: bool = False
) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers from ``image`` (uint8 NHWC) to ``output`` (float32 NCHW).
    ``float_resize``: resize in float32 and round once at the end (the benchmark's comparison:
    no rounded intermediate, unlike Pillow)."""
    check_spec(spec)
    builder = _Builder()
    shape = builder.node("Shape", [RAW_INPUT_NAME])
    batch = builder.node("Slice", [shape, builder.const([0]), builder.const([1])])
    height_width = builder.node("Slice", [shape, builder.const([1]), builder.const([3])])
    resized_hw = _resized_size(builder, spec, height_width)
    sizes = builder.node("Concat", [batch, resized_hw, builder.const([3])], axis=0)
    attributes = _RESIZE_ATTRIBUTES[spec.interpolation]
    source = builder.node("Cast", [RAW_INPUT_NAME], to=_FLOAT) if float_resize else RAW_INPUT_NAME
    resized = builder.node("Resize", [source, "", "", sizes], **attributes)
    if float_resize:
        low, high = builder.const(0.0, np.float32), builder.const(255.0, np.float32)
        rounded = builder.node("Clip", [builder.node("Round", [resized]), low, high])
        resized = builder.node("Cast", [rounded], to=_UINT8)
    cropped = _pad_and_crop(builder, spec, resized, resized_hw)
    _normalise(builder, spec, cropped, output)
    return builder.nodes, builder.initializers


def _resized_size(builder: _Builder, spec: PreprocessSpec, height_width: str) -> str:
    """[new H, new W] as int64: the shorter side to ``resize_size``, the longer one
    ``resize_size * long // short`` (floor, as torchvision's ``int()`` of the exact ratio)."""
    if spec.resize_mode == "squash":
        return builder.const([spec.size, spec.size])
    short = builder.node("ReduceMin", [height_width], keepdims=1)
    scaled = builder.node("Mul", [height_width, builder.const([spec.resize_size])])
    return builder.node("Div", [scaled, short])


def _pad_and_crop(builder: _Builder, spec: PreprocessSpec, resized: str, resized_hw: str) -> str:
    """Zero-pad to at least ``size`` (torchvision's CenterCrop does), then take the centre."""
    if spec.resize_mode == "squash":
        return resized  # already size x size
    size = builder.const([spec.size, spec.size])
    padded_hw = resized_hw
    if spec.resize_size < spec.size:
        missing = builder.node("Max", [builder.node("Sub", [size, resized_hw]), builder.const([0, 0])])
        before = builder.node("Div", [missing, builder.const([2, 2])])
        after = builder.node("Sub", [missing, before])
        pads = builder.node("Concat", [before, after], axis=0)
        resized = builder.node("Pad", [resized, pads, "", builder.const([1, 2])])
        padded_hw = builder.node("Add", [resized_hw, missing])
    excess = builder.node("Cast", [builder.node("Sub", [padded_hw, size])], to=_FLOAT)
    half = builder.node("Div", [excess, builder.const([2.0], np.float32)])
    start = builder.node("Cast", [builder.node("Round", [half])], to=_INT64)
    end = builder.node("Add", [start, size])
    return builder.node("Slice", [resized, start, end, builder.const([1, 2])])


def _normalise(builder: _Builder, spec: PreprocessSpec, pixels: str, output: str) -> None:
    """uint8 NHWC -> the spec's float32 values, NCHW: ``(v / 255 - mean[c]) / std[c]``, the same
    float32 operations in the same order as the numpy path's lookup table, so every value is
    equal bit for bit. Transposed while still uint8 (a quarter of the bytes)."""
    planes = builder.node("Cast", [builder.node("Transpose", [pixels], perm=[0, 3, 1, 2])], to=_FLOAT)
    if abs(spec.rescale_factor - 1 / 255) < 1e-12:  # as _normalisation_table: a division by 255
        scaled = builder.node("Div", [planes, builder.const(255.0, np.float32)])
    else:
        scaled = builder.node("Mul", [planes, builder.const(spec.rescale_factor, np.float32)])
    mean = builder.const(np.asarray(spec.mean).reshape(3, 1, 1), np.float32)
    std = builder.const(np.asarray(spec.std).reshape(3, 1, 1), np.float32)
    builder.node("Div", [builder.node("Sub", [scaled, mean]), std], outputs=[output])


_FLOAT, _UINT8, _INT32, _INT64, _DOUBLE = 1, 2, 6, 7, 11  # onnx.TensorProto enum values


def preprocessing_model(spec: PreprocessSpec, float_resize: bool = False) -> Any:
    """The preprocessing graph alone (``image`` -> ``pixel_values``), for tests and benchmarks."""
    import onnx

    nodes, initializers = preprocessing_nodes(spec, MODEL_INPUT, float_resize)
    output = onnx.helper.make_tensor_value_info(
        MODEL_INPUT, onnx.TensorProto.FLOAT, ["batch", 3, spec.size, spec.size]
    )
    graph = onnx.helper.make_graph(nodes, "preprocess", [image_input()], [output], initializer=initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", MIN_OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


class _Builder:
    """Appends uniquely named nodes and constant initializers."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def _name(self, kind: str) -> str:
        return f"{self.prefix}{kind}_{len(self.nodes) + len(self.initializers)}"

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attributes: Any) -> str:
        import onnx

        name = self._name(op)
        outputs = outputs or [name]
        self.nodes.append(onnx.helper.make_node(op, inputs, outputs, name=name, **attributes))
        return outputs[0]

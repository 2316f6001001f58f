"""The variants table: every kind of file ``export`` writes, in one place.

Export, the runtime, evaluate, the benchmarks and the docs all read this table (like
Ultralytics' ``export_formats()``): a new variant is one row here plus one method on the
exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from medvit_edge.runtime.metadata import PIXEL_VALUES_INPUT, RAW_INPUT, InputKind

Precision = Literal["fp32", "fp16", "int8"]
# Where the runtime runs a variant (onnxruntime execution providers; see runtime.choose_providers).
Device = Literal["auto", "cpu", "cuda", "tensorrt"]
VariantName = Literal[
    "fp32",
    "fp16",
    "int8-dynamic",
    "int8-static",
    "fp32-raw",
    "fp16-raw",
    "int8-dynamic-raw",
    "int8-static-raw",
    "explain",
    "openvino-fp32",
    "openvino-int8",
    "fp32-tome",
    "fp16-tome",
    "int8-dynamic-tome",
    "int8-static-tome",
    "fp32-tome-raw",
    "fp16-tome-raw",
    "int8-dynamic-tome-raw",
    "int8-static-tome-raw",
    "openvino-fp32-tome",
    "openvino-int8-tome",
]


@dataclass(frozen=True)
class Tolerance:
    """What a variant must keep, measured against PyTorch fp32 on the same inputs."""

    max_abs_logit: float | None = None
    min_agreement: float = 1.0
    max_accuracy_drop: float | None = None  # in accuracy units (0.02 = 2 points)
    max_recall_drop: float | None = None  # for each guarded class
    max_abs_probability: float | None = None  # after softmax, for each class

    def to_dict(self) -> dict[str, float]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Variant:
    name: VariantName
    file_name: str
    precision: Precision
    runs_on: str
    tolerance: Tolerance
    # Dynamic int8 picks activation ranges from the whole batch, so an image's result would
    # depend on its batch-mates: such a variant runs one image per onnxruntime call.
    batch_independent: bool = True
    # Raw-input twins (export --raw-input) take uint8 RGB pixels and preprocess in the graph;
    # ``base`` is the variant whose graph they wrap.
    input: InputKind = PIXEL_VALUES_INPUT
    base: str | None = None
    # False: a tool, not a deployment (explain): never the file `infer RUN_DIR` picks or recommends.
    deployable: bool = True
    # Token-merged twins (export --merge-tokens): the unmerged row they twin; their file names
    # carry the merge schedule's tag in place of ``tome`` (``model.tome.onnx`` -> ``model.tome8.onnx``).
    unmerged: str | None = None

    @property
    def merged(self) -> bool:
        return self.unmerged is not None

    def file_for(self, tag: str) -> str:
        """The file name with a merge tag (``tome8``) in place of ``tome``; unmerged rows as is."""
        return self.file_name.replace(f".{MERGE_TAG}.", f".{tag}.") if self.merged else self.file_name

    @property
    def check_tolerance(self) -> float:
        """Max |Δprobability| allowed when ``medvit-edge check`` re-runs the golden files."""
        return CHECK_TOLERANCE[self.precision]


# `medvit-edge check` re-runs the same file on another CPU, GPU or onnxruntime build, so only
# kernel differences may move its probabilities. Measured between this AVX-512 VNNI CPU and an
# emulated AVX2 one (no VNNI), 156 BUSI test images, the small BUSI model: fp32 moved by 1.5e-7;
# 7-bit int8 by up to 3.9e-4 (float rounding that dynamic quantization turns into a level); 8-bit
# int8 by up to 8.5e-3, 118 images beyond 1e-3 (u8 x s8 saturation), which the int8 bound catches.
CHECK_TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 2e-3, "int8": 1e-3}


INT8_TOLERANCE = Tolerance(min_agreement=0.98, max_accuracy_drop=0.02, max_recall_drop=0.03)

VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            "fp32",
            "model.onnx",
            "fp32",
            "any onnxruntime",
            Tolerance(max_abs_logit=1e-4, min_agreement=1.0),
        ),
        Variant(
            "fp16",
            "model.fp16.onnx",
            "fp16",
            "CUDA (fast), CPU (correct, not faster)",
            Tolerance(min_agreement=0.99, max_accuracy_drop=0.01),
        ),
        Variant(
            "int8-dynamic",
            "model.int8.onnx",
            "int8",
            "CPU (fastest)",
            INT8_TOLERANCE,
            batch_independent=False,
        ),
        Variant("int8-static", "model.int8.onnx", "int8", "CPU", INT8_TOLERANCE),
    )
}


def _raw_twin(base: Variant, tolerance: Tolerance) -> Variant:
    """``model.int8.onnx`` -> ``model.int8.raw.onnx``, judged against PyTorch on the numpy path's
    tensors: the in-graph resize's own differences (a grey level on a few pixels) count."""
    return Variant(
        f"{base.name}-raw",  # type: ignore[arg-type]
        base.file_name.removesuffix(".onnx") + ".raw.onnx",
        base.precision,
        base.runs_on,
        tolerance,
        base.batch_independent,
        input=RAW_INPUT,
        base=base.name,
        unmerged=f"{base.unmerged}-raw" if base.unmerged else None,
    )


# fp32 cannot keep its 1e-4 logits once the resize runs in onnxruntime instead of Pillow: it must
# keep the label (99.5%) and every probability within 0.02. The others keep their own tolerances.
RAW_FP32_TOLERANCE = Tolerance(min_agreement=0.995, max_abs_probability=0.02)
VARIANTS.update(
    {
        f"{name}-raw": _raw_twin(
            VARIANTS[name], RAW_FP32_TOLERANCE if name == "fp32" else VARIANTS[name].tolerance
        )
        for name in ("fp32", "fp16", "int8-dynamic", "int8-static")
    }
)
# export --explain: the fp32 graph with each layer's attention probabilities as extra outputs
# after the logits (export/explain.py), for `infer --overlays`; never deployed, so its logits
# must be fp32's exactly.
VARIANTS["explain"] = Variant(
    "explain",
    "model.explain.onnx",
    "fp32",
    "any onnxruntime (heat maps for infer --overlays)",
    VARIANTS["fp32"].tolerance,
    deployable=False,
)
# export --openvino: OpenVINO IR (model.*.xml + its weights .bin beside it), run by the runtime's
# OpenVINO backend (medvit_edge/runtime/openvino_backend.py). The fp32 IR runs in f32 (OpenVINO would pick
# bf16 on CPUs with bf16 units), so it keeps fp32's tolerance; int8 is NNCF's post-training
# quantization (export/openvino.py) under the int8 guard.
VARIANTS.update(
    {
        "openvino-fp32": Variant(
            "openvino-fp32", "model.openvino.xml", "fp32", "CPU (OpenVINO)", VARIANTS["fp32"].tolerance
        ),
        "openvino-int8": Variant(
            "openvino-int8", "model.openvino-int8.xml", "int8", "CPU (OpenVINO)", INT8_TOLERANCE
        ),
    }
)
# export --merge-tokens: token-merged twins (medvit_edge.train.merging; the merging is in the
# graph). Judged against the *unmerged* PyTorch model: merging changes the computation, so every
# twin, fp32 included, must keep the int8 guard's label agreement, accuracy and recall.
MERGE_TAG = "tome"


def _merged_twin(base: Variant) -> Variant:
    stem, suffix = base.file_name.rsplit(".", 1)
    return Variant(
        f"{base.name}-{MERGE_TAG}",  # type: ignore[arg-type]
        f"{stem}.{MERGE_TAG}.{suffix}",
        base.precision,
        base.runs_on,
        INT8_TOLERANCE,
        base.batch_independent,
        unmerged=base.name,
    )


VARIANTS.update(
    {
        f"{name}-{MERGE_TAG}": _merged_twin(VARIANTS[name])
        for name in ("fp32", "fp16", "int8-dynamic", "int8-static", "openvino-fp32", "openvino-int8")
    }
)
VARIANTS.update(
    {
        f"{name}-{MERGE_TAG}-raw": _raw_twin(VARIANTS[f"{name}-{MERGE_TAG}"], INT8_TOLERANCE)
        for name in ("fp32", "fp16", "int8-dynamic", "int8-static")
    }
)
assert set(VARIANTS) == set(get_args(VariantName))

# Which variant `infer RUN_DIR` picks when given a folder: fastest first, on a CPU.
DEPLOY_PREFERENCE: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp32", "fp16")


def variant_named(name: str) -> Variant | None:
    """The table row for a file's ``variant`` metadata (None for a file made outside ``export``)."""
    return VARIANTS.get(name)


def file_names() -> list[str]:
    """Every file name a variant can have, in table order, without repeats."""
    return list(dict.fromkeys(variant.file_name for variant in VARIANTS.values()))


def tool_files() -> set[str]:
    """File names of rows that are tools, not deployable models (explain): evaluate and benchmark
    leave them out."""
    return {variant.file_name for variant in VARIANTS.values() if not variant.deployable}

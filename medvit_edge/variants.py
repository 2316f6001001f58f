"""The variants table: every kind of file ``export`` writes, in one place.

Export, the runtime, evaluate, the benchmarks and the docs all read this table (like
Ultralytics' ``export_formats()``): a new variant is one row here plus one method on the
exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Precision = Literal["fp32", "fp16", "int8"]
# Where the runtime runs a variant (onnxruntime execution providers; see runtime.choose_providers).
Device = Literal["auto", "cpu", "cuda", "tensorrt"]
VariantName = Literal["fp32", "fp16", "int8-dynamic", "int8-static"]


@dataclass(frozen=True)
class Tolerance:
    """What a variant must keep, measured against PyTorch fp32 on the same inputs."""

    max_abs_logit: float | None = None
    min_agreement: float = 1.0
    max_accuracy_drop: float | None = None  # in accuracy units (0.02 = 2 points)
    max_recall_drop: float | None = None  # for each guarded class

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
assert set(VARIANTS) == set(get_args(VariantName))

# Which variant `infer RUN_DIR` picks when given a folder: fastest first, on a CPU.
DEPLOY_PREFERENCE: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp32", "fp16")


def variant_named(name: str) -> Variant | None:
    """The table row for a file's ``variant`` metadata (None for a file made outside ``export``)."""
    return VARIANTS.get(name)


def file_names() -> list[str]:
    """Every file name a variant can have, in table order, without repeats."""
    return list(dict.fromkeys(variant.file_name for variant in VARIANTS.values()))

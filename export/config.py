"""Export settings and the int8 settings per CPU target (tolerances live in the variants table)."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit_edge.errors import UserError
from medvit_edge.options import validate_literals
from medvit_edge.system import cpu_flags
from medvit_edge.variants import VARIANTS, Tolerance

Int8Mode = Literal["dynamic", "static"]
Int8Target = Literal["avx2", "avx512_vnni", "arm64"]
TargetChoice = Literal["auto", "avx2", "avx512_vnni", "arm64"]
CalibrationMethod = Literal["minmax", "percentile", "entropy"]


@dataclass(frozen=True)
class Int8Config:
    """How weights are quantized for one CPU target (like Optimum's ``AutoQuantizationConfig``).

    Activations are uint8 (computed at run time for dynamic int8), weights int8 per output
    channel. On AVX2 without VNNI, the u8 x s8 multiply (``vpmaddubsw``) adds pairs into int16 and
    can saturate (255*127*2 > 32767): 7-bit weights (``reduce_range``) keep every pair sum in
    range. VNNI and ARM dot products accumulate in int32.
    """

    target: Int8Target
    weight_type: Literal["QInt8"] = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False

    @classmethod
    def for_target(cls, target: str) -> Int8Config:
        if target == "auto":
            target = detect_target()
        if target == "avx2":
            return cls("avx2", reduce_range=True)
        if target in ("avx512_vnni", "arm64"):
            return cls(target)  # type: ignore[arg-type]
        raise UserError(f"unknown int8 target {target!r}; one of auto, avx2, avx512_vnni, arm64")

    @property
    def weight_bits(self) -> int:
        return 7 if self.reduce_range else 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_target() -> Int8Target:
    """The int8 target for this machine, read from the CPU flags."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags()
    return "avx512_vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "avx2"


def default_tolerances() -> dict[str, Tolerance]:
    return {name: variant.tolerance for name, variant in VARIANTS.items()}


@dataclass
class ExportConfig:
    """``export(cfg)`` settings: which variants, how to quantize, what to validate on."""

    run_dir: Path  # a train run folder or any save_pretrained ViT classifier folder
    output: Path | None = None  # default: RUN_DIR/onnx
    fp16: bool = False
    int8: bool = False
    int8_mode: Int8Mode = "dynamic"
    target: TargetChoice = "auto"  # the CPU the int8 file is tuned for; auto: this CPU
    calibration_method: CalibrationMethod = "minmax"
    calibration_data: Path | None = None  # default: the run's training images
    calibration_size: int = 64
    data: Path | None = None  # validation images; default: the run's validation split
    data_split: str | None = None  # with --data: use only this split of a split CSV
    max_validation_images: int | None = None
    guard_classes: tuple[str, ...] = ("malignant",)  # recall guarded for int8 (if present)
    allow_degraded: bool = False
    int8_guard_search: bool = True  # keep the most sensitive layers in float when int8 fails
    # onnxruntime's offline transformer fusions on the fp32 graph (int8 builds on it). Off: with
    # onnxruntime 1.32 they measured slower than its own online fusions (bench/speed.py).
    optimize: bool = False
    opset: int | None = None
    batch_size: int = 16  # PyTorch reference batch
    tolerances: dict[str, Tolerance] = field(default_factory=default_tolerances)

    def __post_init__(self) -> None:
        if isinstance(self.int8, str):  # the old spelling int8="dynamic" / "static"
            self.int8, self.int8_mode = True, self.int8  # type: ignore[assignment]
        validate_literals(self)
        self.run_dir = Path(self.run_dir)
        self.output = Path(self.output) if self.output else self.run_dir / "onnx"
        if self.calibration_size < 1 or self.batch_size < 1:
            raise UserError("calibration_size and batch_size must be at least 1")
        if self.max_validation_images is not None and self.max_validation_images < 1:
            raise UserError("max_validation_images must be at least 1")
        self.tolerances = {**default_tolerances(), **self.tolerances}

    @property
    def int8_config(self) -> Int8Config:
        return Int8Config.for_target(self.target)

    def requested_variants(self) -> list[str]:
        """Rows of the variants table to build, in order (fp32 always: the others derive from it)."""
        names = ["fp32"] + (["fp16"] if self.fp16 else [])
        return names + ([f"int8-{self.int8_mode}"] if self.int8 else [])

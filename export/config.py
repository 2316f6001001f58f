"""Export settings, int8 presets per CPU target, and the tolerances each variant must meet."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Int8Mode = Literal["dynamic", "static"]

# Dynamic int8 (onnxruntime's recommendation for transformers): activations are uint8 at run
# time, weights int8 per output channel. On AVX2 without VNNI, the u8 x s8 multiply
# (vpmaddubsw) adds pairs into int16 and can saturate (255*127*2 > 32767): 7-bit weights
# (reduce_range) keep every pair sum in range. VNNI and ARM dot products accumulate in int32.
INT8_PRESETS: dict[str, dict[str, object]] = {
    "avx2": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "avx512_vnni": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
    "arm64": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
}


@dataclass(frozen=True)
class Tolerance:
    """What a variant must keep, measured against PyTorch fp32 on the same inputs."""

    max_abs_logit: float | None = None
    min_agreement: float = 1.0
    max_accuracy_drop: float | None = None  # in accuracy units (0.02 = 2 points)
    max_recall_drop: float | None = None  # for each guarded class


TOLERANCES = {
    "fp32": Tolerance(max_abs_logit=1e-4, min_agreement=1.0),
    "fp16": Tolerance(min_agreement=0.99, max_accuracy_drop=0.01),
    "int8": Tolerance(min_agreement=0.98, max_accuracy_drop=0.02, max_recall_drop=0.03),
}


def detect_target() -> str:
    """The int8 preset for this machine, read from the CPU flags."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return "avx2"
    return "avx512_vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "avx2"


@dataclass
class ExportConfig:
    """``export(cfg)`` settings: which variants, how to quantize, what to validate on."""

    run_dir: Path  # a train run folder or any save_pretrained ViT classifier folder
    output: Path | None = None  # default: RUN_DIR/onnx
    fp16: bool = False
    int8: Int8Mode | None = None
    target: str = "auto"  # avx2 | avx512_vnni | arm64 | auto (this CPU)
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
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
    batch_size: int = 16
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(TOLERANCES))

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.output = Path(self.output) if self.output else self.run_dir / "onnx"
        if self.target == "auto":
            self.target = detect_target()
        if self.target not in INT8_PRESETS:
            raise ValueError(f"unknown int8 target {self.target!r}; one of {sorted(INT8_PRESETS)}")
        if self.int8 not in (None, "dynamic", "static"):
            raise ValueError(f"--int8 must be dynamic or static, got {self.int8!r}")

"""Export settings and the int8 settings per CPU target (tolerances live in the variants table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from medvit_edge.errors import UserError
from medvit_edge.options import validate_literals
from medvit_edge.runtime.int8_target import TARGETS, Int8Target, detect_target
from medvit_edge.runtime.policy import check_refer_settings, parse_operating_point
from medvit_edge.runtime.variants import MERGE_TAG, VARIANTS, Tolerance

from .openvino_config import OpenVinoInt8Config, check_installed

Int8Mode = Literal["dynamic", "static"]
# portable (the default): 7-bit weights, right on every CPU; auto: the CPU that exports, which is
# not necessarily the one that deploys (medvit_edge/runtime/int8_target.py)
TargetChoice = Literal["portable", "auto", "avx2", "avx512_vnni", "arm64"]
CalibrationMethod = Literal["minmax", "percentile", "entropy"]
RAW_INPUT_MIN_OPSET = 18  # Resize's antialias attribute
MERGE_MIN_OPSET = 16  # ScatterElements' reduction attribute (token merging)


@dataclass(frozen=True)
class Int8Config:
    """How weights are quantized for one CPU target (like Optimum's ``AutoQuantizationConfig``).

    Activations are uint8 (computed at run time for dynamic int8), weights int8 per output
    channel. On x86 without VNNI, the u8 x s8 multiply (``vpmaddubsw``) adds pairs into int16 and
    can saturate (255*127*2 > 32767): 7-bit weights (``reduce_range``) keep every pair sum in
    range, so ``portable`` (and ``avx2``) files are right on every CPU. VNNI and ARM dot products
    accumulate in int32: ``avx512_vnni`` and ``arm64`` keep all 8 bits.
    """

    target: Int8Target
    weight_type: Literal["QInt8"] = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False

    @classmethod
    def for_target(cls, target: str) -> Int8Config:
        if target == "auto":
            target = detect_target()
        if target not in TARGETS:
            raise UserError(f"unknown int8 target {target!r}; one of {', '.join(get_args(TargetChoice))}")
        return cls(target, reduce_range=TARGETS[target].weight_bits == 7)  # type: ignore[arg-type]

    @property
    def weight_bits(self) -> int:
        return 7 if self.reduce_range else 8

    def to_dict(self) -> dict[str, Any]:
        """What the file's ``quantization`` metadata records (the runtime compares ``target`` and
        ``weight_bits`` with the CPU it runs on)."""
        return {**asdict(self), "weight_bits": self.weight_bits}


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
    target: TargetChoice = "portable"  # the CPUs the int8 file must be exact on; auto: this CPU
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
    # a raw-input twin of every variant (model.raw.onnx ...): uint8 RGB in, preprocessing in the graph
    raw_input: bool = False
    # model.explain.onnx: fp32 plus every layer's attention probabilities, for infer --overlays
    explain: bool = False
    # OpenVINO IR beside the ONNX files: model.openvino.xml, + model.openvino-int8.xml with --int8
    openvino: bool = False
    openvino_int8: OpenVinoInt8Config = field(default_factory=OpenVinoInt8Config)  # NNCF's levers
    batch_size: int = 16  # PyTorch reference batch
    tolerances: dict[str, Tolerance] = field(default_factory=default_tolerances)
    # onnx/golden/ (every variant's expected outputs, for `medvit-edge check`) travels with the
    # deployed files: None = synthetic phantom images (no patient pixels); 0 = no golden files;
    # N = N real validation images, only when asked for (ultrasound burns names and IDs into them)
    golden_images: int | None = None
    model_version: int | None = None  # default: the model card's model_version, else 1 (export/card.py)
    # decision policy (medvit_edge.runtime.policy), fitted once on the validation images' PyTorch logits
    operating_points: tuple[str, ...] = ()  # e.g. "malignant-sensitivity=0.95"; the first is applied
    refer_risk: float | None = None  # refer when unsure: at most this error among accepted cases
    # probability that refer_risk holds on new images (0: only on the validation images)
    refer_confidence: float = 0.9
    calibrate: bool = True  # temperature scaling (validation NLL)
    # token-merged twins of every variant asked for (model.tome8.onnx ...): r tokens merged per
    # layer, "r0,r1,..." one per layer, or "auto" (the largest r that passes the guard). None:
    # what the run was trained with (train --merge-tokens), else no merging; "0": none.
    merge_tokens: str | None = None

    def __post_init__(self) -> None:
        validate_literals(self)
        self.run_dir = Path(self.run_dir)
        self.output = Path(self.output) if self.output else self.run_dir / "onnx"
        if self.calibration_size < 1 or self.batch_size < 1:
            raise UserError("calibration_size and batch_size must be at least 1")
        if self.max_validation_images is not None and self.max_validation_images < 1:
            raise UserError("max_validation_images must be at least 1")
        if (self.golden_images is not None and self.golden_images < 0) or (
            self.model_version is not None and self.model_version < 1
        ):
            raise UserError("golden_images must be 0 or more and model_version at least 1")
        if self.raw_input and self.opset is not None and self.opset < RAW_INPUT_MIN_OPSET:
            raise UserError(
                f"--raw-input needs opset {RAW_INPUT_MIN_OPSET} or later (Resize with antialias), "
                f"got --opset {self.opset}"
            )
        self.tolerances = {**default_tolerances(), **self.tolerances}
        if self.openvino:
            check_installed()
        self.operating_points = tuple(self.operating_points)
        for spec in self.operating_points:
            parse_operating_point(spec)  # a bad spelling fails before the model is loaded
        check_refer_settings(self.refer_risk, self.refer_confidence)
        self._check_merging()

    def _check_merging(self) -> None:
        """The spelling of --merge-tokens (the layer count is checked once the model is loaded);
        without it, the merging the run was trained with."""
        from medvit_edge.train.merging import AUTO, MergeRequest, trained_merge_tokens

        if self.merge_tokens is None:
            self.merge_tokens = trained_merge_tokens(self.run_dir)
        if self.merge_tokens is None:
            return
        self.merge_tokens = str(self.merge_tokens).strip()
        if self.merge_tokens != AUTO:
            self.merge_tokens = MergeRequest.parse(self.merge_tokens).to_text()
        if self.merging and self.opset is not None and self.opset < MERGE_MIN_OPSET:
            raise UserError(
                f"--merge-tokens needs opset {MERGE_MIN_OPSET} or later (ScatterElements with "
                f"reduction), got --opset {self.opset}"
            )

    @property
    def merging(self) -> bool:
        """Token-merged twins are asked for (a schedule that merges, or auto)."""
        from medvit_edge.train.merging import AUTO, MergeRequest

        if self.merge_tokens is None:
            return False
        return self.merge_tokens == AUTO or MergeRequest.parse(self.merge_tokens).active

    @property
    def int8_config(self) -> Int8Config:
        return Int8Config.for_target(self.target)

    def requested_variants(self) -> list[str]:
        """Rows of the variants table to build, in order (fp32 always: the others derive from it)."""
        names = ["fp32"] + (["fp16"] if self.fp16 else [])
        names += [f"int8-{self.int8_mode}"] if self.int8 else []
        names += [f"{name}-{MERGE_TAG}" for name in names] if self.merging else []
        names += [f"{name}-raw" for name in names] if self.raw_input else []
        openvino = ["openvino-fp32"] + (["openvino-int8"] if self.int8 else []) if self.openvino else []
        names += openvino + ([f"{name}-{MERGE_TAG}" for name in openvino] if self.merging else [])
        return names + (["explain"] if self.explain else [])

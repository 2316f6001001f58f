"""The NNCF post-training quantization settings of the ``openvino-int8`` variant (export --openvino
--int8), one field per lever, recorded in the file's ``quantization`` metadata.

Kept apart from export/openvino.py so ``medvit_edge.export.config`` imports without OpenVINO.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any, Literal

from medvit_edge.errors import UserError
from medvit_edge.options import validate_literals
from medvit_edge.runtime.openvino_backend import InferencePrecision

Preset = Literal["mixed", "performance"]
OverflowFix = Literal["enable", "disable", "first_layer_only"]
TargetDevice = Literal["ANY", "CPU", "CPU_SPR"]
INSTALL_HINT = "pip install 'medvit-edge[openvino-export]'"


@dataclass(frozen=True)
class OpenVinoInt8Config:
    """``nncf.quantize`` arguments (NNCF's names) plus the runtime's inference precision.

    Defaults differ from NNCF's transformer defaults (mixed preset, SmoothQuant 0.95) where our
    models measured closer to PyTorch: validation max |Δlogit| (agreement) on the small BUSI
    model, 157 images: NNCF's defaults 0.197 (99.4%), performance preset 0.080, performance
    without SmoothQuant 0.029 (100%); on three tiny phantom models the worst was 0.152 (95.8%,
    failing the guard) with NNCF's defaults and 0.092 (100%) with ours.
    """

    # performance: symmetric weights and activations; mixed: asymmetric activations (NNCF's
    # choice for transformers)
    preset: Preset = "performance"
    transformer: bool = True  # model_type=nncf.ModelType.TRANSFORMER: attention-aware quantizer placement
    target_device: TargetDevice = "ANY"
    subset_size: int = 300  # calibration samples NNCF uses (at most the calibration images given)
    fast_bias_correction: bool = True
    disable_bias_correction: bool = False
    # SmoothQuant's alpha for MatMuls (moves activation outliers into the weights; NNCF: 0.95);
    # -1: off
    smooth_quant_alpha: float = -1
    # enable: 7-bit weights everywhere, so x86 CPUs without VNNI (AVX2's u8 x s8 pairs into
    # int16) cannot saturate: like the ONNX int8 default target `portable`.
    overflow_fix: OverflowFix = "enable"
    ignored_names: tuple[str, ...] = ()  # layers kept in float (the accuracy guard adds to these)
    ignored_patterns: tuple[str, ...] = ()  # regular expressions over layer names
    ignored_types: tuple[str, ...] = ()  # OpenVINO op types, e.g. ("MatMul",) for every MatMul
    inference_precision: InferencePrecision = "f32"

    def __post_init__(self) -> None:
        validate_literals(self)
        if self.subset_size < 1:
            raise UserError("openvino int8 subset_size must be at least 1")
        if not (self.smooth_quant_alpha == -1 or 0 <= self.smooth_quant_alpha <= 1):
            raise UserError("smooth_quant_alpha must be between 0 and 1, or -1 (off)")

    @property
    def weight_bits(self) -> int:
        return 7 if self.overflow_fix == "enable" else 8

    def to_dict(self) -> dict[str, Any]:
        """For the file's ``quantization`` metadata (``weight_bits``: see medvit_edge/int8_target)."""
        values = {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}
        return {**values, "weight_bits": self.weight_bits}


def check_installed() -> None:
    """``export --openvino`` fails at once, not after the ONNX variants, without OpenVINO/NNCF."""
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--openvino needs {', '.join(missing)}: {INSTALL_HINT}")

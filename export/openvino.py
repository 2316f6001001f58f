"""OpenVINO IR variants (export --openvino): ``model.onnx`` -> ``model.openvino.xml`` (+ ``.bin``),
and NNCF's post-training int8 of it -> ``model.openvino-int8.xml`` (+ ``.bin``).

Both are converted from our ``model.onnx`` (``ov.convert_model``; with --optimize, from the graph
before onnxruntime's fusions, which are onnxruntime's own ops), so OpenVINO's layer names are the
ONNX node names: the int8 accuracy guard (export/int8.py) ranks the weight MatMuls on
``model.onnx`` and keeps the most sensitive ones in float through NNCF's ``IgnoredScope``.
Calibration uses the run's training images preprocessed exactly as the runtime does (the same
images as static ONNX int8). Metadata goes into the IR's runtime info (``write_ir_metadata``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .openvino_config import OpenVinoInt8Config
from .variants import save_ir

logger = logging.getLogger(__name__)


def onnx_to_openvino(source: Path, target: Path) -> Path:
    """The ONNX graph as an IR, weights kept in fp32 (``save_model`` halves them by default)."""
    import openvino as ov

    model = ov.convert_model(str(source))
    save_ir(ov, model, target)
    return target


def convert_onnx(source: Path) -> Any:
    """The ONNX graph as an in-memory ``ov.Model``. The guard converts once and quantizes a copy
    per attempt: converting again was 2.2 s of each 7.5 s attempt on the tiny test ViT."""
    import openvino as ov

    return ov.convert_model(str(source))


def openvino_to_int8(
    source: Path | Any,
    target: Path,
    settings: OpenVinoInt8Config,
    calibration: np.ndarray,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """NNCF post-training quantization of the fp32 graph ``source`` (an ONNX path, or a model
    ``convert_onnx`` made, which is left unchanged); returns the settings used (the file's
    ``quantization`` metadata)."""
    # NNCF imports torch's C++-extension helper, which warns "No CUDA runtime is found, using
    # CUDA_HOME=..." on machines with a CUDA toolkit but no GPU: nothing here builds extensions
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    model = source.clone() if isinstance(source, ov.Model) else convert_onnx(source)
    present = {op.get_friendly_name() for op in model.get_ordered_ops()}
    # the guard's names come from model.onnx: keep the ones the converted graph has
    kept_float = [name for name in exclude if name in present]
    samples = [calibration[i : i + 1] for i in range(len(calibration))]  # one image per sample
    # NNCF draws rich progress bars (statistics collection, bias correction) on stdout, where the
    # CLI prints results, and they garble logs: swallowed, one line of ours instead
    logger.info("NNCF int8: calibrating on %d images (minutes for a large model)", len(samples))
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = _quantize(nncf, model, samples, settings, kept_float)
    save_ir(ov, quantized, target)
    return {
        "mode": "static",
        "engine": "nncf",
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
        **settings.to_dict(),
        "target": "openvino",
        "calibration_images": len(samples),
        "excluded_nodes": kept_float,
    }


def _quantize(
    nncf: Any, model: Any, samples: list[np.ndarray], settings: OpenVinoInt8Config, kept_float: list[str]
) -> Any:
    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        preset=nncf.QuantizationPreset(settings.preset),
        target_device=nncf.TargetDevice(settings.target_device),
        subset_size=min(settings.subset_size, len(samples)),
        fast_bias_correction=settings.fast_bias_correction,
        model_type=nncf.ModelType.TRANSFORMER if settings.transformer else None,
        ignored_scope=nncf.IgnoredScope(
            names=[*settings.ignored_names, *kept_float],
            patterns=list(settings.ignored_patterns),
            types=list(settings.ignored_types),
            validate=False,  # a pattern or type that matches nothing is not an error
        ),
        advanced_parameters=_advanced(settings),
    )


def _advanced(settings: OpenVinoInt8Config) -> Any:
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    return AdvancedQuantizationParameters(
        overflow_fix=OverflowFix(settings.overflow_fix),
        disable_bias_correction=settings.disable_bias_correction,
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=settings.smooth_quant_alpha),
    )

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
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvit_edge.manifest import VariantRecord
from medvit_edge.metadata import ModelMetadata
from medvit_edge.openvino_backend import RT_INFO_ROOT, weights_path
from medvit_edge.variants import Variant

from .int8 import Build, calibration_pixels
from .openvino_config import OpenVinoInt8Config
from .variants import doc_string

if TYPE_CHECKING:
    from .run import Exporter

logger = logging.getLogger(__name__)


def build_openvino_fp32(exporter: Exporter, variant: Variant) -> VariantRecord:
    started = time.perf_counter()
    onnx_to_openvino(exporter.unfused_path, exporter.path(variant))
    return exporter.finish(variant, started)


def openvino_int8_builder(exporter: Exporter, variant: Variant, source: Path | None = None) -> Build:
    """What the int8 guard calls for each attempt: layers to keep in float -> the settings used.
    ``source``: the ONNX graph converted (default: the unfused fp32 one)."""
    calibration = calibration_pixels(exporter)
    settings = exporter.cfg.openvino_int8
    source, target = source or exporter.unfused_path, exporter.path(variant)
    return lambda exclude: openvino_to_int8(source, target, settings, calibration, exclude)


def onnx_to_openvino(source: Path, target: Path) -> Path:
    """The ONNX graph as an IR, weights kept in fp32 (``save_model`` halves them by default)."""
    import openvino as ov

    model = ov.convert_model(str(source))
    _save(ov, model, target)
    return target


def openvino_to_int8(
    source: Path,
    target: Path,
    settings: OpenVinoInt8Config,
    calibration: np.ndarray,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """NNCF post-training quantization of the converted fp32 graph; returns the settings used
    (the file's ``quantization`` metadata)."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(source))
    present = {op.get_friendly_name() for op in model.get_ordered_ops()}
    # the guard's names come from model.onnx: keep the ones the converted graph has
    kept_float = [name for name in exclude if name in present]
    samples = [calibration[i : i + 1] for i in range(len(calibration))]  # one image per sample
    # NNCF draws its progress bars on stdout, where the CLI prints results: send them to stderr
    with contextlib.redirect_stdout(sys.stderr):
        quantized = _quantize(nncf, model, samples, settings, kept_float)
    _save(ov, quantized, target)
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


def write_ir_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Our metadata (``ModelMetadata.to_props``, the ONNX files' keys) into the IR's runtime info
    under ``medvit_edge``, then read back and compared: an IR that would not carry it is an error
    here, not at load on the device."""
    import openvino as ov

    from medvit_edge.openvino_backend import read_props

    core = ov.Core()
    model = core.read_model(str(path), str(weights_path(path)))
    props = metadata.to_props() | {"doc_string": doc_string(metadata)}
    for key, value in props.items():
        model.set_rt_info(value, [RT_INFO_ROOT, key])
    _save(ov, model, path)
    del model  # its weights are mapped from the file just replaced
    stored = read_props(core.read_model(str(path), str(weights_path(path))))
    if stored != props:
        raise RuntimeError(f"{path}: OpenVINO did not keep the metadata written to it")


def _save(ov: Any, model: Any, target: Path) -> None:
    """``target`` and its ``.bin`` written beside and renamed into place (the model being saved
    may be mapped from the old ``.bin``)."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".openvino-") as scratch:
        xml = Path(scratch) / target.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        os.replace(weights_path(xml), weights_path(target))
        os.replace(xml, target)
    logger.debug("wrote %s and %s", target, weights_path(target))

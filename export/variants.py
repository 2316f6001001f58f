"""One function per variant, named source -> target. Each writes one ONNX file."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.io.checkpoint import load_spec, save_processor_config
from medvit_edge.runtime.metadata import ModelMetadata
from medvit_edge.runtime.openvino_backend import weights_path

from .config import CalibrationMethod, Int8Config

# Ops kept in float32 in the fp16 variant: their reductions and exponentials overflow or lose
# too much in half precision (LayerNorm's mean/variance, Softmax's exp-sum, GELU's Erf).
FP16_KEEP_FLOAT32 = ["LayerNormalization", "Softmax", "Pow", "ReduceMean", "Sqrt", "Erf", "Div"]

logger = logging.getLogger(__name__)


def hf_to_onnx(model_dir: Path, output_dir: Path, opset: int | None = None) -> Path:
    """fp32 ONNX through Optimum, dynamic batch axis; also writes config.json and
    preprocessor_config.json so Optimum's ORTModel and transformers' pipeline load the folder.
    The processor config is written from the run's spec (resize + centre crop), not copied:
    runs saved before it carry a squashing ViTImageProcessor."""
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # deprecation and slow-processor notices: not the user's to act on
    with warnings.catch_warnings():
        # torch's tracer warns about Python-side shape arithmetic in ViT's embeddings: the input
        # size is pinned afterwards, so the traced constants are right. Nothing a user can act on.
        warnings.filterwarnings("ignore", category=Warning, module=r"torch\.|transformers\.")
        warnings.filterwarnings("ignore", message=r".*TracerWarning.*")
        main_export(
            str(model_dir),
            output=str(output_dir),
            task="image-classification",
            opset=opset,
            device="cpu",
            do_validation=False,  # we validate ourselves, on real images, with tolerances
        )
    hf_logging.set_verbosity(verbosity)
    save_processor_config(load_spec(model_dir), output_dir)
    return output_dir / "model.onnx"


def fix_input_shape(path: Path, size: int) -> None:
    """Pin channels/height/width (the batch stays dynamic): static shapes let onnxruntime plan
    memory and pick kernels once, and the preprocessing spec fixes the size anyway."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims[1:], (3, size, size)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    onnx.save(model, str(path))


def optimize_onnx(path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """onnxruntime's offline transformer fusions (SkipLayerNormalization, BiasGelu, and Attention
    where the pattern matches), in place. Returns what was fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(path), model_type="vit", num_heads=num_heads, hidden_size=hidden_size, opt_level=1
    )
    optimized.save_model_to_file(str(path))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def onnx_to_fp16(source: Path, target: Path, keep_float32: Sequence[str] = ()) -> Path:
    """Half-precision weights and math, float32 inputs/outputs and overflow-prone ops, so the
    file runs on the CPU provider as well as CUDA; ``keep_float32``: more op types kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    keep = [*FP16_KEEP_FLOAT32, *keep_float32]
    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=keep))
    half.topological_sort()  # the converter appends its Casts last; the ONNX checker wants order
    onnx.save(half.model, str(target))
    return target


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs "consider pre-processing" on the root logger for every call:
    its shape-inference pre-pass changes nothing for this graph, so the line is noise."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def onnx_to_int8_dynamic(
    source: Path, target: Path, int8: Int8Config, exclude: Sequence[str] = ()
) -> dict[str, Any]:
    """Dynamic int8 of the weight MatMuls only (activation x activation MatMuls in attention stay
    float: quantizing them at run time is slower and less accurate). Returns the settings used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=["MatMul"],  # the classifier head (Gemm) stays float: tiny and sensitive
            per_channel=int8.per_channel,
            reduce_range=int8.reduce_range,
            weight_type=QuantType[int8.weight_type],
            nodes_to_exclude=list(exclude),
            extra_options=_QUANT_OPTIONS,
        )
    return {"mode": "dynamic", **int8.to_dict(), "excluded_nodes": list(exclude)}


# MatMulConstBOnly: leave attention's activation x activation MatMuls in float.
# DefaultTensorType: shape inference cannot type the outputs of fused contrib ops; they are float.
_QUANT_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # 1 = onnx.TensorProto.FLOAT


class _ArrayReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]):
        self.input_name, self.batches = input_name, batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def onnx_to_int8_static(
    source: Path,
    target: Path,
    int8: Int8Config,
    calibration: np.ndarray,
    method: CalibrationMethod = "minmax",
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Static int8 (QDQ) with activation ranges calibrated on images."""
    from onnxruntime.quantization import CalibrationMethod as Method
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    methods = {"minmax": Method.MinMax, "percentile": Method.Percentile, "entropy": Method.Entropy}
    batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))
    with _quiet_quantizer():
        quantize_static(
            str(source),
            str(target),
            _ArrayReader("pixel_values", batches),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],  # the classifier head (Gemm) stays float: tiny and sensitive
            per_channel=int8.per_channel,
            reduce_range=int8.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType[int8.weight_type],
            nodes_to_exclude=list(exclude),
            calibrate_method=methods[method],
            extra_options=_QUANT_OPTIONS,
        )
    return {
        "mode": "static",
        **int8.to_dict(),
        "calibration": method,
        "calibration_images": len(calibration),
        "excluded_nodes": list(exclude),
    }


def write_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Replace the file's metadata_props with ours (quantizers and converters drop or keep
    them unpredictably), then run the full ONNX checker."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    # ONNX's own fields, which every onnxruntime API shows (ModelMetadata.Version / Description)
    if metadata.model_version.isdigit():
        model.model_version = int(metadata.model_version)
    model.doc_string = doc_string(metadata)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def doc_string(metadata: ModelMetadata) -> str:
    """The ONNX ``doc_string``: what the file is and what it is for, in a few lines."""
    name = metadata.model_name or "ViT image classifier"
    version = f" v{metadata.model_version}" if metadata.model_version else ""
    lines = [
        f"{name}{version} ({metadata.variant}): {', '.join(metadata.labels)}.",
        metadata.notice,
        f"Intended use: {metadata.intended_use}" if metadata.intended_use else "",
        f"Contraindications: {metadata.contraindications}" if metadata.contraindications else "",
        f"Licence: {metadata.license}" if metadata.license else "",
    ]
    return "\n".join(line for line in lines if line)


def write_ir_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Our metadata (``ModelMetadata.to_props``, the ONNX files' keys) into the IR's runtime info
    under ``medvit_edge``, then read back and compared: an IR that would not carry it is an error
    here, not at load on the device."""
    import openvino as ov

    from medvit_edge.runtime.openvino_backend import RT_INFO_ROOT, read_props

    core = ov.Core()
    model = core.read_model(str(path), str(weights_path(path)))
    props = metadata.to_props() | {"doc_string": doc_string(metadata)}
    for key, value in props.items():
        model.set_rt_info(value, [RT_INFO_ROOT, key])
    save_ir(ov, model, path)
    del model  # its weights are mapped from the file just replaced
    stored = read_props(core.read_model(str(path), str(weights_path(path))))
    if stored != props:
        raise RuntimeError(f"{path}: OpenVINO did not keep the metadata written to it")


def save_ir(ov: Any, model: Any, target: Path) -> None:
    """``target`` and its ``.bin`` written beside and renamed into place (the model being saved
    may be mapped from the old ``.bin``)."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".openvino-") as scratch:
        xml = Path(scratch) / target.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        os.replace(weights_path(xml), weights_path(target))
        os.replace(xml, target)
    logger.debug("wrote %s and %s", target, weights_path(target))

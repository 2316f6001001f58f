"""The speed suite's peers: what a user gets without medvit-edge, built from the same ``model.onnx``.

* PyTorch bf16 autocast (``torch.autocast("cpu", dtype=torch.bfloat16)`` + ``inference_mode``);
* OpenVINO: the fp32 IR (``ov.convert_model`` of ``model.onnx``; compiled at its default
  precision, which is bf16 on CPUs with AMX or AVX512_BF16: the precision it chose is recorded),
  NNCF int8 weight compression (``nncf.compress_weights``, ``INT8_ASYM``), and NNCF post-training
  int8 made the way NNCF's documentation shows (below), and OpenVINO reading our
  ``model.int8.onnx`` directly.

Every OpenVINO peer is compiled with ``INFERENCE_NUM_THREADS`` = the suite's threads and
``PERFORMANCE_HINT`` = ``LATENCY``; the throughput mode compiles it again with ``THROUGHPUT`` and
feeds an ``AsyncInferQueue``. The IR files are cached in ``vit-{size}/openvino-peers/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BUSI

logger = logging.getLogger(__name__)

PEER_FOLDER = "openvino-peers"
CALIBRATION_IMAGES = 64
# name in the report -> IR file in PEER_FOLDER (None: compiled straight from our int8 ONNX file)
OPENVINO_PEERS: dict[str, str | None] = {
    "OpenVINO fp32 IR (default precision)": "fp32.xml",
    "OpenVINO NNCF int8 weight compression": "int8-weights.xml",
    "OpenVINO NNCF int8 post-training (documented)": "int8-ptq.xml",
    "OpenVINO reading model.int8.onnx": None,
}

Runner = tuple[Callable[[np.ndarray], Any], Callable[[list], Any]]


def build_openvino_peers(folder: Path) -> dict[str, Path]:
    """The peers' IR files (made once, then reused): name in the report -> model file."""
    import openvino as ov

    target = folder / PEER_FOLDER
    paths = {
        name: target / file if file else folder / "onnx" / "model.int8.onnx"
        for name, file in OPENVINO_PEERS.items()
    }
    if all(path.is_file() for path in paths.values()):
        return paths
    import nncf

    target.mkdir(parents=True, exist_ok=True)
    source = folder / "onnx" / "model.onnx"
    names = list(OPENVINO_PEERS)
    # compress_to_fp16=False: the file keeps fp32 weights; the precision it runs at is the
    # runtime's choice (the default hint), which is what this row measures.
    ov.save_model(ov.convert_model(source), paths[names[0]], compress_to_fp16=False)
    logger.info("NNCF int8 weight compression of %s", source)
    compressed = nncf.compress_weights(ov.convert_model(source), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, paths[names[1]], compress_to_fp16=False)
    logger.info("NNCF post-training quantization of %s on %d BUSI images", source, CALIBRATION_IMAGES)
    ov.save_model(documented_ptq(ov.convert_model(source), folder), paths[names[2]], compress_to_fp16=False)
    return paths


def documented_ptq(model: Any, folder: Path) -> Any:
    """NNCF post-training quantization exactly as its documentation's basic flow shows for an
    OpenVINO model, with the transformer preset and every other argument at its default:
    https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/basic-quantization-flow.html
    (``nncf.Dataset(data_source, transform_fn)``, then ``nncf.quantize(model, calibration_dataset,
    model_type=nncf.ModelType.TRANSFORMER)``). The calibration images are 64 BUSI training images,
    preprocessed by the model's own Hugging Face image processor, as a user without us would (its
    fast processor returns PyTorch tensors only, hence ``.numpy()``)."""
    import nncf
    from PIL import Image
    from transformers import AutoImageProcessor

    from medvit_edge.io.labelled import read_labelled_set

    processor = AutoImageProcessor.from_pretrained(folder)
    images = read_labelled_set(BUSI / "split.csv", "train")[:CALIBRATION_IMAGES]

    def transform_fn(item: Any) -> np.ndarray:
        image = Image.open(item.path).convert("RGB")
        return processor(image, return_tensors="pt")["pixel_values"].numpy()

    calibration_dataset = nncf.Dataset(images, transform_fn)
    return nncf.quantize(model, calibration_dataset, model_type=nncf.ModelType.TRANSFORMER)


def compile_openvino(path: Path, threads: int, hint: str = "LATENCY") -> Any:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
    return ov.Core().compile_model(str(path), "CPU", config)


def openvino_runners(folder: Path, threads: int) -> tuple[dict[str, Runner], dict[str, str]]:
    """Each OpenVINO peer as (model-only, end-to-end) calls, and the inference precision it chose.
    End to end = the model's Hugging Face image processor, the compiled model, a softmax."""
    from transformers import AutoImageProcessor

    from medvit_edge.runtime.policy import softmax

    processor = AutoImageProcessor.from_pretrained(folder)
    found: dict[str, Runner] = {}
    precisions: dict[str, str] = {}
    for name, path in build_openvino_peers(folder).items():
        compiled = compile_openvino(path, threads)
        precisions[name] = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16"
        request = compiled.create_infer_request()

        def model_only(batch: np.ndarray, request: Any = request) -> np.ndarray:
            return request.infer({0: batch})[0]

        def end_to_end(images: list, request: Any = request) -> np.ndarray:
            pixels = processor(images, return_tensors="pt")["pixel_values"].numpy()
            return softmax(request.infer({0: pixels})[0])

        found[name] = (model_only, end_to_end)
    return found, precisions


def torch_bf16_runner(model: Any, pipe: Any) -> Runner:
    """PyTorch under bf16 autocast: the one-line speed-up a PyTorch user reaches for first."""
    import torch

    def model_only(batch: np.ndarray) -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(pixel_values=torch.from_numpy(batch)).logits

    def end_to_end(images: list) -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return pipe(images, batch_size=len(images))

    return model_only, end_to_end

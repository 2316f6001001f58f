"""The edge runtime: an ONNX classifier that needs only numpy, Pillow and onnxruntime.

    clf = Classifier.load("models/run/onnx/model.int8.onnx")
    pred = clf.predict("scan.png")            # or a PIL image, a numpy array, or a list of them
    pred.label, pred.probabilities["malignant"]

One instance may be shared by many threads: onnxruntime sessions are thread-safe for ``run``,
and preprocessing keeps no state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.files import manifest_entry, sha256_file
from medvit_edge.images import as_rgb_image
from medvit_edge.metadata import MetadataError, ModelMetadata
from medvit_edge.metrics import softmax
from medvit_edge.preprocess import preprocess_batch

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray

INSTALL_HINT = (
    "onnxruntime is not installed. Install one build: "
    "pip install 'medvit-edge[cpu]' (CPU) or pip install 'medvit-edge[gpu]' (NVIDIA GPU)"
)


class ModelLoadError(RuntimeError):
    """A model file cannot be used; the message says which file and why."""


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    return onnxruntime


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]


def choose_providers(device: str = "auto") -> list[str]:
    """``auto``: CUDA when onnxruntime-gpu sees a GPU, else CPU. Also ``cpu``, ``cuda``,
    ``tensorrt`` (TensorRT only on request: it needs TensorRT libraries and a long first build)."""
    available = import_onnxruntime().get_available_providers()
    wanted = {
        "auto": ["CUDAExecutionProvider"],
        "cpu": [],
        "cuda": ["CUDAExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    }
    if device not in wanted:
        raise ValueError(f"unknown device {device!r}; one of {sorted(wanted)}")
    chosen = [provider for provider in wanted[device] if provider in available]
    if device in ("cuda", "tensorrt") and not chosen:
        raise ModelLoadError(
            f"device {device!r} requested but onnxruntime offers only {available}; "
            "install medvit-edge[gpu] (onnxruntime-gpu) on a machine with an NVIDIA GPU"
        )
    return [*chosen, "CPUExecutionProvider"]


def verify_checksum(path: Path, required: bool) -> str | None:
    """Compare the file with ``manifest.json`` beside it; return the verified sha256."""
    entry = manifest_entry(path)
    if entry is None:
        if required:
            raise ModelLoadError(f"{path}: --verify needs a manifest.json beside it listing this file")
        return None
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise ModelLoadError(
            f"{path}: checksum mismatch with manifest.json (file is modified, truncated or "
            f"replaced): expected {entry.get('sha256')}, found {actual}. Refusing to load it."
        )
    return actual


class Classifier:
    """An exported medvit-edge ONNX model, ready to classify images."""

    def __init__(self, session: Any, metadata: ModelMetadata, path: Path, sha256: str | None):
        self.session = session
        self.metadata = metadata
        self.path = path
        self.sha256 = sha256
        self.labels = list(metadata.labels)
        self.spec = metadata.preprocess
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        # Dynamic int8 picks activation ranges from the whole batch, so an image's result would
        # depend on its batch-mates. One image per call keeps every result reproducible.
        self.one_image_per_run = metadata.quantization.get("mode") == "dynamic"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        threads: int | None = None,
        verify: bool | None = None,
        spin: bool = True,
    ) -> Classifier:
        """Load a model; ``verify=None`` checks a manifest if present, ``True`` requires one.

        ``spin=False`` stops onnxruntime's worker threads from busy-waiting between calls: a little
        more latency, no idle CPU burnt (for scanner software that shares the machine, and for
        benchmarks that run several sessions in turn)."""
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        sha256 = verify_checksum(path, required=bool(verify)) if verify is not False else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=choose_providers(device))
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        props = session.get_modelmeta().custom_metadata_map
        try:
            metadata = ModelMetadata.from_props(props, source=str(path))
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        _check_signature(session, metadata, path)
        return cls(session, metadata, path, sha256)

    @property
    def variant(self) -> str:
        return self.metadata.variant

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, size, size) float32 -> logits (N, classes)."""
        if self.one_image_per_run and len(batch) > 1:
            return np.concatenate([self.run(batch[i : i + 1]) for i in range(len(batch))])
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def predict_proba(self, images: Sequence[ImageInput]) -> np.ndarray:
        batch = preprocess_batch([as_rgb_image(image) for image in images], self.spec)
        return softmax(self.run(batch))

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """One input -> one ``Prediction``; a list of inputs -> a list."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        predictions = [self.to_prediction(row) for row in self.predict_proba(items)]
        return predictions[0] if single else predictions

    def to_prediction(self, probabilities: np.ndarray) -> Prediction:
        index = int(np.argmax(probabilities))
        return Prediction(
            label=self.labels[index],
            index=index,
            probabilities={label: float(p) for label, p in zip(self.labels, probabilities)},
        )


def _check_signature(session: Any, metadata: ModelMetadata, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"{path}: expected one image input, found {len(inputs)} inputs")
    shape = inputs[0].shape
    size = metadata.preprocess.size
    if len(shape) != 4 or any(
        isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], (3, size, size))
    ):
        raise ModelLoadError(
            f"{path}: input shape {shape} does not match (N, 3, {size}, {size}) from its metadata"
        )
    classes = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(classes, int) and classes != len(metadata.labels):
        raise ModelLoadError(
            f"{path}: output has {classes} classes but metadata lists {len(metadata.labels)} labels"
        )

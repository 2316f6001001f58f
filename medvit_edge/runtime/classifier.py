"""The edge runtime: an ONNX classifier that needs only numpy, Pillow and onnxruntime.

    clf = Classifier.load("models/run/onnx/model.int8.onnx")
    pred = clf.predict("scan.png")            # or a PIL image, a numpy array, or a list of them
    pred.label, pred.probabilities["malignant"], pred.decision

Probabilities are calibrated with the file's decision policy (metadata ``decision_policy``:
``softmax(logits / T)``) and ``decision`` is what that policy decides (a label or ``refer``,
medvit_edge.runtime.policy); ``logits``/``run`` give the raw logits.

A raw-input file (``export --raw-input``: metadata ``input: raw-uint8-nhwc``) preprocesses in
its own graph: the same ``predict`` then hands it each decoded RGB image as uint8 ``(H, W, 3)``
and runs no numpy preprocessing (``run_raw``; ``run`` stays "preprocessed tensors -> logits"
for the other files).

This is the one code path from a model file to probabilities: export's validation, the int8
guard, ``infer``, ``evaluate`` and the benchmarks all run a variant through ``Classifier``, so
the numbers they report are the numbers users get.

One instance may be shared by many threads: onnxruntime sessions are thread-safe for ``run``,
and preprocessing keeps no state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image

from medvit_edge.errors import ModelLoadError
from medvit_edge.lazy import import_optional
from medvit_edge.runtime.freshness import refuse_stale
from medvit_edge.runtime.images import ImageDecodeError, as_rgb_image
from medvit_edge.runtime.int8_target import warn_if_outside_target
from medvit_edge.runtime.integrity import check_unchanged, hash_model_file, verify_checksum
from medvit_edge.runtime.manifest import CompanionFile
from medvit_edge.runtime.metadata import RAW_INPUT, MetadataError, ModelMetadata
from medvit_edge.runtime.openvino_backend import Hint
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.preprocess import MAX_RESIZED_PIXELS, PreprocessSpec, preprocess_batch, resized_size
from medvit_edge.runtime.variants import Device, Variant, variant_named

__all__ = ["Classifier", "Device", "ModelLoadError", "NonFiniteOutputError", "Prediction"]

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray

INSTALL_HINT = (
    "onnxruntime is not installed. Install one build: "
    "pip install 'medvit-edge[cpu]' (CPU) or pip install 'medvit-edge[gpu]' (NVIDIA GPU)"
)
# Images preprocessed and run together: bounds memory for any number of inputs (10,000 frames
# would otherwise be one 6 GB tensor).
CHUNK = 16
# The input of a raw-input file (metadata ``input: raw-uint8-nhwc``): uint8 RGB [N, H, W, 3].
RAW_INPUT_NAME = "image"
RAW_OUTPUT_NAME = "logits"  # beside "probabilities"; the runtime reads logits like everywhere


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite outputs: there is no prediction to report."""


def import_onnxruntime() -> Any:
    return import_optional("onnxruntime", hint=INSTALL_HINT, error=ModelLoadError)


@dataclass(frozen=True)
class Prediction:
    """One image's result, as ``Classifier.predict`` returns it.

    Attributes:
        label: The most probable class.
        index: Its column in the model's outputs: ``Classifier.labels[index] == label``.
        probabilities: One calibrated probability per label (the file's decision policy).
        decision: What the file's decision policy decides: a label, or ``"refer"``.
    """

    label: str  # the most probable class
    index: int
    probabilities: dict[str, float]  # calibrated (the file's decision policy)
    decision: str = ""  # what the policy decides: a label, or "refer" (medvit_edge.runtime.policy)


_PROVIDERS: dict[Device, list[str]] = {
    "auto": ["CUDAExecutionProvider"],
    "cpu": [],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
assert set(_PROVIDERS) == set(get_args(Device))


def choose_providers(device: str = "auto") -> list[str]:
    """``auto``: CUDA when onnxruntime-gpu sees a GPU, else CPU. Also ``cpu``, ``cuda``,
    ``tensorrt`` (TensorRT only on request: it needs TensorRT libraries and a long first build)."""
    available = import_onnxruntime().get_available_providers()
    if device not in _PROVIDERS:
        raise ValueError(f"unknown device {device!r}; one of {sorted(_PROVIDERS)}")
    chosen = [provider for provider in _PROVIDERS[device] if provider in available]
    if device in ("cuda", "tensorrt") and not chosen:
        raise ModelLoadError(
            f"device {device!r} requested but onnxruntime offers only {available}; "
            "install medvit-edge[gpu] (onnxruntime-gpu) on a machine with an NVIDIA GPU"
        )
    return [*chosen, "CPUExecutionProvider"]


def _session_options(ort: Any, threads: int | None, spin: bool) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def _create_session(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc


class Classifier:
    """An exported medvit-edge ONNX model, ready to classify images."""

    def __init__(self, session: Any, metadata: ModelMetadata, path: Path, sha256: str):
        self.session = session
        self.metadata = metadata
        self.path = path
        self.sha256 = sha256  # of the file loaded (verified against the manifest when one exists)
        self.labels = list(metadata.labels)
        self.spec = metadata.preprocess
        self.raw_input = metadata.input == RAW_INPUT
        self.input_name = session.get_inputs()[0].name
        self.output_name = RAW_OUTPUT_NAME if self.raw_input else session.get_outputs()[0].name
        row: Variant | None = variant_named(metadata.variant)
        dynamic = metadata.quantization.get("mode") == "dynamic"
        self.one_image_per_run = (row is not None and not row.batch_independent) or dynamic

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: Device = "auto",
        threads: int | None = None,
        verify: bool | None = None,
        spin: bool = True,
    ) -> Classifier:
        """Load a model; ``verify=None`` checks a manifest if present, ``True`` requires one,
        ``False`` skips the check.

        ``spin=False`` stops onnxruntime's worker threads from busy-waiting between calls: a little
        more latency, no idle CPU burnt (for scanner software that shares the machine, and for
        benchmarks that run several sessions in turn).

        An OpenVINO IR (``model.openvino*.xml`` + its ``.bin``) runs through OpenVINO behind the
        same session interface (medvit_edge/runtime/openvino_backend.py)."""
        path = Path(path)
        if path.suffix.lower() == ".xml":
            from medvit_edge.runtime.openvino_backend import open_session

            session, sha256 = open_session(path, device=device, threads=threads, verify=verify, spin=spin)
            return cls.from_session(session, path, sha256)
        ort = import_onnxruntime()
        sha256, identity = hash_model_file(path)
        if verify is not False:
            verify_checksum(path, sha256, required=bool(verify))
        session = _create_session(ort, path, _session_options(ort, threads, spin), choose_providers(device))
        check_unchanged(path, identity)
        return cls.from_session(session, path, sha256)

    @classmethod
    def from_session(cls, session: Any, path: Path, sha256: str) -> Classifier:
        """A loaded session (onnxruntime's, or one with its interface) with its metadata and
        signature checked."""
        props = session.get_modelmeta().custom_metadata_map
        try:
            metadata = ModelMetadata.from_props(props, source=str(path))
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        refuse_stale(path, metadata.source_sha256)  # retrained since this file was exported
        _check_signature(session, metadata, path)
        warn_if_outside_target(metadata.quantization, path)  # 8-bit int8 on x86 without VNNI
        return cls(session, metadata, path, sha256)

    @property
    def variant(self) -> str:
        return self.metadata.variant

    @property
    def companions(self) -> tuple[CompanionFile, ...]:
        """Files loaded beside ``path`` (an OpenVINO IR's weights), with their sha256."""
        return tuple(getattr(self.session, "companions", ()))

    @property
    def size_bytes(self) -> int:
        """The model's bytes on disk: the file, plus an IR's weights file."""
        return self.path.stat().st_size + sum(companion.size_bytes for companion in self.companions)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, size, size) float32 -> logits (N, classes), any N."""
        if self.raw_input:
            raise TypeError(f"{self.path}: a raw-input model takes uint8 RGB images: use run_raw()")
        if len(batch) == 0:
            return np.empty((0, len(self.labels)), np.float32)
        step = 1 if self.one_image_per_run else CHUNK
        outputs = [
            self.session.run([self.output_name], {self.input_name: batch[start : start + step]})[0]
            for start in range(0, len(batch), step)
        ]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def run_raw(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Raw-input files: RGB uint8 (H, W, 3) images of any sizes -> logits (N, classes).
        Consecutive images of one size go in one call (CHUNK at most; one each for dynamic
        int8)."""
        if not self.raw_input:
            raise TypeError(f"{self.path}: takes preprocessed tensors: use run()")
        outputs = [np.empty((0, len(self.labels)), np.float32)]
        for group in _same_size_runs(frames, 1 if self.one_image_per_run else CHUNK):
            batch = np.stack(group) if len(group) > 1 else group[0][None]
            outputs.append(self.session.run([self.output_name], {self.input_name: batch})[0])
        return np.concatenate(outputs)

    @property
    def policy(self) -> DecisionPolicy:
        """How probabilities become decisions: temperature, operating point, refer rule."""
        return self.metadata.policy

    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Raw logits (N, classes); inputs are decoded and preprocessed CHUNK at a time."""
        parts = [np.empty((0, len(self.labels)), np.float32)]
        for start in range(0, len(images), CHUNK):
            chunk = [as_rgb_image(image) for image in images[start : start + CHUNK]]
            if self.raw_input:
                parts.append(self.run_raw([raw_pixels(image, self.spec) for image in chunk]))
            else:
                parts.append(self.run(preprocess_batch(chunk, self.spec)))
        return np.concatenate(parts)

    def predict_proba(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Calibrated probabilities (N, classes): ``softmax(logits / T)`` with the file's
        temperature (T = 1 for a file without a decision policy)."""
        return self.policy.probabilities(self.logits(images))

    def decide(self, probabilities: np.ndarray) -> list[str]:
        """Calibrated probabilities (N, classes) -> a label or ``refer`` per row."""
        return self.policy.decide(probabilities, self.labels)

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """One input -> one ``Prediction``; a list of inputs (maybe empty) -> a list."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        predictions = [self.to_prediction(row) for row in self.predict_proba(items)]
        return predictions[0] if single else predictions

    def to_prediction(self, probabilities: np.ndarray) -> Prediction:
        if not np.isfinite(probabilities).all():
            raise NonFiniteOutputError(f"{self.path}: model output is not finite (NaN or infinity)")
        index = int(np.argmax(probabilities))
        return Prediction(
            label=self.labels[index],
            index=index,
            probabilities={label: float(p) for label, p in zip(self.labels, probabilities)},
            decision=self.decide(probabilities[None])[0],
        )


def raw_pixels(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """An RGB image -> the uint8 (H, W, 3) array a raw-input file takes. The graph resizes the
    whole image (the numpy path resamples only what the crop keeps), so an aspect ratio that
    would need more than MAX_RESIZED_PIXELS in between is refused (``ImageDecodeError``)."""
    width, height = resized_size(image.width, image.height, spec)
    if width * height > MAX_RESIZED_PIXELS:
        raise ImageDecodeError(
            f"{image.width}x{image.height} image: its aspect ratio needs a {width}x{height} resize "
            "inside the raw-input graph; run it with the numpy-path model (model.onnx, ...)"
        )
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _same_size_runs(frames: Sequence[np.ndarray], limit: int) -> list[list[np.ndarray]]:
    """Consecutive frames of one shape, at most ``limit`` per group; each checked first."""
    groups: list[list[np.ndarray]] = []
    for frame in frames:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise ValueError(
                f"raw-input models take uint8 (H, W, 3) RGB images, got {frame.dtype} {frame.shape}"
            )
        if groups and len(groups[-1]) < limit and groups[-1][0].shape == frame.shape:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def _check_signature(session: Any, metadata: ModelMetadata, path: Path) -> None:
    """The graph must take what the metadata says we will feed it, and give one score per label."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"{path}: expected one image input, found {len(inputs)} inputs")
    if metadata.input == RAW_INPUT:
        _check_raw_signature(inputs[0], outputs, metadata, path)
        return
    if inputs[0].type != "tensor(float)" or outputs[0].type != "tensor(float)":
        raise ModelLoadError(
            f"{path}: input/output types are {inputs[0].type}/{outputs[0].type}; "
            "a numpy-path model takes and gives float32 tensors"
        )
    shape = inputs[0].shape
    size = metadata.preprocess.size
    if len(shape) != 4 or any(
        isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], (3, size, size))
    ):
        raise ModelLoadError(
            f"{path}: input shape {shape} does not match (N, 3, {size}, {size}) from its metadata"
        )
    _check_classes(outputs[0], metadata, path)


def _check_classes(output: Any, metadata: ModelMetadata, path: Path) -> None:
    classes = output.shape[-1] if output.shape else None
    if isinstance(classes, int) and classes != len(metadata.labels):
        raise ModelLoadError(
            f"{path}: output has {classes} classes but metadata lists {len(metadata.labels)} labels"
        )


def _check_raw_signature(image: Any, outputs: list[Any], metadata: ModelMetadata, path: Path) -> None:
    """A raw-input file: uint8 (N, H, W, 3) in, float32 ``logits`` among the outputs."""
    shape = image.shape
    channels = shape[3] if len(shape) == 4 else None
    if image.type != "tensor(uint8)" or len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        raise ModelLoadError(
            f"{path}: metadata says {RAW_INPUT} but the graph takes {image.type} {shape}, "
            "not uint8 (N, H, W, 3)"
        )
    logits = next((o for o in outputs if o.name == RAW_OUTPUT_NAME), None)
    if logits is None or logits.type != "tensor(float)":
        raise ModelLoadError(f"{path}: a raw-input model needs a float32 {RAW_OUTPUT_NAME!r} output")
    _check_classes(logits, metadata, path)


def load_classifier(
    path: str | Path,
    *,
    threads: int | None = None,
    verify: bool | None = None,
    spin: bool = True,
    hint: Hint = "latency",
) -> Classifier:
    """``Classifier.load`` with OpenVINO's performance hint chosen (THROUGHPUT: several streams,
    for many calls at once from several threads)."""
    from medvit_edge.runtime.openvino_backend import open_session

    session, sha256 = open_session(Path(path), threads=threads, verify=verify, spin=spin, hint=hint)
    return Classifier.from_session(session, Path(path), sha256)

"""The inference engine: files in, typed prediction rows out, in input order.

Decoding and preprocessing run in worker threads ahead of the model (``decoding``), frames are
gathered into model batches, and each frame becomes one ``PredictionRow`` (a file that cannot be
used becomes one error row; the run goes on). The ``infer`` command, the DICOM node and the Ray
engine all classify through ``classify_files``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from medvit_edge.errors import ModelLoadError
from medvit_edge.inference.decoding import decoded_in_order
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile
from medvit_edge.progress import Progress
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import manifest_entry
from medvit_edge.runtime.openvino_backend import backend_installed
from medvit_edge.runtime.recommend import recommended_file
from medvit_edge.runtime.variants import DEPLOY_PREFERENCE, VARIANTS

NON_FINITE = "model output is not finite (NaN/inf)"


@dataclass(frozen=True)
class EngineOptions:
    batch_size: int = 8
    decode_workers: int = 2  # threads decoding and preprocessing ahead of the model
    progress: bool = True  # a progress line on stderr


def resolve_model_path(path: Path, device: str = "auto") -> Path:
    """A model file as is; a run folder or its ``onnx/`` folder -> the file to run there.

    The manifest's recommended variant (the fastest that passed, timed by export) wins when its
    file is there and this CPU has the export machine's ISA (medvit_edge/runtime/recommend.py). Else the
    first variant of ``DEPLOY_PREFERENCE`` (fastest on a CPU first) whose file is present
    wins, but a quantized or half-precision file only when manifest.json says it passed
    validation; fp32, the reference, is trusted without a manifest. A file the manifest marks
    failed is never picked. A folder with none is a ``ModelLoadError`` listing its ``.onnx``
    files. The recommendation was timed on a CPU: with ``device`` cuda/tensorrt it is ignored."""
    if not path.is_dir():
        return path  # a missing file is reported by Classifier.load
    folder = path / "onnx" if (path / "onnx").is_dir() else path
    recommended = recommended_file(folder)  # ModelLoadError when the manifest is unusable
    usable = recommended is not None and backend_installed(recommended)  # not an IR without OpenVINO
    if usable and device in ("auto", "cpu"):
        assert recommended is not None
        return recommended
    names = list(dict.fromkeys(VARIANTS[v].file_name for v in DEPLOY_PREFERENCE))
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            record = manifest_entry(candidate)  # ModelLoadError when the manifest is unusable
            status = None if record is None else record.status
            if status == "passed" or (status is None and name == VARIANTS["fp32"].file_name):
                return candidate
    found = ", ".join(sorted(p.name for p in folder.glob("*.onnx"))) or "none"
    wanted = " or ".join(names)
    raise ModelLoadError(
        f"{folder}: no usable model in this folder (looked for a validated {wanted}); "
        f".onnx files there: {found}. Name the model file to run another one."
    )


class _Batcher:
    """Gathers frames into model batches and emits rows in input order.

    ``failed`` maps the index of each failed input file to its first error: a file counts once
    however many of its frames failed."""

    def __init__(self, classifier: Classifier, batch_size: int):
        self.classifier, self.batch_size = classifier, batch_size
        self.pending: list[tuple[int, PredictionRow, np.ndarray | None]] = []
        self.rows: list[PredictionRow] = []
        self.failed: dict[int, str] = {}
        self.batch = np.empty((batch_size, 3, classifier.spec.size, classifier.spec.size), np.float32)
        # a raw-input model takes the decoded frames themselves (their sizes differ)
        self.raw_frames: list[np.ndarray] | None = [] if classifier.raw_input else None
        self.filled = 0

    def add(self, file_index: int, row: PredictionRow, tensor: np.ndarray | None) -> None:
        if tensor is not None:
            if self.raw_frames is not None:
                self.raw_frames.append(tensor)
            else:
                self.batch[self.filled] = tensor
            self.filled += 1
        self.pending.append((file_index, row, tensor))
        if self.filled == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.filled and self.raw_frames is not None:
            logits = self.classifier.run_raw(self.raw_frames)
            self.raw_frames = []
        elif self.filled:
            logits = self.classifier.run(self.batch[: self.filled])
        else:  # only error rows are pending
            logits = np.empty((0, len(self.classifier.labels)), np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported below
            probabilities = self.classifier.policy.probabilities(logits)  # calibrated
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(probabilities).all(axis=1)
        position = 0
        for file_index, row, tensor in self.pending:
            if tensor is not None:
                if finite[position]:
                    prediction = self.classifier.to_prediction(probabilities[position])
                    row.label = prediction.label
                    row.decision = prediction.decision  # the policy's: a label or "refer"
                    row.probabilities = dict(prediction.probabilities)
                else:  # a NaN must never come out as a label (argmax of NaNs is class 0)
                    row.error = f"{row.path}: {NON_FINITE}"
                position += 1
            if row.error:
                self.failed.setdefault(file_index, row.error)
            self.rows.append(row)
        self.pending, self.filled = [], 0


def classify_files(
    items: list[InputFile], classifier: Classifier, options: EngineOptions, digest: bool = False
) -> tuple[list[PredictionRow], dict[int, str]]:
    """Every input through the model: rows in input order, and the failed files' first errors.
    Rows carry the DICOM identifiers (empty for other files) and, with ``digest``, the input's
    sha256 (``input_sha256``, for the audit log; not an output column)."""
    batcher = _Batcher(classifier, options.batch_size)
    progress = Progress(len(items), unit="files", enabled=options.progress)
    window = max(options.batch_size * 2, 8)
    raw = classifier.raw_input  # decode to the uint8 frames a raw-input model takes
    decoded = decoded_in_order(items, classifier.spec, options.decode_workers, window, digest, raw)
    for index, (item, result) in enumerate(decoded):
        row = partial(
            PredictionRow,
            path=str(item.path),
            variant=classifier.variant,
            model_sha256=classifier.sha256 or "",
            ids=result.ids,
            input_sha256=result.sha256,
        )
        if result.error:
            batcher.add(index, row(error=result.error), None)
        for frame, tensor in result.frames:
            error = tensor if isinstance(tensor, str) else ""
            batcher.add(index, row(frame=frame, error=error), None if error else tensor)
        progress.update(note=f"{len(batcher.failed)} failed" if batcher.failed else "")
    batcher.flush()
    progress.close()
    return batcher.rows, batcher.failed

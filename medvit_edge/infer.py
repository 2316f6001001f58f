"""``medvit-edge infer``: predictions for files, folders and globs, with numpy + onnxruntime.

Decoding and preprocessing run in worker threads ahead of the model (Pillow, numpy and
onnxruntime release the GIL), so the model is rarely kept waiting. A file that cannot be read
becomes one error row; the run goes on. The output file is written atomically.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from medvit_edge.dicom import looks_like_dicom, read_dicom_frames
from medvit_edge.files import atomic_writer
from medvit_edge.images import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    ImageDecodeError,
    is_mask_file,
    load_image,
)
from medvit_edge.metrics import classification_metrics, softmax
from medvit_edge.preprocess import PreprocessSpec, preprocess
from medvit_edge.progress import Progress
from medvit_edge.runtime import Classifier

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2
FIXED_COLUMNS = ("path", "frame", "label", "error", "variant", "model_sha256")


@dataclass
class InferConfig:
    model: Path
    inputs: list[str]
    output: Path | None = None
    batch_size: int = 8
    threads: int | None = None
    device: str = "auto"
    verify: bool | None = None
    labels_csv: Path | None = None
    decode_workers: int = 2
    progress: bool = True


@dataclass(frozen=True)
class InputFile:
    path: Path
    root: Path | None = None  # the folder it was found in, for class-folder ground truth
    error: str | None = None


@dataclass
class InferSummary:
    rows: list[dict[str, Any]]
    labels: list[str]
    files: int
    failed_files: int
    predictions: int
    metrics: dict[str, Any] | None = None
    output: Path | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed_files else EXIT_OK


def collect_inputs(specs: list[str]) -> list[InputFile]:
    """Files as given, folders walked recursively (sorted), globs expanded."""
    found: list[InputFile] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found.extend(InputFile(p, root=path) for p in _walk_images(path))
        elif path.exists() or path.is_symlink():
            found.append(InputFile(path))
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            found.extend(InputFile(Path(m)) for m in matches if not Path(m).is_dir())
            if not matches:
                found.append(InputFile(path, error=f"{spec}: no file matches this pattern"))
        else:
            found.append(InputFile(path, error=f"{spec}: no such file or folder"))
    return found


def _walk_images(folder: Path) -> Iterator[Path]:
    suffixes = IMAGE_SUFFIXES | DICOM_SUFFIXES
    # followlinks=False: a symlinked folder loop cannot send the walk round forever.
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or is_mask_file(path):
                continue
            if path.suffix.lower() in suffixes:
                yield path


def decode_file(path: Path, spec: PreprocessSpec) -> list[tuple[int, np.ndarray]]:
    """One file -> its preprocessed frames (a single image is frame 0)."""
    if path.exists() and not path.is_file():
        # a FIFO or device named like an image would block the run forever on open()
        raise ImageDecodeError(f"{path}: not a regular file")
    if path.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(path):
        frames = read_dicom_frames(path)
    else:
        frames = [load_image(path)]
    return [(index, preprocess(frame, spec)) for index, frame in enumerate(frames)]


def _decode_safely(item: InputFile, spec: PreprocessSpec) -> list[tuple[int, np.ndarray]] | str:
    if item.error:
        return item.error
    try:
        return decode_file(item.path, spec)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must cost one row, never the whole run
        return f"{item.path}: unexpected {type(exc).__name__}: {exc}"


def _decoded_in_order(
    items: list[InputFile], spec: PreprocessSpec, workers: int, window: int
) -> Iterator[tuple[InputFile, list[tuple[int, np.ndarray]] | str]]:
    """Decode ahead in threads, at most ``window`` files in flight, yielding in input order."""
    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="decode") as pool:
        pending: deque[tuple[InputFile, Future[Any]]] = deque()
        upcoming = iter(items)
        for item in upcoming:
            pending.append((item, pool.submit(_decode_safely, item, spec)))
            if len(pending) >= window:
                break
        while pending:
            item, future = pending.popleft()
            next_item = next(upcoming, None)
            if next_item is not None:
                pending.append((next_item, pool.submit(_decode_safely, next_item, spec)))
            yield item, future.result()


class _Batcher:
    """Gathers frames into model batches and emits rows in input order."""

    def __init__(self, classifier: Classifier, batch_size: int):
        self.classifier, self.batch_size = classifier, batch_size
        self.pending: list[tuple[dict[str, Any], np.ndarray | None]] = []
        self.rows: list[dict[str, Any]] = []
        self.batch = np.empty((batch_size, 3, classifier.spec.size, classifier.spec.size), np.float32)
        self.filled = 0

    def add(self, row: dict[str, Any], tensor: np.ndarray | None) -> None:
        if tensor is not None:
            self.batch[self.filled] = tensor
            self.filled += 1
        self.pending.append((row, tensor))
        if self.filled == self.batch_size:
            self.flush()

    def flush(self) -> None:
        probabilities = softmax(self.classifier.run(self.batch[: self.filled])) if self.filled else None
        position = 0
        for row, tensor in self.pending:
            if tensor is not None:
                prediction = self.classifier.to_prediction(probabilities[position])
                row["label"] = prediction.label
                row.update(prediction.probabilities)
                position += 1
            self.rows.append(row)
        self.pending, self.filled = [], 0


def infer(cfg: InferConfig, classifier: Classifier | None = None) -> InferSummary:
    """Run ``cfg.model`` over ``cfg.inputs``; write ``cfg.output`` (.csv or .jsonl) if given."""
    classifier = classifier or Classifier.load(
        cfg.model, device=cfg.device, threads=cfg.threads, verify=cfg.verify
    )
    items = collect_inputs(cfg.inputs)
    base = {"variant": classifier.variant, "model_sha256": classifier.sha256 or ""}
    batcher = _Batcher(classifier, cfg.batch_size)
    progress = Progress(len(items), unit="files", enabled=cfg.progress)
    errors: list[str] = []
    window = max(cfg.batch_size * 2, 8)
    for item, result in _decoded_in_order(items, classifier.spec, cfg.decode_workers, window):
        if isinstance(result, str):
            errors.append(result)
            batcher.add({"path": str(item.path), "frame": "", "label": "", "error": result, **base}, None)
        else:
            for frame, tensor in result:
                batcher.add({"path": str(item.path), "frame": frame, "error": "", **base}, tensor)
        progress.update(note=f"{len(errors)} failed" if errors else "")
    batcher.flush()
    progress.close()
    rows = batcher.rows
    summary = InferSummary(
        rows=rows,
        labels=classifier.labels,
        files=len(items),
        failed_files=len(errors),
        predictions=sum(1 for row in rows if not row["error"]),
        metrics=_ground_truth_metrics(rows, items, classifier.labels, cfg.labels_csv),
        output=cfg.output,
        errors=errors,
    )
    if cfg.output is not None:
        write_predictions(cfg.output, rows, classifier.labels)
    return summary


def _ground_truth_metrics(
    rows: list[dict[str, Any]], items: list[InputFile], labels: list[str], labels_csv: Path | None
) -> dict[str, Any] | None:
    """Accuracy and recall when truth is known: a --labels CSV, or one sub-folder per class."""
    truth = _truth_from_csv(labels_csv) if labels_csv else _truth_from_folders(items, labels)
    pairs = [(truth[row["path"]], row["label"]) for row in rows if not row["error"] and row["path"] in truth]
    pairs = [(t, p) for t, p in pairs if t in labels]
    if not pairs:
        return None
    index = {label: i for i, label in enumerate(labels)}
    return classification_metrics([index[t] for t, _ in pairs], [index[p] for _, p in pairs], labels)


def _truth_from_folders(items: list[InputFile], labels: list[str]) -> dict[str, str]:
    by_name = {label.lower(): label for label in labels}
    truth = {}
    for item in items:
        if item.root is None:
            continue
        parts = item.path.relative_to(item.root).parts
        if len(parts) >= 2 and parts[0].lower() in by_name:
            truth[str(item.path)] = by_name[parts[0].lower()]
    return truth


def _truth_from_csv(path: Path) -> dict[str, str]:
    """A CSV with ``path`` and ``label`` columns; relative paths are relative to the CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a labels CSV needs 'path' and 'label' columns")
        truth = {}
        for record in reader:
            file_path = Path(record["path"])
            resolved = file_path if file_path.is_absolute() else path.parent / file_path
            truth[str(resolved)] = record["label"]
            truth[record["path"]] = record["label"]
        return truth


def write_predictions(path: Path, rows: list[dict[str, Any]], labels: list[str]) -> None:
    """CSV (``.csv``) or JSON Lines (``.jsonl``), written atomically."""
    with atomic_writer(path) as handle:
        format_predictions(handle, rows, labels, jsonl=path.suffix.lower() == ".jsonl")


def format_predictions(
    handle: TextIO, rows: list[dict[str, Any]], labels: list[str], jsonl: bool = False
) -> None:
    """One row per frame: path, frame, label, a probability column per class, variant, sha256, error."""
    columns = ["path", "frame", "label", *labels, "variant", "model_sha256", "error"]
    if jsonl:
        for row in rows:
            handle.write(json.dumps({c: row.get(c) for c in columns}) + "\n")
        return
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c, "")) for c in columns})


def _csv_value(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value

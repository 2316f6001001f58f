"""Decoding ahead of the model for ``infer``: files -> preprocessed frames, in worker threads.

Each file is read by ``medvit_edge.reader`` (the one reader of every command) and becomes
``DecodedFrames``: a list of ``(frame index, tensor or that frame's error)`` that also carries
the file's DICOM identifier columns (``ids``, empty for other files) and, when asked, the sha256
of its bytes (for the audit log). A file that cannot be used at all becomes a ``FailedFile``: its
error message (a ``str``), with the identifiers when a DICOM header could be read.

Decoding and preprocessing run in threads (Pillow, numpy and onnxruntime release the GIL), at
most ``window`` files in flight, and come back in input order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.files import sha256_file
from medvit_edge.images import ImageDecodeError, refuse_constant
from medvit_edge.inputs import InputFile
from medvit_edge.preprocess import PreprocessSpec, preprocess
from medvit_edge.reader import NO_IDS, ids_of_error, read_file
from medvit_edge.runtime import raw_pixels

# (frame index, preprocessed tensor or that frame's error)
Frames = list[tuple[int, np.ndarray | str]]


class DecodedFrames(list[tuple[int, np.ndarray | str]]):
    """A file's frames, with ``ids`` (the DICOM identifier columns) and ``sha256`` ("" unless
    asked for)."""

    def __init__(self, frames: Frames, ids: dict[str, str], sha256: str = ""):
        super().__init__(frames)
        self.ids, self.sha256 = ids, sha256


class FailedFile(str):
    """A file that could not be used: its error message, with the identifiers of a DICOM file
    whose header was readable and, when asked, the sha256 of its bytes."""

    ids: dict[str, str]
    sha256: str

    def __new__(cls, message: str, ids: dict[str, str] | None = None, sha256: str = "") -> FailedFile:
        failed = super().__new__(cls, message)
        failed.ids, failed.sha256 = ids or NO_IDS.columns(), sha256
        return failed


def decode_file(path: Path, spec: PreprocessSpec, digest: bool = False, raw: bool = False) -> DecodedFrames:
    """One file -> its preprocessed frames (a single image is frame 0). A blank frame of a
    multi-frame file is that frame's error (a cine loop keeps its other frames); a blank
    single-frame file is an ``ImageDecodeError``. ``digest``: also hash the file's bytes.
    ``raw``: the frames as the RGB uint8 (H, W, 3) arrays a raw-input model takes."""
    decoded = read_file(path, check_constant=False)
    if len(decoded.frames) == 1:
        refuse_constant(decoded.frames[0], str(path))
    frames = [(i, _frame_tensor(path, i, frame, spec, raw)) for i, frame in enumerate(decoded.frames)]
    return DecodedFrames(frames, decoded.ids.columns(), _digest(path) if digest else "")


def _frame_tensor(
    path: Path, index: int, frame: Image.Image, spec: PreprocessSpec, raw: bool = False
) -> np.ndarray | str:
    try:
        refuse_constant(frame, f"{path}: frame {index}")
        if raw:
            return raw_pixels(frame, spec)
    except ImageDecodeError as exc:
        return str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
    return preprocess(frame, spec)


def _digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:  # unreadable: the decode error already says why
        return ""


def decode_safely(
    item: InputFile, spec: PreprocessSpec, digest: bool = False, raw: bool = False
) -> DecodedFrames | FailedFile:
    """``decode_file``, with every failure turned into a ``FailedFile`` (one row, never the run)."""
    if item.error:
        return FailedFile(item.error)
    try:
        return decode_file(item.path, spec, digest, raw)
    except ImageDecodeError as exc:
        return FailedFile(str(exc), ids_of_error(exc).columns(), _digest(item.path) if digest else "")
    except Exception as exc:  # a decoder bug must cost one row, never the whole run
        return FailedFile(f"{item.path}: unexpected {type(exc).__name__}: {exc}")


def decoded_in_order(
    items: list[InputFile],
    spec: PreprocessSpec,
    workers: int,
    window: int,
    digest: bool = False,
    raw: bool = False,
) -> Iterator[tuple[InputFile, DecodedFrames | FailedFile]]:
    """Decode ahead in threads, at most ``window`` files in flight, yielding in input order."""
    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="decode") as pool:
        pending: deque[tuple[InputFile, Future[Any]]] = deque()
        upcoming = iter(items)
        for item in upcoming:
            pending.append((item, pool.submit(decode_safely, item, spec, digest, raw)))
            if len(pending) >= window:
                break
        while pending:
            item, future = pending.popleft()
            next_item = next(upcoming, None)
            if next_item is not None:
                pending.append((next_item, pool.submit(decode_safely, next_item, spec, digest, raw)))
            yield item, future.result()

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

import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.images import ImageDecodeError, refuse_constant
from medvit_edge.inputs import InputFile
from medvit_edge.preprocess import PreprocessSpec, preprocess
from medvit_edge.reader import NO_IDS, ids_of_error, read_bytes, read_file
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


def decode_file(
    path: Path, spec: PreprocessSpec, digest: bool = False, raw: bool = False, data: bytes | None = None
) -> DecodedFrames:
    """One file -> its preprocessed frames (a single image is frame 0). A blank frame of a
    multi-frame file is that frame's error (a cine loop keeps its other frames); a blank
    single-frame file is an ``ImageDecodeError``. ``digest``: the file is read once into memory,
    hashed and decoded from those very bytes (``data``: bytes already read). ``raw``: the frames
    as the RGB uint8 (H, W, 3) arrays a raw-input model takes."""
    if digest and data is None:
        data = read_bytes(path)
    decoded = read_file(path, check_constant=False, data=data)
    if len(decoded.frames) == 1:
        refuse_constant(decoded.frames[0], str(path))
    frames = [(i, _frame_tensor(path, i, frame, spec, raw)) for i, frame in enumerate(decoded.frames)]
    sha256 = hashlib.sha256(data).hexdigest() if digest and data is not None else ""
    return DecodedFrames(frames, decoded.ids.columns(), sha256)


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


def decode_safely(
    item: InputFile, spec: PreprocessSpec, digest: bool = False, raw: bool = False
) -> DecodedFrames | FailedFile:
    """``decode_file``, with every failure turned into a ``FailedFile`` (one row, never the run).
    With ``digest`` the file is read once: a failed decode carries the hash of the bytes read."""
    if item.error:
        return FailedFile(item.error)
    data, sha256 = None, ""
    try:
        if digest:
            data = read_bytes(item.path)
            sha256 = hashlib.sha256(data).hexdigest()
        return decode_file(item.path, spec, digest, raw, data)
    except ImageDecodeError as exc:
        return FailedFile(str(exc), ids_of_error(exc).columns(), sha256)
    except MemoryError:
        return FailedFile(f"{item.path}: not enough memory to decode it", sha256=sha256)
    except Exception as exc:  # a decoder bug must cost one row, never the whole run
        return FailedFile(f"{item.path}: unexpected {type(exc).__name__}: {exc}", sha256=sha256)


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

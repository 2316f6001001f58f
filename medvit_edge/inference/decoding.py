"""Decoding ahead of the model for ``infer``: files -> preprocessed frames, in worker threads.

Each file is read by ``medvit_edge.io.reader`` (the one reader of every command) and becomes a
``DecodedFile``: its ``(frame index, tensor or that frame's error)`` pairs, the file's DICOM
identifiers (empty for other files) and, when asked, the sha256 of its bytes (for the audit
log). A file that cannot be used at all has ``error`` set and no frames, with the identifiers
when a DICOM header could be read.

Decoding and preprocessing run in threads (Pillow, numpy and onnxruntime release the GIL), at
most ``window`` files in flight, and come back in input order.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.io.inputs import InputFile
from medvit_edge.io.reader import NO_IDS, DicomIds, ids_of_error, read_bytes, read_file
from medvit_edge.runtime.classifier import raw_pixels
from medvit_edge.runtime.images import ImageDecodeError, refuse_constant
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess

# (frame index, preprocessed tensor or that frame's error)
Frames = list[tuple[int, np.ndarray | str]]


@dataclass
class DecodedFile:
    """One input file, decoded: its frames, or the error that made the whole file unusable."""

    frames: Frames = field(default_factory=list)
    ids: DicomIds = NO_IDS
    sha256: str = ""  # "" unless asked for
    error: str = ""


def decode_file(
    path: Path, spec: PreprocessSpec, digest: bool = False, raw: bool = False, data: bytes | None = None
) -> DecodedFile:
    """One file -> its preprocessed frames (a single image is frame 0). A blank frame of a
    multi-frame file is that frame's error (a cine loop keeps its other frames); a blank
    single-frame file is an ``ImageDecodeError``. ``digest``: the file is read once into memory,
    hashed and decoded from those very bytes (``data``: bytes already read), so the hash names
    the bytes classified even when the file is rewritten meanwhile. ``raw``: the frames as the
    RGB uint8 (H, W, 3) arrays a raw-input model takes."""
    if digest and data is None:
        data = read_bytes(path)
    decoded = read_file(path, check_constant=False, data=data)
    if len(decoded.frames) == 1:
        refuse_constant(decoded.frames[0], str(path))
    frames = [(i, _frame_tensor(path, i, frame, spec, raw)) for i, frame in enumerate(decoded.frames)]
    sha256 = hashlib.sha256(data).hexdigest() if digest and data is not None else ""
    return DecodedFile(frames, decoded.ids, sha256)


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
) -> DecodedFile:
    """``decode_file``, with every failure turned into an ``error`` (one row, never the run).
    With ``digest`` the file is read once: a failed decode carries the hash of the bytes read."""
    if item.error:
        return DecodedFile(error=item.error)
    data, sha256 = None, ""
    try:
        if digest:
            data = read_bytes(item.path)
            sha256 = hashlib.sha256(data).hexdigest()
        return decode_file(item.path, spec, digest, raw, data)
    except ImageDecodeError as exc:
        return DecodedFile(ids=ids_of_error(exc), sha256=sha256, error=str(exc))
    except MemoryError:
        return DecodedFile(sha256=sha256, error=f"{item.path}: not enough memory to decode it")
    except Exception as exc:  # a decoder bug must cost one row, never the whole run
        return DecodedFile(sha256=sha256, error=f"{item.path}: unexpected {type(exc).__name__}: {exc}")


def decoded_in_order(
    items: list[InputFile],
    spec: PreprocessSpec,
    workers: int,
    window: int,
    digest: bool = False,
    raw: bool = False,
) -> Iterator[tuple[InputFile, DecodedFile]]:
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

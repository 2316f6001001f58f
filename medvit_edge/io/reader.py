"""One reader for every command: a file on disk -> its RGB frames, and its DICOM identifiers.

``infer``, ``train``, ``export`` (validation and calibration images), ``evaluate`` and the DICOM
node (``serve-dicom``) all read files through this module, so a file means the same pixels
everywhere:

* a DICOM file (a ``.dcm``/``.dicom`` suffix, or ``DICM`` after the 128-byte preamble whatever
  its name) goes through ``medvit_edge.io.dicom`` (every frame; its documented Modality/VOI LUT
  rules, the header-first pixel budget) and also yields its identifiers (``DicomIds``);
* anything else goes through Pillow (``medvit_edge.runtime.images.load_image``): one frame.

**Labelled sets** (a split CSV or class folders, for train, export and evaluate) use one image
per sample, ``read_labelled_image(path, frame)``:

* ``frame`` empty (a class folder, or a CSV without a ``frame`` column): a single-frame file is
  its image; a **multi-frame file stands for one sample, its middle frame** (index ``n // 2``,
  0-based): a cine loop's middle is the frame the sonographer centred on, and one sample per
  file keeps a long loop from outweighing a still image;
* ``frame`` set (a ``frame`` column in the split CSV, 0-based, like ``infer``'s ``frame``
  column): that frame. Several rows naming frames of the same file are several samples; train
  gives the rows of one file one duplicate group, so its frames never straddle splits;
* a frame outside the file, or a frame that is one constant colour, is an ``ImageDecodeError``
  naming the file and the frame (the sample is skipped and reported, like any unreadable image).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from medvit_edge.io.dicom import DicomDecodeError, looks_like_dicom, read_dicom
from medvit_edge.runtime.images import DICOM_SUFFIXES, ImageDecodeError, load_image, refuse_constant

# Inputs read whole into memory (to hash exactly what is decoded) are refused above this size:
# the DICOM pixel budget (medvit_edge.io.dicom) decodes at most ~1.4 GB of 8-bit pixels.
MAX_INPUT_BYTES = 2 << 30
# The identifier columns of a prediction row (empty for an input that is not DICOM).
UID_COLUMNS = ("study_uid", "series_uid", "sop_uid")


@dataclass(frozen=True)
class DicomIds:
    """Which DICOM instance an input is: empty strings for a file that is not DICOM."""

    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""

    @classmethod
    def from_header(cls, header: Any) -> DicomIds:
        if header is None:
            return NO_IDS

        def text(keyword: str) -> str:
            value = header.get(keyword)
            return str(value).strip() if value is not None else ""

        return cls(
            text("StudyInstanceUID"), text("SeriesInstanceUID"), text("SOPInstanceUID"), text("SOPClassUID")
        )

    def columns(self) -> dict[str, str]:
        """The values of ``UID_COLUMNS``."""
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "sop_uid": self.sop_uid}


NO_IDS = DicomIds()


@dataclass(frozen=True)
class DecodedFile:
    frames: list[Image.Image]
    ids: DicomIds = NO_IDS
    header: Any = None  # the DICOM dataset up to its pixel data; None for other files


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """A DICOM suffix, or the DICM preamble whatever the name (``IM000001``)."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(path)


def is_dicom_bytes(path: Path, data: bytes) -> bool:
    """``is_dicom`` for a file already read: its suffix, or the DICM preamble in ``data``."""
    return path.suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"


def read_file(
    path: str | os.PathLike[str], check_constant: bool = True, data: bytes | None = None
) -> DecodedFile:
    """Every frame of a file (one for an ordinary image) with its DICOM identifiers.

    ``check_constant=False`` leaves blank frames of a multi-frame DICOM file to the caller
    (an ordinary image that is one constant colour is always refused). Any failure is an
    ``ImageDecodeError`` naming the file; for a DICOM file whose header could be read it is a
    ``DicomDecodeError`` that carries the header (``ids_of_error`` gives its identifiers).

    ``data``: the file's bytes, read once by ``read_bytes`` (then decoded from memory, so what
    is decoded is exactly what was hashed; ``path`` only names the file)."""
    path = Path(path)
    if data is None and path.exists() and not path.is_file():
        # a FIFO or device named like an image would block the run forever on open()
        raise ImageDecodeError(f"{path}: not a regular file")
    dicom = (
        is_dicom(path)
        if data is None
        else (path.suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM")
    )
    if dicom:
        image = read_dicom(path, check_constant, data)
        return DecodedFile(image.frames, DicomIds.from_header(image.header), image.header)
    return DecodedFile([load_image(path, data)])


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> bytes:
    """A regular file's bytes, read through one open descriptor (never blocking on a FIFO or
    device, never more than ``limit`` bytes); an ``ImageDecodeError`` naming the file otherwise."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found (or a broken link)") from exc
    except PermissionError as exc:
        raise ImageDecodeError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as handle:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ImageDecodeError(f"{path}: not a regular file")
            if info.st_size > limit:
                raise ImageDecodeError(f"{path}: refused, {info.st_size} bytes (more than {limit})")
            os.set_blocking(fd, True)
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ImageDecodeError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if len(data) > limit:  # grew while being read
        raise ImageDecodeError(f"{path}: refused, more than {limit} bytes")
    return data


def ids_of_error(error: BaseException) -> DicomIds:
    """The identifiers of the DICOM file an error is about, when its header could be read."""
    return DicomIds.from_header(error.header) if isinstance(error, DicomDecodeError) else NO_IDS


def middle_frame(count: int) -> int:
    """The frame a multi-frame file contributes to a labelled set when none is named."""
    return count // 2


def read_labelled_image(path: str | os.PathLike[str], frame: int | None = None) -> Image.Image:
    """The one image a labelled sample stands for (the module's frame rule)."""
    frames = read_file(path, check_constant=False).frames
    index = middle_frame(len(frames)) if frame is None else frame
    if not 0 <= index < len(frames):
        raise ImageDecodeError(
            f"{path}: frame {frame} asked for, but the file has {len(frames)} frame(s), numbered from 0"
        )
    refuse_constant(frames[index], str(path) if len(frames) == 1 else f"{path}: frame {index}")
    return frames[index]

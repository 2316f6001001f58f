"""DICOM input through the optional ``[dicom]`` extra (pydicom).

``read_dicom`` gives the frames and the header (the dataset up to its pixel data: UIDs, patient
and study) read once; ``read_dicom_frames`` the frames only; a failure after the header was read
is a ``DicomDecodeError`` that carries it. Commands read files through ``medvit_edge.io.reader``.

Each frame of a (multi-frame) ultrasound file becomes one RGB image:

* ``RGB`` stays; ``YBR_FULL``/``YBR_FULL_422`` are converted to RGB by pydicom;
* ``PALETTE COLOR`` goes through its colour lookup table;
* colour with more than 8 bits is scaled by the stored range (``v * 255 / (2**bits - 1)``);
* ``MONOCHROME2`` is repeated into three channels, ``MONOCHROME1`` is inverted at the end;
* monochrome of at most 8 stored bits, with no rescale and no window, maps its stored range onto
  0..255: unsigned ``0..2**bits-1``, signed ``-2**(bits-1)..2**(bits-1)-1`` (so a 1-bit
  ``BitsAllocated 1`` image is 0/255 and signed 8-bit is shifted, not clipped);
* any other monochrome (deeper than 8 bits, signed or not, rescaled, windowed, or float pixel
  data): the Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) first, then the VOI
  LUT (Window Center/Width or VOI LUT Sequence) on the rescaled values, in the order the DICOM
  standard gives them (PS3.4 N.2), then each frame's finite min..max is stretched to 0..255;
* Float and Double Float Pixel Data (parametric maps) follow the rule above; NaN becomes black.

Refused with an ``ImageDecodeError`` naming the file:

* a file whose frames decode to a constant image ("decodes to a constant image (every pixel N):
  nothing to classify"), unless the caller asks for the frames anyway (``check_constant=False``):
  ``infer`` then reports each blank frame of a multi-frame file on its own row and classifies the
  others, while a blank single-frame file is one error row;
* more pixels than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): one frame
  of more than that many pixels (Rows x Columns), like any image, or all frames together holding
  more than ``FRAMES_BUDGET`` times that many values (Rows x Columns x frames x samples, ~1.4 GB
  of 8-bit pixels decoded). The check reads the header only, before any pixel data is decoded;
  a deflated file is inflated only up to its pixel data for this check, and never beyond the
  size its header declares afterwards;
* no pixel data, an undecodable transfer syntax, an unreadable header.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.lazy import import_optional
from medvit_edge.runtime.images import ImageDecodeError, refuse_constant

DICOM_HINT = "DICOM input needs pydicom: pip install 'medvit-edge[dicom]'"
# All frames of one file together: this many times Pillow's one-image limit, counted in values.
FRAMES_BUDGET = 8
# The non-pixel part of a dataset may inflate to this much at most (headers are kilobytes).
HEADER_BYTES = 64 << 20
PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
DEFLATED = "1.2.840.10008.1.2.1.99"


def looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM file: its frames, and its header (the dataset up to the pixel data: the
    identifiers and the patient and study modules that a report about it needs)."""

    frames: list[Image.Image]
    header: Any


class DicomDecodeError(ImageDecodeError):
    """A DICOM file whose header was read but whose pixels could not be used; ``header`` still
    names the instance (its UIDs), so the failure can be reported against it."""

    def __init__(self, message: str, header: Any = None):
        super().__init__(message)
        self.header = header


def read_dicom_frames(path: str | os.PathLike[str], check_constant: bool = True) -> list[Image.Image]:
    """All frames of a DICOM file as RGB PIL images, in frame order. ``check_constant=False``
    leaves blank frames to the caller (``infer`` reports each one on its own row)."""
    return read_dicom(path, check_constant).frames


def read_dicom_header(path: str | os.PathLike[str]) -> Any:
    """The dataset up to (not including) the pixel data; ``ImageDecodeError`` when unreadable."""
    _require_pydicom(path)
    return _read(path, header_only=True)[0]


def read_dicom(
    path: str | os.PathLike[str], check_constant: bool = True, data: bytes | None = None
) -> DicomImage:
    """The frames (as ``read_dicom_frames``) and the header, read once. A failure after the
    header was read is a ``DicomDecodeError`` carrying that header. ``data``: the file's bytes,
    already read (``path`` then only names it in messages)."""
    _require_pydicom(path)
    header, pixel_tag = _read(path, header_only=True, data=data)
    try:
        frames = _decode_frames(path, header, pixel_tag, check_constant, data)
    except ImageDecodeError as exc:
        raise DicomDecodeError(str(exc), header) from exc
    return DicomImage(frames, header)


def _require_pydicom(path: object) -> None:
    import_optional("pydicom", hint=f"{path}: {DICOM_HINT}", error=ImageDecodeError)


def _decode_frames(
    path: object, header: Any, pixel_tag: int | None, check_constant: bool, data: bytes | None = None
) -> list[Image.Image]:
    from pydicom.pixels import apply_color_lut

    if pixel_tag is None:
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data (no PixelData element)")
    decoded_bytes = _check_pixel_budget(header, path)
    dataset, _ = _read(path, header_only=False, limit=decoded_bytes + HEADER_BYTES, data=data)
    pixels = _pixel_array(dataset, path)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        try:
            pixels = apply_color_lut(pixels, dataset)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ImageDecodeError(f"{path}: PALETTE COLOR image without a usable palette ({exc})") from exc
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    colour = int(dataset.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR"
    if frames == 1 and pixels.ndim == (3 if colour else 2):
        pixels = pixels[None]
    images = [_frame_to_rgb(frame, photometric, dataset, path) for frame in pixels]
    if check_constant:
        _refuse_constant_frames(images, path)
    return images


def _read(
    path: object, header_only: bool, limit: int = HEADER_BYTES, data: bytes | None = None
) -> tuple[Any, int | None]:
    """(dataset, the pixel data tag met or None); ``header_only`` stops before the pixel data.
    ``data``: the file's bytes already in memory, read from there instead of from ``path``."""
    import pydicom
    from pydicom.filereader import read_file_meta_info, read_partial

    met: list[int] = []

    def at_pixels(tag: int, vr: str | None, length: int) -> bool:
        if int(tag) in PIXEL_TAGS:
            met.append(int(tag))
            return header_only
        return False

    try:
        meta = read_file_meta_info(path) if data is None else _meta_from_bytes(data)  # type: ignore[arg-type]
        if meta.get("TransferSyntaxUID") == DEFLATED:
            dataset = _read_deflated(Path(str(path)), meta, at_pixels, limit, data)
        elif header_only:
            with _open(path, data) as handle:
                dataset = read_partial(handle, stop_when=at_pixels)
        else:
            dataset = pydicom.dcmread(path if data is None else io.BytesIO(data))  # type: ignore[arg-type]
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError ...
        raise ImageDecodeError(f"{path}: not a readable DICOM file ({exc})") from exc
    if not header_only:
        met.extend(tag for tag, name in PIXEL_TAGS.items() if name in dataset)
    return dataset, (met[0] if met else None)


def _open(path: object, data: bytes | None) -> Any:
    return open(path, "rb") if data is None else io.BytesIO(data)  # type: ignore[call-overload]


def _meta_from_bytes(data: bytes) -> Any:
    """``read_file_meta_info`` for a file already in memory."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    handle = io.BytesIO(data)
    read_preamble(handle, False)  # type: ignore[arg-type]
    return _read_file_meta_info(handle)  # type: ignore[arg-type]


def _read_deflated(path: Path, meta: Any, stop_when: Any, limit: int, data: bytes | None = None) -> Any:
    """A Deflated Explicit VR file read through a bounded, lazy inflater (pydicom itself would
    inflate the whole file in memory before reading a single element)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_partial
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    if "FileMetaInformationGroupLength" not in meta:
        raise ImageDecodeError(f"{path}: deflated DICOM file without a File Meta group length")
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    # Once inflated, the dataset is plain Explicit VR Little Endian: say so in the meta we pass on.
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=False)
    prefix = bytes(128) + b"DICM" + buffer.getvalue()
    with _open(path, data) as handle:
        handle.seek(start)
        reader = _InflatingReader(handle, prefix, len(prefix) + limit, str(path))
        dataset = read_partial(reader, stop_when=stop_when)  # type: ignore[arg-type]
        reader.release()
    return dataset


class _InflatingReader:
    """``prefix`` followed by a raw-deflate stream, inflated only as far as it is read (seekable
    backwards, as pydicom needs); more than ``limit`` bytes in all is an ``ImageDecodeError``."""

    CHUNK = 1 << 16

    def __init__(self, handle: Any, prefix: bytes, limit: int, name: str):
        self._handle, self._limit, self.name = handle, limit, name
        self._data, self._pos, self._done = bytearray(prefix), 0, False
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def _fill(self, end: int | None) -> None:
        while not self._done and (end is None or len(self._data) < end):
            compressed = self._inflater.unconsumed_tail or self._handle.read(self.CHUNK)
            if not compressed:
                self._data += self._inflater.flush()
                self._done = True
                break
            self._data += self._inflater.decompress(compressed, 16 * self.CHUNK)
            self._done = self._inflater.eof
            if len(self._data) > self._limit:
                raise ImageDecodeError(
                    f"{self.name}: refused, deflated DICOM data inflates to more than the "
                    f"{self._limit} bytes its header allows (a decompression bomb?)"
                )

    def read(self, size: int = -1) -> bytes:
        self._fill(None if size is None or size < 0 else self._pos + size)
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self._fill(None)
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._data)}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def release(self) -> None:
        """Drop the inflated bytes: the dataset keeps a reference to its reader."""
        self._data = bytearray()


def _check_pixel_budget(header: Any, path: object) -> int:
    """Refuse, from the header alone, what would decode to too many pixels; returns the bytes
    the pixel data declares."""
    try:
        rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = max(int(header.get("NumberOfFrames", 1) or 1), 1)
        samples = max(int(header.get("SamplesPerPixel", 1) or 1), 1)
        bits = max(int(header.get("BitsAllocated", 8) or 8), 1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: unreadable image size in the DICOM header ({exc})") from exc
    if rows < 1 or columns < 1:
        raise ImageDecodeError(f"{path}: DICOM image of {columns}x{rows} pixels has no pixels")
    limit = Image.MAX_IMAGE_PIXELS
    values = rows * columns * frames * samples
    if limit is not None and rows * columns > limit:
        raise ImageDecodeError(
            f"{path}: refused, too many pixels ({columns}x{rows} per frame, more than Pillow's "
            f"limit of {limit}; a decompression bomb?)"
        )
    if limit is not None and values > FRAMES_BUDGET * limit:
        raise ImageDecodeError(
            f"{path}: refused, too many pixels ({frames} frames of {columns}x{rows}x{samples} = "
            f"{values} values, more than {FRAMES_BUDGET} x Pillow's limit of {limit})"
        )
    return -(-values * bits // 8)


def _pixel_array(dataset: Any, path: object) -> np.ndarray:
    try:
        return dataset.pixel_array
    except Exception as exc:  # missing decoder plugin, unsupported transfer syntax ...
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageDecodeError(
            f"{path}: cannot decode DICOM pixel data (transfer syntax {name}): {exc}"
        ) from exc


def _frame_to_rgb(frame: np.ndarray, photometric: str, dataset: Any, path: object) -> Image.Image:
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ImageDecodeError(f"{path}: DICOM frame of shape {frame.shape} has no pixels")
    if photometric.startswith("MONOCHROME"):
        pixels = _monochrome_to_uint8(frame, dataset, path)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
    else:
        bits = int(dataset.get("BitsStored", 8) or 8)
        if photometric == "PALETTE COLOR":
            # The colour LUT yields 16-bit (or 8-bit) entries regardless of BitsStored.
            bits = 16 if frame.dtype.itemsize > 1 else 8
        top = float(2**bits - 1) if bits > 8 else 255.0
        pixels = np.rint(np.clip(frame.astype(np.float64) * (255.0 / top), 0, 255)).astype(np.uint8)
    if pixels.ndim == 2:
        return Image.fromarray(pixels).convert("RGB")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    raise ImageDecodeError(f"{path}: unexpected DICOM frame shape {frame.shape}")


def _monochrome_to_uint8(frame: np.ndarray, dataset: Any, path: object) -> np.ndarray:
    """Modality LUT, then VOI LUT, then 0..255 (the module's rules)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(dataset.get("BitsStored", 0) or 0) or frame.dtype.itemsize * 8
    rescaled = bool(dataset.get("ModalityLUTSequence")) or (
        "RescaleSlope" in dataset and "RescaleIntercept" in dataset
    )
    windowed = bool(dataset.get("VOILUTSequence")) or ("WindowCenter" in dataset and "WindowWidth" in dataset)
    if frame.dtype.kind in "iu" and bits <= 8 and not rescaled and not windowed:
        lowest = -(2 ** (bits - 1)) if frame.dtype.kind == "i" else 0
        scaled = (frame.astype(np.float64) - lowest) * (255.0 / (2**bits - 1))
        return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
    try:
        values = apply_modality_lut(frame, dataset)
        if windowed:
            values = apply_voi_lut(values, dataset)
    except Exception as exc:  # a malformed LUT or window: say so, not "unexpected"
        raise ImageDecodeError(f"{path}: cannot apply the file's Modality/VOI LUT ({exc})") from exc
    return _stretch(np.asarray(values, dtype=np.float64))


def _stretch(values: np.ndarray) -> np.ndarray:
    """The finite min..max onto 0..255; NaN (float pixel data) is black."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.rint(np.where(finite, (values - low) * scale, 0.0)).astype(np.uint8)


def _refuse_constant_frames(images: list[Image.Image], path: object) -> None:
    """The first constant frame names the error; a single-frame file is named by its path only."""
    constant = [index for index, image in enumerate(images) if _is_constant(image)]
    if not constant:
        return
    if len(images) == 1:
        refuse_constant(images[0], str(path))
    more = f", {len(constant) - 1} more like it" if len(constant) > 1 else ""
    refuse_constant(images[constant[0]], f"{path}: frame {constant[0]} (of {len(images)}{more})")


def _is_constant(image: Image.Image) -> bool:
    return all(low == high for low, high in image.getextrema())  # type: ignore[union-attr]

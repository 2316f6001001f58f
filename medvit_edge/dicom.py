"""DICOM input through the optional ``[dicom]`` extra (pydicom).

Each frame of a (multi-frame) ultrasound file becomes one RGB image:

* ``RGB`` stays; ``YBR_FULL``/``YBR_FULL_422`` are converted to RGB by pydicom;
* ``PALETTE COLOR`` goes through its colour lookup table;
* ``MONOCHROME2`` is repeated into three channels, ``MONOCHROME1`` is inverted first;
* monochrome with more than 8 stored bits goes through the file's VOI window (Window
  Center/Width or VOI LUT) when it has one, then each frame's min..max is stretched to 0..255;
  colour with more than 8 bits is scaled by the stored range (``v * 255 / (2**bits - 1)``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from medvit_edge.images import ImageDecodeError

DICOM_HINT = "DICOM input needs pydicom: pip install 'medvit-edge[dicom]'"


def looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_frames(path: str | os.PathLike[str]) -> list[Image.Image]:
    """All frames of a DICOM file as RGB PIL images, in frame order."""
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut
    except ImportError as exc:
        raise ImageDecodeError(f"{path}: {DICOM_HINT}") from exc
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError ...
        raise ImageDecodeError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in dataset:
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # missing decoder plugin, unsupported transfer syntax ...
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageDecodeError(
            f"{path}: cannot decode DICOM pixel data (transfer syntax {name}): {exc}"
        ) from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1))
    colour = samples == 3 or photometric == "PALETTE COLOR"
    if frames == 1 and pixels.ndim == (3 if colour else 2):
        pixels = pixels[None]
    bits = int(dataset.get("BitsStored", 8))
    return [_frame_to_rgb(frame, photometric, bits, dataset, path) for frame in pixels]


def _frame_to_rgb(
    frame: np.ndarray, photometric: str, bits: int, dataset: object, path: object
) -> Image.Image:
    if photometric.startswith("MONOCHROME") and bits > 8:
        pixels = _window_monochrome(frame, dataset)
    else:
        if photometric == "PALETTE COLOR":
            # The colour LUT yields 16-bit (or 8-bit) entries regardless of BitsStored.
            bits = 16 if frame.dtype.itemsize > 1 else 8
        top = float(2**bits - 1) if bits > 8 else 255.0
        pixels = np.rint(np.clip(frame.astype(np.float64) * (255.0 / top), 0, 255)).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    if pixels.ndim == 2:
        return Image.fromarray(pixels).convert("RGB")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    raise ImageDecodeError(f"{path}: unexpected DICOM frame shape {frame.shape}")


def _window_monochrome(frame: np.ndarray, dataset: object) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    values = frame.astype(np.float64)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(frame, dataset).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.rint((values - low) * scale).astype(np.uint8)

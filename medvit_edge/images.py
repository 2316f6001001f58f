"""Decoding images and turning every supported kind of input into one RGB uint8 image.

All mode handling lives here, so training and the runtime see the same pixels:

* grey (``L``, ``1``) is repeated into three channels;
* palette (``P``) is expanded through its palette (with transparency, as RGBA below);
* alpha (``RGBA``, ``LA``, ``PA``) is composited over **black**, the background of ultrasound;
* 16-bit grey (``I;16*``, ``I``) is scaled by the full 16-bit range (``v / 257``), not by a
  per-image window, so a grey value means the same brightness in every file;
* float images/arrays are taken as 0..1 when their maximum is <= 1, else as 0..255, and clipped;
* CMYK, YCbCr, LAB and HSV are converted by Pillow;
* EXIF orientation is applied, and only the first frame of an animated image is used.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


class ImageDecodeError(ValueError):
    """An input could not be turned into an image; the message names the file and the cause."""


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open, fully decode and orient an image file, returned as RGB."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between 1x and 2x its pixel limit; treat it as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                image.load()
                oriented = ImageOps.exif_transpose(image)
                return to_rgb(oriented)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{path}: refused, too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not a readable image file") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found (or a broken link)") from exc
    except PermissionError as exc:
        raise ImageDecodeError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> an RGB image, following the module's documented rules."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info
        return _composite_on_black(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_black(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(array_to_uint8(np.asarray(image))).convert("RGB")
    raise ImageDecodeError(f"unsupported image mode {mode!r}")


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer or float pixel values to uint8 by the documented rules."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        # 16-bit (and wider) integers: the full 16-bit range maps onto 0..255.
        scaled = np.clip(array.astype(np.float64), 0, 65535) / 257.0
        return np.rint(scaled).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
    raise ImageDecodeError(f"unsupported pixel dtype {array.dtype}")


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """A numpy image (HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA; uint8, uint16 or float)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageDecodeError(f"array of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"array of shape {array.shape} has no pixels")
    pixels = np.ascontiguousarray(array_to_uint8(array))
    if pixels.ndim == 2:
        return Image.fromarray(pixels).convert("RGB")
    if pixels.shape[2] == 4:
        return _composite_on_black(Image.fromarray(pixels, "RGBA"))
    return Image.fromarray(pixels, "RGB")


def as_rgb_image(item: object) -> Image.Image:
    """A path, PIL image or numpy array -> an RGB PIL image."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    if isinstance(item, np.ndarray):
        return array_to_rgb(item)
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    raise ImageDecodeError(f"cannot use an input of type {type(item).__name__} as an image")


def is_mask_file(path: Path) -> bool:
    """The original BUSI release keeps segmentation masks (``x_mask.png``) beside each image."""
    return "_mask" in path.stem

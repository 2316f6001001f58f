"""Decoding images and turning every supported kind of input into one RGB uint8 image.

All mode handling lives here, so training and the runtime see the same pixels:

* grey (``L``, ``1``) is repeated into three channels;
* palette (``P``) is expanded through its palette (with transparency, as RGBA below);
* alpha (``RGBA``, ``LA``, ``PA``) is composited over **black**, the background of ultrasound;
* 16-bit grey images (``I;16*``, ``I``) are scaled by the full 16-bit range (``v / 257``), not by
  a per-image window, so a grey value means the same brightness in every file; a value outside
  0..65535 is an error;
* numpy arrays, by dtype: ``uint8`` as is; ``bool`` 0/255; ``uint16`` ``v / 257``; any other
  integer dtype (``int8`` .. ``int64``, ``uint32``, ``uint64``) by its values: all within 0..255
  are 8-bit, else all within 0..65535 are 16-bit (``v / 257``), else (negative or larger) an
  ``ImageDecodeError`` naming the dtype and the range;
* float images/arrays are taken as 0..1 when their largest finite value is <= 1, else as
  0..255, and clipped to that range; NaN is 0, +inf the top, -inf the bottom; an array with no
  finite value at all is an ``ImageDecodeError``;
* CMYK, YCbCr, LAB and HSV are converted by Pillow;
* EXIF orientation is applied, and only the first frame of an animated image is used;
* an image with no pixels (0 wide or 0 high) is an ``ImageDecodeError``, from any source.

A decoded **file** (``load_image``) that is one constant colour is refused with an
``ImageDecodeError`` ("decodes to a constant image (every pixel N): nothing to classify"): a
blank frame carries nothing to classify and scoring it would only hide a decoding or export
problem. Images and arrays passed in memory (``as_rgb_image``) are scored as given.

Suffixes: ``IMAGE_SUFFIXES`` are the names a folder walk reads as images (whether this Pillow
can decode them or not: a suffix it has no decoder for, e.g. ``.heic``, becomes an error that
says so, never a silent skip); ``DICOM_SUFFIXES`` go to the DICOM reader, as does any file that
starts like a DICOM file (see ``medvit_edge.io.inputs``).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
    | {".jpg", ".jpeg", ".jpe", ".jfif"}  # JPEG
    | {".jp2", ".j2k", ".j2c", ".jpf", ".jpx"}  # JPEG 2000
)
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

# The original BUSI release keeps each segmentation mask beside its image: "benign (1)_mask.png",
# and for a second lesion "benign (1)_mask_1.png". Only that pattern is a mask: "x_mask_off.png"
# is an ordinary image.
_BUSI_MASK = re.compile(r".+_mask(_\d+)?", re.IGNORECASE)


class ImageDecodeError(ValueError):
    """An input could not be turned into an image; the message names the file and the cause."""


def load_image(path: str | os.PathLike[str], data: bytes | None = None) -> Image.Image:
    """Open, fully decode and orient an image file, returned as RGB; a constant image is refused.
    ``data``: the file's bytes, already read (``path`` then only names it in messages)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between 1x and 2x its pixel limit; treat it as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as image:
                image.seek(0)
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{path}: refused, too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not a readable image file{_missing_decoder(path)}") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found (or a broken link)") from exc
    except PermissionError as exc:
        raise ImageDecodeError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot decode image ({exc})") from exc
    refuse_constant(rgb, str(path))
    return rgb


def _missing_decoder(path: Path) -> str:
    """Why Pillow could not identify a file whose suffix it has no plugin for."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES and suffix not in Image.registered_extensions():
        return f" (this Pillow has no decoder for {suffix} files)"
    return ""


def refuse_constant(image: Image.Image, what: str) -> None:
    """``ImageDecodeError`` when every pixel of an RGB ``image`` has the same value."""
    extrema = image.getextrema()
    if all(low == high for low, high in extrema):  # type: ignore[union-attr]
        values = [low for low, _ in extrema]  # type: ignore[union-attr]
        value = values[0] if len(set(values)) == 1 else tuple(values)
        raise ImageDecodeError(
            f"{what}: decodes to a constant image (every pixel {value}): nothing to classify"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> an RGB image, following the module's documented rules."""
    if image.width < 1 or image.height < 1:
        raise ImageDecodeError(f"image of size {image.width}x{image.height} has no pixels")
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
    if mode.startswith("I"):
        # Pillow's integer modes are 16-bit grey (32-bit "I" holds 16-bit PNG/TIFF values).
        return Image.fromarray(_integers_to_uint8(np.asarray(image), bits=16)).convert("RGB")
    if mode == "F":
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
    if array.dtype == np.uint16:
        return _integers_to_uint8(array, bits=16)
    if np.issubdtype(array.dtype, np.integer):
        return _integers_to_uint8(array, bits=None)
    if np.issubdtype(array.dtype, np.floating):
        return _floats_to_uint8(array)
    raise ImageDecodeError(f"unsupported pixel dtype {array.dtype}")


def _integers_to_uint8(array: np.ndarray, bits: int | None) -> np.ndarray:
    """8-bit values as is, 16-bit values by the full 16-bit range; ``bits=None``: by the values."""
    if array.size == 0:
        raise ImageDecodeError(f"array of shape {array.shape} has no pixels")
    low, high = int(array.min()), int(array.max())
    if bits is None and low >= 0 and high <= 255:
        return array.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)
    taken = "16-bit grey" if bits == 16 else "8-bit (0..255) or 16-bit (0..65535) grey"
    raise ImageDecodeError(
        f"{array.dtype} pixel values {low}..{high} cannot be read as {taken}: "
        "scale them to 0..255 (uint8) first"
    )


def _floats_to_uint8(array: np.ndarray) -> np.ndarray:
    """0..1 when the largest finite value is <= 1, else 0..255, clipped; NaN is 0, +inf the top
    and -inf the bottom of the range. An array with no finite value at all is an error."""
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageDecodeError(f"{array.dtype} array of shape {array.shape} has no finite pixel value")
    scale = 255.0 if values[finite].max() <= 1.0 else 1.0
    values = np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """A numpy image (HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA), pixel values by the module's rules."""
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
        if item.width < 1 or item.height < 1:  # exif_transpose would fail first on some images
            raise ImageDecodeError(f"image of size {item.width}x{item.height} has no pixels")
        return to_rgb(ImageOps.exif_transpose(item))
    if isinstance(item, np.ndarray):
        return array_to_rgb(item)
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    raise ImageDecodeError(f"cannot use an input of type {type(item).__name__} as an image")


def is_mask_file(path: Path) -> bool:
    """A BUSI segmentation mask: ``name_mask.png`` or ``name_mask_1.png`` (nothing else)."""
    return _BUSI_MASK.fullmatch(path.stem) is not None

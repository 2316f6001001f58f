"""One frozen preprocessing spec, shared by training, export and the runtime.

The spec is data (it travels as JSON inside every ONNX file), and `preprocess` reproduces the
training eval transform exactly: torchvision's ``Resize(shorter side)`` on a PIL image (which is
Pillow's own antialiased resize), ``CenterCrop``, ``ToTensor`` and ``Normalize``.  Only Pillow is
used, to resize; everything after that is numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

ResizeMode = Literal["shortest_edge", "squash"]

# Pillow's filters, by the names torchvision's InterpolationMode and HF processors use.
INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_PIL_CODE_TO_NAME = {code: name for name, code in INTERPOLATIONS.items()}


# Larger inputs than this are not a ViT on a scanner: a typo (20000) would allocate gigabytes.
MAX_SIZE = 4096


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class PreprocessError(ValueError):
    """The spec, or an image handed to it, cannot be used."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes the model's ``(3, size, size)`` float32 input.

    ``shortest_edge``: resize the shorter side to ``resize_size`` (aspect kept), then centre-crop
    ``size`` — the cookbook's eval transform ``Resize(224) + CenterCrop(224)``.
    ``squash``: resize straight to ``size x size`` — what ``ViTImageProcessor`` does.
    """

    size: int = 224
    resize_mode: ResizeMode = "shortest_edge"
    resize_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    _lut: np.ndarray = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "_lut", _normalisation_table(self))

    def _validate(self) -> None:
        """Refuse a spec that would crash or silently poison every prediction (a NaN std makes
        every input NaN; a float or huge size fails deep inside numpy)."""
        for name in ("size", "resize_size"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_SIZE:
                raise PreprocessError(f"{name} must be a whole number from 1 to {MAX_SIZE}, got {value!r}")
        if self.resize_mode not in ("shortest_edge", "squash"):
            raise PreprocessError(f"unknown resize_mode {self.resize_mode!r}")
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise PreprocessError(
                f"unknown interpolation {self.interpolation!r}; one of {sorted(INTERPOLATIONS)}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(_is_finite, values)):
                raise PreprocessError(f"{name} needs 3 finite numbers, got {values!r}")
        if min(self.std) <= 0:
            raise PreprocessError(f"std must be > 0, got {list(self.std)}")
        if not _is_finite(self.rescale_factor) or self.rescale_factor <= 0:
            raise PreprocessError(f"rescale_factor must be a positive number, got {self.rescale_factor!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_lut")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(data) - known
        if unknown:
            raise PreprocessError(f"unknown preprocessing keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PreprocessError(f"preprocessing spec is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PreprocessError("preprocessing spec must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_hf_processor_config(
        cls, config: dict[str, Any], resize_mode: ResizeMode = "shortest_edge"
    ) -> PreprocessSpec:
        """Build the spec from a HF ``preprocessor_config.json`` (ViTImageProcessor and kin)."""
        size_cfg = config.get("size", 224)
        if isinstance(size_cfg, dict):
            size = int(size_cfg.get("height") or size_cfg.get("shortest_edge") or 224)
        else:
            size = int(size_cfg)
        resample = config.get("resample", Image.Resampling.BILINEAR)
        return cls(
            size=size,
            resize_mode=resize_mode,
            resize_size=size,
            interpolation=_PIL_CODE_TO_NAME.get(int(resample), "bilinear"),
            mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(config.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    def to_hf_processor_config(self) -> dict[str, Any]:
        """The transformers image-processor config (``preprocessor_config.json``) that does what
        this spec does, for Optimum's ORTModel and ``pipeline`` users.

        * ``squash``: ``ViTImageProcessor`` (Pillow's resize to size x size: the same pixels).
        * ``shortest_edge``, size < 384, bilinear or bicubic: ``ConvNextImageProcessorFast``. It
          resizes the shorter side to ``int(size / crop_pct)`` (= ``resize_size``; the half keeps
          float error out of ``int``), long side ``int(...)`` like torchvision, then crops with
          torchvision's ``center_crop``: offsets ``round((H - size) / 2)``, ours. Its antialiased
          resize runs in torchvision, not Pillow: ±1 grey level on ~0.2% of values.
        * otherwise ``CLIPImageProcessor`` (ConvNeXt squashes from 384 up; torchvision's nearest
          is not Pillow's): Pillow's resize, but its centre crop starts at ``floor((H - size) / 2)``,
          one pixel before ours when ``H - size`` is 3 mod 4.
        """
        common = {
            "do_resize": True,
            "resample": int(INTERPOLATIONS[self.interpolation]),
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }
        if self.resize_mode == "squash":
            size = {"height": self.size, "width": self.size}
            return {**common, "size": size, "image_processor_type": "ViTImageProcessor"}
        if self.size < 384 and self.interpolation in ("bilinear", "bicubic"):
            return {
                **common,
                "size": {"shortest_edge": self.size},
                "crop_pct": self.size / (self.resize_size + 0.5),
                "image_processor_type": "ConvNextImageProcessorFast",
            }
        return {
            **common,
            "size": {"shortest_edge": self.resize_size},
            "do_center_crop": True,
            "crop_size": {"height": self.size, "width": self.size},
            "image_processor_type": "CLIPImageProcessor",
        }


def _normalisation_table(spec: PreprocessSpec) -> np.ndarray:
    """A (3, 256) float32 table: uint8 value -> normalised value, per channel.

    Computed in the same float32 order as torchvision (``x / 255``, then ``(x - mean) / std``),
    so the lookup is bit-identical to ``ToTensor`` + ``Normalize`` and costs one gather.
    """
    values = np.arange(256, dtype=np.float32) * np.float32(spec.rescale_factor)
    if abs(spec.rescale_factor - 1 / 255) < 1e-12:
        values = np.arange(256, dtype=np.float32) / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None]
    return np.ascontiguousarray((values[None, :] - mean) / std)


def resized_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(width, height) after the resize step, computed as torchvision does it."""
    if spec.resize_mode == "squash":
        return spec.size, spec.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


# Above this many pixels, the resized-then-cropped intermediate is not built (a 1x10000 scan
# would need 224 x 2,240,000 pixels); only the part that survives the crop is resampled.
MAX_RESIZED_PIXELS = 25_000_000


def resize_and_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize with Pillow and centre-crop: an RGB PIL image -> (size, size, 3) uint8 array."""
    if image.mode != "RGB":
        raise PreprocessError(f"expected an RGB image, got mode {image.mode!r}")
    target = resized_size(*image.size, spec)
    if spec.resize_mode == "shortest_edge" and target[0] * target[1] > MAX_RESIZED_PIXELS:
        return _resize_crop_region(image, spec, target)
    if target != image.size:
        image = image.resize(target, INTERPOLATIONS[spec.interpolation])
    pixels = np.asarray(image)
    if spec.resize_mode == "squash":
        return pixels
    return _center_crop(pixels, spec.size)


def _resize_crop_region(image: Image.Image, spec: PreprocessSpec, target: tuple[int, int]) -> np.ndarray:
    """Resample only the source region that the centre crop keeps. Pillow places output pixel
    centres at ``box0 + (i + 0.5) * scale`` with filter taps clipped to the whole image, so this
    matches resize-then-crop to within one 8-bit level (the box origin rounds differently)."""
    width, height = target
    left, top = round((width - spec.size) / 2.0), round((height - spec.size) / 2.0)
    scale_x, scale_y = image.width / width, image.height / height
    box = (left * scale_x, top * scale_y, (left + spec.size) * scale_x, (top + spec.size) * scale_y)
    resized = image.resize((spec.size, spec.size), INTERPOLATIONS[spec.interpolation], box=box)
    return np.asarray(resized)


def _center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if size > height or size > width:
        # torchvision pads with zeros before cropping when the crop is larger than the image.
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        pads = ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        pixels = np.pad(pixels, pads)
        height, width = pixels.shape[:2]
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return pixels[top : top + size, left : left + size]


def normalise(pixels: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, normalised; written into ``out`` when given."""
    if out is None:
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    table = spec._lut
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def preprocess(image: Image.Image, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB PIL image -> the model's (3, size, size) float32 input."""
    return normalise(resize_and_crop(image, spec), spec, out=out)


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Several RGB PIL images -> one (N, 3, size, size) float32 batch, without extra copies."""
    batch = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for index, image in enumerate(images):
        preprocess(image, spec, out=batch[index])
    return batch

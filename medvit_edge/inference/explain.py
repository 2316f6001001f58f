"""Where the model looked: attention rollout heat maps over the frame, numpy + Pillow only.

    explainer = Explainer.load("run/onnx/model.explain.onnx")     # export --explain
    grid = explainer.heat_maps([image])[0]                       # (g, g), sums to 1
    write_overlay("scan.overlay.png", image, grid, explainer.spec, ["malignant 0.91"])

``model.explain.onnx`` is the fp32 graph with every encoder layer's attention probabilities as
extra outputs ``attentions.0 ... attentions.L-1``, each ``(N, heads, T, T)`` (export/explain.py);
the classifier that is deployed stays lean.

**Attention rollout** (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020):
per layer, average the heads, add the identity for the residual connection and renormalise the
rows, ``Â = (mean_h A + I) / rowsum``; multiply through the layers, ``R = Â_L ... Â_1``; the
class token's row of ``R`` over the patch tokens, reshaped to the ``g x g`` patch grid
(``g = size / patch``), says how much of each patch flowed into the class token. It shows where
information came from, not why the class was chosen (no gradients: it is the same map for every
class).

The grid covers what the model saw: the centre crop of the resized frame (``shortest_edge``) or
the whole frame (``squash``). ``seen_box`` maps that square back onto the original frame's
coordinates, so the heat map is drawn where those pixels are; outside it the frame is shown as
is and the box is outlined.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medvit_edge.errors import ModelLoadError
from medvit_edge.files import atomic_writer
from medvit_edge.runtime.classifier import CHUNK, Classifier, ImageInput
from medvit_edge.runtime.images import as_rgb_image
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch, resized_size
from medvit_edge.runtime.variants import Device

__all__ = [
    "ATTENTION_OUTPUT_PREFIX",
    "Explainer",
    "attention_rollout",
    "colour_map",
    "render_overlay",
    "seen_box",
    "write_overlay",
]

ATTENTION_OUTPUT_PREFIX = "attentions."
EXPLAIN_VARIANT = "explain"
EXPLAIN_CHUNK = 4  # images per heat_maps step (their attention maps are held at once)
# Overlays are drawn at least this wide (phantoms and thumbnails are small) and at most this wide.
MIN_WIDTH, MAX_WIDTH = 384, 1280
HEAT_OPACITY = 0.6  # at the hottest patch; a patch's opacity grows with its heat
BOX_COLOUR = (0, 200, 255)
# Matplotlib's "inferno" at 9 stops (perceptually uniform, dark to bright, readable in grey):
# its values, so no plotting library is needed on a scanner.
_INFERNO = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
    """Per-layer attention probabilities, each ``(N, heads, T, T)`` (layer order) -> the class
    token's rollout over the patches, ``(N, g, g)`` float64, each map summing to 1."""
    if not attentions:
        raise ValueError("attention rollout needs at least one layer's attention probabilities")
    first = np.asarray(attentions[0])
    if first.ndim != 4 or first.shape[2] != first.shape[3]:
        raise ValueError(f"attention probabilities must be (N, heads, T, T), got {first.shape}")
    tokens = first.shape[-1]
    grid, special = patch_grid(tokens)
    identity = np.eye(tokens)
    rollout = np.broadcast_to(identity, (first.shape[0], tokens, tokens))
    for layer in attentions:
        layer = np.asarray(layer, dtype=np.float64)
        if layer.shape != first.shape:
            raise ValueError(f"layers disagree in shape: {layer.shape} vs {first.shape}")
        mixed = layer.mean(axis=1) + identity  # the residual path carries the token itself
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    cls_row = rollout[:, 0, special:]
    total = cls_row.sum(axis=1, keepdims=True)
    return (cls_row / np.where(total > 0, total, 1.0)).reshape(-1, grid, grid)


def patch_grid(tokens: int) -> tuple[int, int]:
    """``T`` tokens -> (grid side g, special tokens before the patches): ViT has one class token,
    DeiT's distilled models two (class first)."""
    grid = math.isqrt(max(tokens - 1, 0))
    special = tokens - grid * grid
    if grid < 1 or special not in (1, 2):
        raise ValueError(f"{tokens} tokens are not a class token plus a square grid of patches")
    return grid, special


class Explainer:
    """An explainability model (``export --explain``): attention maps for images."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        outputs = [output.name for output in classifier.session.get_outputs()]
        layers = {
            int(name.removeprefix(ATTENTION_OUTPUT_PREFIX)): name
            for name in outputs
            if name.startswith(ATTENTION_OUTPUT_PREFIX)
            and name.removeprefix(ATTENTION_OUTPUT_PREFIX).isdigit()
        }
        self.attention_names = [layers[layer] for layer in sorted(layers)]
        if classifier.variant != EXPLAIN_VARIANT or not self.attention_names:
            raise ModelLoadError(
                f"{classifier.path}: not an explainability model (variant {classifier.variant!r}, "
                f"no {ATTENTION_OUTPUT_PREFIX}* outputs); export with --explain"
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: Device = "auto",
        threads: int | None = None,
        verify: bool | None = None,
    ) -> Explainer:
        return cls(Classifier.load(path, device=device, threads=threads, verify=verify))

    @property
    def spec(self) -> PreprocessSpec:
        return self.classifier.spec

    @property
    def path(self) -> Path:
        return self.classifier.path

    def attentions(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Preprocessed ``(N, 3, size, size)`` float32 -> per layer ``(N, heads, T, T)``."""
        session, name = self.classifier.session, self.classifier.input_name
        parts = [
            session.run(self.attention_names, {name: pixels[start : start + CHUNK]})
            for start in range(0, len(pixels), CHUNK)
        ]
        return [np.concatenate([part[layer] for part in parts]) for layer in range(len(self.attention_names))]

    def heat_maps(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images (paths, PIL images or arrays) -> rollout maps ``(N, g, g)``, each summing to 1.
        A few at a time: a ViT-B/16's attention maps take 22 MB per image."""
        if not images:
            raise ValueError("heat_maps needs at least one image")
        grids = []
        for start in range(0, len(images), EXPLAIN_CHUNK):
            chunk = [as_rgb_image(image) for image in images[start : start + EXPLAIN_CHUNK]]
            grids.append(attention_rollout(self.attentions(preprocess_batch(chunk, self.spec))))
        return np.concatenate(grids)


def seen_box(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """The square the model saw, ``(left, top, right, bottom)`` in the original frame's pixel
    coordinates: the centre crop of the resized frame (zero padding, when the resized frame is
    smaller than the crop, lies outside the frame), or the whole frame for ``squash``."""
    if spec.resize_mode == "squash":
        return 0.0, 0.0, float(width), float(height)
    resized_w, resized_h = resized_size(width, height, spec)
    left, top = _crop_start(resized_w, spec.size), _crop_start(resized_h, spec.size)
    sx, sy = width / resized_w, height / resized_h
    return left * sx, top * sy, (left + spec.size) * sx, (top + spec.size) * sy


def _crop_start(length: int, size: int) -> int:
    """preprocess._center_crop's offset along one axis (negative: padding before the frame)."""
    if length < size:
        return -((size - length) // 2)
    return round((length - size) / 2.0)


def heat_on_frame(
    grid: np.ndarray, box: tuple[float, float, float, float], width: int, height: int
) -> np.ndarray:
    """The ``g x g`` map bilinearly upsampled onto a ``height x width`` raster of the frame
    (``box`` in that raster's pixels); NaN outside the box."""
    left, top, right, bottom = box
    rows = _interpolation(height, top, bottom, grid.shape[0])
    cols = _interpolation(width, left, right, grid.shape[1])
    heat = rows @ grid @ cols.T
    inside_y = _inside(height, top, bottom)
    inside_x = _inside(width, left, right)
    return np.where(inside_y[:, None] & inside_x[None, :], heat, np.nan)


def _interpolation(length: int, start: float, stop: float, cells: int) -> np.ndarray:
    """``(length, cells)`` weights: pixel centres -> linear interpolation between cell centres."""
    centres = (np.arange(length) + 0.5 - start) / ((stop - start) / cells) - 0.5
    position = np.clip(centres, 0, cells - 1)
    lower = np.minimum(np.floor(position).astype(int), cells - 1)
    upper = np.minimum(lower + 1, cells - 1)
    weight = position - lower
    matrix = np.zeros((length, cells))
    matrix[np.arange(length), lower] += 1 - weight
    matrix[np.arange(length), upper] += weight
    return matrix


def _inside(length: int, start: float, stop: float) -> np.ndarray:
    centres = np.arange(length) + 0.5
    return (centres >= start) & (centres <= stop)


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (``shape + (3,)``), the inferno colour map."""
    stops = np.linspace(0.0, 1.0, len(_INFERNO))
    clipped = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    channels = [np.interp(clipped, stops, _INFERNO[:, channel]) for channel in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def stretch(heat: np.ndarray) -> np.ndarray:
    """Heat -> [0, 1] between its coldest and hottest values (NaN -> 0). A rollout map is nearly
    flat (the residual path keeps most of each token), so only its contrast is drawn."""
    finite = heat[np.isfinite(heat)]
    if finite.size == 0:
        return np.zeros_like(heat)
    low, high = float(finite.min()), float(finite.max())
    scaled = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    return np.nan_to_num(scaled, nan=0.0)


def render_overlay(
    frame: ImageInput, grid: np.ndarray, spec: PreprocessSpec, caption: Sequence[str]
) -> Image.Image:
    """The frame with the heat map blended over the region the model saw (outlined when it is not
    the whole frame) and a caption band below: ``caption[0]`` large, further lines smaller."""
    image = as_rgb_image(frame)
    box = seen_box(image.width, image.height, spec)
    scale = min(max(1.0, MIN_WIDTH / image.width), MAX_WIDTH / image.width) if image.width else 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image
    scaled_box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
    level = stretch(heat_on_frame(np.asarray(grid, dtype=np.float64), scaled_box, *size))
    alpha = (HEAT_OPACITY * level)[..., None]
    blended = np.asarray(shown, dtype=np.float64) * (1 - alpha) + colour_map(level) * alpha
    picture = Image.fromarray(np.rint(blended).astype(np.uint8), "RGB")
    if scaled_box != (0.0, 0.0, float(size[0]), float(size[1])):
        outline = [round(v) for v in scaled_box]
        ImageDraw.Draw(picture).rectangle(outline, outline=BOX_COLOUR, width=max(1, size[0] // 300))
    return _with_caption(picture, caption)


def _with_caption(picture: Image.Image, caption: Sequence[str]) -> Image.Image:
    big = max(14, picture.width // 24)
    small = max(11, picture.width // 40)
    fonts = [ImageFont.load_default(size=big if i == 0 else small) for i in range(len(caption))]
    heights = [round((big if i == 0 else small) * 1.35) for i in range(len(caption))]
    pad = max(4, big // 3)
    canvas = Image.new("RGB", (picture.width, picture.height + sum(heights) + 2 * pad), (16, 16, 16))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + pad
    for line, font, height in zip(caption, fonts, heights):
        draw.text((pad, y), line, fill=(255, 255, 255), font=font)
        y += height
    return canvas


def write_overlay(
    path: str | os.PathLike[str],
    frame: ImageInput,
    grid: np.ndarray,
    spec: PreprocessSpec,
    caption: Sequence[str],
) -> Path:
    """``render_overlay`` written as a PNG, atomically (the old file or the whole new one)."""
    picture = render_overlay(frame, grid, spec, caption)
    with atomic_writer(path, "wb") as handle:
        picture.save(handle, format="PNG")
    return Path(path)

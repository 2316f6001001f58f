"""Synthetic ultrasound-like "phantom" images, so the whole pipeline runs with no download.

Three classes a small model can learn, drawn over Rayleigh speckle in a scan-sector fan:

* ``normal``: layered tissue, no lesion;
* ``benign``: a smooth oval hypoechoic (dark) lesion with posterior acoustic enhancement;
* ``malignant``: an irregular, spiculated hypoechoic lesion with posterior acoustic shadowing.

Image sizes vary (as real scans do), so resizing and cropping are exercised too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

PHANTOM_LABELS = ("benign", "malignant", "normal")


def _tissue(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    depth = np.linspace(0.0, 1.0, height)[:, None]
    layers = 0.12 * np.sin(depth * rng.uniform(8, 16) + rng.uniform(0, 2 * np.pi))
    wobble = 0.05 * np.sin(np.linspace(0, rng.uniform(2, 6), width)[None, :] + rng.uniform(0, 6))
    return 0.55 + layers + wobble - 0.2 * depth


def _lesion(
    height: int, width: int, label: str, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, float]:
    """Returns (inside mask in 0..1, centre x, lower edge y, radius) of the lesion."""
    cy, cx = rng.uniform(0.35, 0.6) * height, rng.uniform(0.3, 0.7) * width
    radius = rng.uniform(0.14, 0.22) * min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    stretch = rng.uniform(1.2, 1.6) if label == "benign" else rng.uniform(0.9, 1.1)
    dy, dx = (yy - cy) * stretch, xx - cx
    dist, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    if label == "benign":
        edge = radius * (1 + 0.04 * np.sin(2 * theta + rng.uniform(0, 6)))
        inside = 1 / (1 + np.exp((dist - edge) / 1.5))  # smooth, well-defined margin
    else:
        spikes = sum(
            rng.uniform(0.12, 0.25) * np.sin(k * theta + rng.uniform(0, 6))
            for k in rng.choice(np.arange(5, 13), size=3, replace=False)
        )
        inside = (dist < radius * (1 + spikes)).astype(np.float64)  # jagged margin
    return inside, cx, cy + radius / stretch, radius


def make_phantom(label: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One (height, width) uint8 grey phantom image of the given class."""
    echo = _tissue(height, width, rng)
    if label != "normal":
        inside, cx, bottom, radius = _lesion(height, width, label, rng)
        echo = echo * (1 - 0.8 * inside)
        yy, xx = np.mgrid[0:height, 0:width]
        below = (yy > bottom) & (np.abs(xx - cx) < radius * 0.9)
        fade = np.exp(-(yy - bottom) / (0.6 * height))
        factor = 1.45 if label == "benign" else 0.25  # enhancement vs shadowing
        echo = np.where(below, echo * (1 + (factor - 1) * fade), echo)
    speckle = rng.rayleigh(scale=0.8, size=(height + 1, width + 1))
    speckle = (speckle[:-1, :-1] + speckle[1:, :-1] + speckle[:-1, 1:] + speckle[1:, 1:]) / 4
    image = np.clip(echo * speckle * 255, 0, 255)
    return (image * _sector_mask(height, width)).astype(np.uint8)


def _sector_mask(height: int, width: int) -> np.ndarray:
    """The fan shape of a curvilinear probe: black outside the scanned sector."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    apex_y = -0.15 * height
    angle = np.arctan2(xx - width / 2, yy - apex_y)
    return (np.abs(angle) < 0.75).astype(np.float64)


def generate_phantom_dataset(
    output: Path, train_per_class: int = 200, test_per_class: int = 40, seed: int = 0
) -> Path:
    """Write ``train/<class>/*.png``, ``test/<class>/*.png`` and ``split.csv``; return the CSV."""
    rng = np.random.default_rng(seed)
    records = []
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in PHANTOM_LABELS:
            folder = output / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                height, width = int(rng.integers(96, 180)), int(rng.integers(110, 200))
                pixels = make_phantom(label, height, width, rng)
                name = f"{label}_{index:04d}.png"
                Image.fromarray(pixels).save(folder / name)
                records.append((f"{split}/{label}/{name}", label, split))
    split_csv = output / "split.csv"
    with open(split_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(records)
    return split_csv

"""Near-duplicate images by content: the difference hash that training's duplicate-aware split
uses, and evaluate's check that an external labelled set is not the run's own training images.

A public copy of a data set often holds the same images as the copy a model was trained on
(BUSI's original-size release: 112 of 149 images were training images by content); scores on
them say how well the model remembers, not how it does on new patients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.runtime.images import ImageDecodeError

logger = logging.getLogger(__name__)
DEFAULT_DISTANCE = 45  # TrainConfig.duplicate_hash_distance: 16x16 dHash bits that may differ


def dhash(image: Image.Image, hash_size: int = 16) -> np.ndarray:
    """Difference hash: ``hash_size**2`` bits saying whether each pixel is brighter than its left."""
    grey = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.int16)
    return (pixels[:, 1:] > pixels[:, :-1]).ravel()


def hamming_matrix(hashes: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Bits that differ between every pair of rows (``hashes`` x ``others``, or with itself)."""
    bits = hashes.astype(np.float32)
    other = bits if others is None else others.astype(np.float32)
    return (bits @ (1 - other).T + (1 - bits) @ other.T).astype(np.int32)


def training_overlap(run_dir: Path, keys: Sequence[str], images: Sequence[Image.Image]) -> dict[str, Any]:
    """Which of ``images`` are near-duplicates of the run's train or validation images (split.csv,
    hashed again where the files are still there); {} when there is nothing to compare with."""
    from medvit_edge.io.labelled import read_labelled_set
    from medvit_edge.io.reader import read_labelled_image

    split_csv = run_dir / "split.csv"
    if not split_csv.is_file() or not images:
        return {}
    seen = [i for i in read_labelled_set(split_csv) if i.split in ("train", "validation")]
    hashes = []
    for item in seen:
        try:
            hashes.append(dhash(read_labelled_image(item.path, item.frame)))
        except (ImageDecodeError, OSError):
            continue  # moved or deleted since training: compared with those still there
    if not hashes:
        return {}
    distance = _distance(run_dir)
    near = hamming_matrix(np.stack([dhash(image) for image in images]), np.stack(hashes)) <= distance
    found = [key for key, row in zip(keys, near) if row.any()]
    return {
        "images": len(found),
        "of": len(images),
        "compared_with": len(hashes),
        "distance": distance,
        "examples": found[:10],
    }


def overlap_warning(overlap: dict[str, Any], data: object) -> str | None:
    if not overlap.get("images"):
        return None
    return (
        f"warning: {overlap['images']} of {overlap['of']} images of {data} are near-duplicates of "
        f"the run's training/validation images (dHash distance <= {overlap['distance']}; e.g. "
        f"{overlap['examples'][0]}): their scores overstate how the model does on new images"
    )


def _distance(run_dir: Path) -> int:
    """The run's own near-duplicate threshold (train_config.json), else training's default."""
    try:
        value = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))
        return int(value.get("duplicate_hash_distance", DEFAULT_DISTANCE))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_DISTANCE

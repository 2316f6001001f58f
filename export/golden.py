"""Golden files: a few images with what every exported variant gives on them.

``onnx/golden/`` travels with the deployed files, so by default its images are **synthetic
phantoms** (``medvit_edge.io.phantom``: speckle, a scan sector, a lesion or none), never patient
pixels: ultrasound burns names, dates and IDs into the image itself, which no metadata stripping
removes. Real validation images are written only when ``--golden-images N`` asks for them (the
model card then says so); ``--golden-images 0`` writes no golden files.

The folder holds, for each image, the decoded RGB pixels as a PNG and as a uint8 ``.npy`` array
(exactly what a raw-input file takes), the exact preprocessed float32 tensor of all of them
(``pixel_values.npy``, what the numpy-path files take), and ``golden.json``: where the images
come from (``source``), and per variant name its file, sha256, input kind, tolerance and expected
probabilities. A native integration can check its own decoding, preprocessing and inference
number by number against them; ``medvit-edge check`` (medvit_edge/deploy/golden.py) re-runs them on a
new device. ``golden.json``'s sha256 is in ``manifest.json``.

Images are named ``image-N`` (never by their source file name, which may identify a patient)
and the PNGs carry no metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.deploy.golden import GOLDEN_FOLDER, GOLDEN_FORMAT, GOLDEN_INDEX, PIXEL_VALUES_FILE
from medvit_edge.files import sha256_file
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import GoldenRecord, Manifest, VariantRecord
from medvit_edge.runtime.preprocess import preprocess_batch
from medvit_edge.runtime.variants import VARIANTS

from .context import ExportContext

logger = logging.getLogger(__name__)


PHANTOM_SEED = 2024
PHANTOM_SHAPES = ((300, 380), (340, 300), (280, 420))  # (height, width): resize and crop exercised


def choose_golden_frames(ctx: ExportContext) -> None:
    """Pick the golden images before any variant is built, so each variant's expectations come
    from the same loaded file that was validated (``expected``): synthetic phantoms unless real
    validation images are asked for by number; none for ``--golden-images 0``."""
    count, validation = ctx.cfg.golden_images, ctx.validation
    if count is None:
        ctx.golden_frames, ctx.golden_source = phantom_frames(), "phantom"
        ctx.golden_labels = [None] * len(ctx.golden_frames)
        return
    picks = pick_images(validation.label_ids, len(validation.frames), count)
    ctx.golden_frames = [np.ascontiguousarray(validation.frames[i], dtype=np.uint8) for i in picks]
    ids = validation.label_ids
    ctx.golden_labels = [ctx.labels[int(ids[i])] if ids is not None else None for i in picks]
    ctx.golden_source = "validation"


def phantom_frames() -> list[np.ndarray]:
    """Synthetic ultrasound-like RGB images (one of each phantom kind), the same for every export."""
    from medvit_edge.io.phantom import PHANTOM_LABELS, make_phantom

    rng = np.random.default_rng(PHANTOM_SEED)
    frames = []
    for kind, (height, width) in zip(PHANTOM_LABELS, PHANTOM_SHAPES):
        grey = make_phantom(kind, height, width, rng)
        frames.append(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))
    return frames


def write_golden(ctx: ExportContext, manifest: Manifest) -> Manifest:
    """Write ``OUTPUT/golden/`` (replacing an earlier one whole) and return the manifest with its
    record; the manifest is returned unchanged when no golden images are asked for."""
    output = ctx.cfg.output
    assert output is not None
    if not ctx.golden_frames:
        return manifest
    scratch = Path(tempfile.mkdtemp(prefix=".golden-", dir=output))
    try:
        index = _write_files(scratch, ctx.golden_frames, ctx.golden_labels, ctx)
        index["source"] = ctx.golden_source
        index["variants"] = {
            r.variant: {**ctx.golden_expected[r.variant], "sha256": r.sha256, "status": r.status}
            for r in manifest.variants
        }
        _write_index(scratch / GOLDEN_INDEX, index)
        _swap_in(scratch, output / GOLDEN_FOLDER)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = GoldenRecord(
        folder=GOLDEN_FOLDER,
        index=GOLDEN_INDEX,
        sha256=sha256_file(output / GOLDEN_FOLDER / GOLDEN_INDEX),
        images=len(ctx.golden_frames),
        variants=tuple(index["variants"]),
        source=ctx.golden_source,
    )
    count = len(ctx.golden_frames)
    logger.info("golden files: %d %s images, %d variants", count, ctx.golden_source, len(record.variants))
    return replace(manifest, golden=record)


def pick_images(label_ids: np.ndarray | None, total: int, count: int) -> list[int]:
    """Up to ``count`` validation images, one per class in turn (validation order within a class)."""
    if label_ids is None:
        return list(range(min(count, total)))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(label_ids[:total]):
        by_class.setdefault(int(label), []).append(index)
    queues = [by_class[label] for label in sorted(by_class)]
    picks: list[int] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picks += [queue[rank] for queue in queues if rank < len(queue)]
    return picks[:count]


def _write_files(
    folder: Path, frames: list[np.ndarray], labels: list[str | None], ctx: ExportContext
) -> dict[str, Any]:
    """The images (PNG + uint8 array) and the preprocessed tensor; returns the index so far."""
    images = []
    for number, (frame, label) in enumerate(zip(frames, labels)):
        name = f"image-{number}"
        Image.fromarray(frame, "RGB").save(folder / f"{name}.png")
        np.save(folder / f"{name}.npy", frame, allow_pickle=False)
        images.append(
            {
                "name": name,
                "png": f"{name}.png",
                "array": f"{name}.npy",
                "shape": list(frame.shape),
                "label": label,
                "png_sha256": sha256_file(folder / f"{name}.png"),
                "array_sha256": sha256_file(folder / f"{name}.npy"),
            }
        )
    pixels = preprocess_batch([Image.fromarray(frame, "RGB") for frame in frames], ctx.spec)
    np.save(folder / PIXEL_VALUES_FILE, pixels, allow_pickle=False)
    return {
        "format": GOLDEN_FORMAT,
        "labels": list(ctx.labels),
        "preprocess": ctx.spec.to_dict(),
        "created": ctx.created,
        "images": images,
        "pixel_values": {
            "file": PIXEL_VALUES_FILE,
            "shape": list(pixels.shape),
            "dtype": "float32",
            "sha256": sha256_file(folder / PIXEL_VALUES_FILE),
        },
    }


def expected(classifier: Classifier, record: VariantRecord, frames: list[np.ndarray]) -> dict[str, Any]:
    """What the file gives on the golden images through the runtime (as users run it)."""
    probabilities = classifier.predict_proba([Image.fromarray(frame, "RGB") for frame in frames])
    return {
        "file": record.file,
        "sha256": record.sha256,
        "status": record.status,
        "input": classifier.metadata.input,
        "tolerance": VARIANTS[record.variant].check_tolerance,
        "probabilities": [[float(p) for p in row] for row in probabilities],
        "top1": [classifier.labels[int(i)] for i in probabilities.argmax(axis=1)],
    }


def _write_index(path: Path, index: dict[str, Any]) -> None:
    # float32 values written as Python floats: repr round-trips, so the numbers are exact
    path.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` with the finished folder ``new``: a reader sees the old golden files or
    the new ones, never a mix."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)

"""Every variant is checked against the PyTorch fp32 model on the same real images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.evaluation.metrics import classification_metrics
from medvit_edge.io.labelled import LabelledImage, read_labelled_set
from medvit_edge.io.reader import read_labelled_image
from medvit_edge.runtime.images import ImageDecodeError
from medvit_edge.runtime.manifest import Validation
from medvit_edge.runtime.policy import softmax
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch
from medvit_edge.runtime.variants import Tolerance

from .config import ExportConfig

logger = logging.getLogger(__name__)


@dataclass
class ValidationSet:
    """Preprocessed images (exactly what the runtime feeds), with labels where known."""

    pixels: np.ndarray
    keys: list[str]
    label_ids: np.ndarray | None  # None when the images carry no labels
    source: str
    # the decoded RGB uint8 (H, W, 3) images the pixels came from: what raw-input files take
    frames: list[np.ndarray] = field(default_factory=list)


def choose_images(
    cfg: ExportConfig, split: str, explicit: Path | None, explicit_split: str | None, option: str = "--data"
) -> list[LabelledImage]:
    """``explicit`` (a CSV or class folders) when given, else this split of the run's split.csv.
    Calibration (``split`` "train", ``option`` "--calibration-data") without a split.csv takes
    the ``train`` rows of ``--data`` when it has some; an error names the option to give."""
    if explicit is not None:
        images = read_labelled_set(explicit, explicit_split)
        if not images:
            raise UserError(
                f"{explicit}: no labelled images"
                + (f" in split {explicit_split!r}" if explicit_split else "")
            )
        return images
    run_split = cfg.run_dir / "split.csv"
    if not run_split.is_file():
        borrowed = _train_rows_of_data(cfg) if split == "train" else []
        if borrowed:
            logger.info("calibration: the %d train rows of --data %s", len(borrowed), cfg.data)
            return borrowed
        raise UserError(
            f"{cfg.run_dir}: no split.csv to take {split} images from; pass {option} with labelled images"
            + (f" (--data {cfg.data} has no rows of split 'train')" if split == "train" and cfg.data else "")
        )
    images = [i for i in read_labelled_set(run_split, split) if i.path.is_file()]
    if not images:
        raise UserError(f"{run_split}: no readable {split} images; pass {option}")
    return images


def _train_rows_of_data(cfg: ExportConfig) -> list[LabelledImage]:
    if cfg.data is None or cfg.data_split == "train":  # never calibrate on what is validated
        return []
    try:
        return [i for i in read_labelled_set(cfg.data, "train") if i.path.is_file()]
    except UserError:
        return []


def load_validation_set(cfg: ExportConfig, spec: PreprocessSpec, labels: list[str]) -> ValidationSet:
    images = choose_images(cfg, "validation", cfg.data, cfg.data_split)
    if cfg.max_validation_images:
        images = images[: cfg.max_validation_images]
    decoded, kept = [], []
    for image in images:
        try:
            decoded.append(read_labelled_image(image.path, image.frame))  # DICOM too
            kept.append(image)
        except ImageDecodeError as exc:
            logger.warning("skipping validation image: %s", exc)
    if not kept:
        raise UserError(f"{cfg.data or cfg.run_dir / 'split.csv'}: no validation image could be read")
    index = {label: i for i, label in enumerate(labels)}
    labelled = all(image.label in index for image in kept)
    label_ids = np.array([index[i.label] for i in kept]) if labelled else None
    source = str(cfg.data or cfg.run_dir / "split.csv")
    frames = [np.asarray(image) for image in decoded]
    return ValidationSet(preprocess_batch(decoded, spec), [i.key for i in kept], label_ids, source, frames)


def torch_logits(model: Any, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start : start + batch_size])
            outputs.append(model(pixel_values=batch).logits.float().numpy())
    return np.concatenate(outputs)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    label_ids: np.ndarray | None,
    labels: list[str],
    tolerance: Tolerance,
    guard_classes: tuple[str, ...],
) -> Validation:
    """Parity numbers and a pass/fail verdict with the reasons for a failure."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    max_diff = float(np.abs(reference - candidate).max()) if np.isfinite(candidate).all() else float("inf")
    agreement = float((ref_top == cand_top).mean())
    probability_diff = _max_probability_diff(reference, candidate)
    failures = []
    if not np.isfinite(candidate).all():
        failures.append("outputs are not finite (NaN or infinity)")
    elif tolerance.max_abs_logit is not None and max_diff > tolerance.max_abs_logit:
        failures.append(f"max |Δlogit| {max_diff:.2e} > {tolerance.max_abs_logit:.0e}")
    elif tolerance.max_abs_probability is not None and probability_diff > tolerance.max_abs_probability:
        failures.append(f"max |Δprobability| {probability_diff:.3f} > {tolerance.max_abs_probability}")
    if agreement < tolerance.min_agreement:
        failures.append(f"top-1 agreement {agreement:.2%} < {tolerance.min_agreement:.0%}")
    accuracy: dict[str, Any] = {}
    if label_ids is not None:
        accuracy, more = _accuracy_checks(ref_top, cand_top, label_ids, labels, tolerance, guard_classes)
        failures += more
    return Validation(
        images=len(reference),
        max_abs_logit_diff=max_diff,
        top1_agreement=agreement,
        disagreements=int((ref_top != cand_top).sum()),
        tolerance=tolerance.to_dict(),
        failures=tuple(failures),
        max_abs_probability_diff=probability_diff,
        **accuracy,
    )


def _max_probability_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    if not np.isfinite(candidate).all():
        return float("inf")
    with np.errstate(over="ignore"):
        return float(np.abs(softmax(reference) - softmax(candidate)).max())


def _accuracy_checks(
    ref_top: np.ndarray,
    cand_top: np.ndarray,
    label_ids: np.ndarray,
    labels: list[str],
    tolerance: Tolerance,
    guard_classes: tuple[str, ...],
) -> tuple[dict[str, Any], list[str]]:
    ref = classification_metrics(label_ids, ref_top, labels)
    cand = classification_metrics(label_ids, cand_top, labels)
    numbers = {
        "accuracy": cand["accuracy"],
        "pytorch_accuracy": ref["accuracy"],
        "recall": {label: cand["per_class"][label]["recall"] for label in labels},
        "pytorch_recall": {label: ref["per_class"][label]["recall"] for label in labels},
    }
    failures = []
    drop = ref["accuracy"] - cand["accuracy"]
    if tolerance.max_accuracy_drop is not None and drop > tolerance.max_accuracy_drop + 1e-9:
        failures.append(
            f"accuracy {cand['accuracy']:.3f} is {drop:.3f} below PyTorch's {ref['accuracy']:.3f}"
        )
    for label in (g for g in guard_classes if g in labels):
        recall_drop = numbers["pytorch_recall"][label] - numbers["recall"][label]
        if tolerance.max_recall_drop is not None and recall_drop > tolerance.max_recall_drop + 1e-9:
            failures.append(
                f"{label} recall {numbers['recall'][label]:.3f} is {recall_drop:.3f} below PyTorch's"
            )
    return numbers, failures

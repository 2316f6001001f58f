"""Every variant is checked against the PyTorch fp32 model on the same real images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.images import ImageDecodeError, load_image
from medvit_edge.labelled import LabelledImage, read_labelled_set
from medvit_edge.metrics import classification_metrics
from medvit_edge.preprocess import PreprocessSpec, preprocess_batch

from .config import ExportConfig, Tolerance


@dataclass
class ValidationSet:
    """Preprocessed images (exactly what the runtime feeds), with labels where known."""

    pixels: np.ndarray
    keys: list[str]
    label_ids: np.ndarray | None  # None when the images carry no labels
    source: str


def choose_images(
    cfg: ExportConfig, split: str, explicit: Path | None, explicit_split: str | None
) -> list[LabelledImage]:
    """``explicit`` (a CSV or class folders) when given, else this split of the run's split.csv."""
    if explicit is not None:
        return read_labelled_set(explicit, explicit_split)
    run_split = cfg.run_dir / "split.csv"
    if not run_split.is_file():
        raise FileNotFoundError(
            f"{cfg.run_dir}: no split.csv to take {split} images from; pass --data with labelled images"
        )
    images = [i for i in read_labelled_set(run_split, split) if i.path.is_file()]
    if not images:
        raise FileNotFoundError(f"{run_split}: no readable {split} images; pass --data")
    return images


def load_validation_set(cfg: ExportConfig, spec: PreprocessSpec, labels: list[str]) -> ValidationSet:
    images = choose_images(cfg, "validation", cfg.data, cfg.data_split)
    if cfg.max_validation_images:
        images = images[: cfg.max_validation_images]
    decoded, kept = [], []
    for image in images:
        try:
            decoded.append(load_image(image.path))
            kept.append(image)
        except ImageDecodeError as exc:
            print(f"skipping validation image: {exc}")
    if not kept:
        raise ValueError("no validation image could be read")
    index = {label: i for i, label in enumerate(labels)}
    labelled = all(image.label in index for image in kept)
    label_ids = np.array([index[i.label] for i in kept]) if labelled else None
    source = str(cfg.data or cfg.run_dir / "split.csv")
    return ValidationSet(preprocess_batch(decoded, spec), [i.key for i in kept], label_ids, source)


def torch_logits(model: Any, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start : start + batch_size])
            outputs.append(model(pixel_values=batch).logits.float().numpy())
    return np.concatenate(outputs)


def onnx_logits(path: Path, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: pixels[s : s + batch_size]})[0] for s in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    label_ids: np.ndarray | None,
    labels: list[str],
    tolerance: Tolerance,
    guard_classes: tuple[str, ...],
) -> dict[str, Any]:
    """Parity numbers and a pass/fail verdict with the reasons for a failure."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    result: dict[str, Any] = {
        "images": len(reference),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((ref_top == cand_top).mean()),
        "disagreements": int((ref_top != cand_top).sum()),
    }
    failures = []
    if tolerance.max_abs_logit is not None and result["max_abs_logit_diff"] > tolerance.max_abs_logit:
        failures.append(f"max |Δlogit| {result['max_abs_logit_diff']:.2e} > {tolerance.max_abs_logit:.0e}")
    if result["top1_agreement"] < tolerance.min_agreement:
        failures.append(f"top-1 agreement {result['top1_agreement']:.2%} < {tolerance.min_agreement:.0%}")
    if label_ids is not None:
        failures += _accuracy_checks(result, ref_top, cand_top, label_ids, labels, tolerance, guard_classes)
    result["tolerance"] = {k: v for k, v in vars(tolerance).items() if v is not None}
    result["passed"] = not failures
    result["failures"] = failures
    return result


def _accuracy_checks(
    result: dict[str, Any],
    ref_top: np.ndarray,
    cand_top: np.ndarray,
    label_ids: np.ndarray,
    labels: list[str],
    tolerance: Tolerance,
    guard_classes: tuple[str, ...],
) -> list[str]:
    ref = classification_metrics(label_ids, ref_top, labels)
    cand = classification_metrics(label_ids, cand_top, labels)
    result["accuracy"], result["pytorch_accuracy"] = cand["accuracy"], ref["accuracy"]
    result["recall"] = {label: cand["per_class"][label]["recall"] for label in labels}
    result["pytorch_recall"] = {label: ref["per_class"][label]["recall"] for label in labels}
    failures = []
    drop = ref["accuracy"] - cand["accuracy"]
    if tolerance.max_accuracy_drop is not None and drop > tolerance.max_accuracy_drop + 1e-9:
        failures.append(
            f"accuracy {cand['accuracy']:.3f} is {drop:.3f} below PyTorch's {ref['accuracy']:.3f}"
        )
    for label in (g for g in guard_classes if g in labels):
        recall_drop = result["pytorch_recall"][label] - result["recall"][label]
        if tolerance.max_recall_drop is not None and recall_drop > tolerance.max_recall_drop + 1e-9:
            failures.append(
                f"{label} recall {result['recall'][label]:.3f} is {recall_drop:.3f} below PyTorch's"
            )
    return failures

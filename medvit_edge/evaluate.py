"""``medvit-edge evaluate``: every variant side by side on the same labelled images.

All variants see the same numpy-preprocessed tensors; the PyTorch model (when torch is
installed) is the reference for parity, else the fp32 ONNX file is.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.files import read_manifest
from medvit_edge.images import ImageDecodeError, load_image
from medvit_edge.labelled import LabelledImage, read_labelled_set
from medvit_edge.metrics import auc_one_vs_rest, bootstrap_ci, calibration, classification_metrics, softmax
from medvit_edge.preprocess import preprocess_batch
from medvit_edge.runtime import Classifier


@dataclass
class EvaluateConfig:
    run_dir: Path
    data: Path | None = None  # labelled set; default: the run's split.csv
    split: str | None = "test"  # which split of a split CSV (ignored for class folders)
    output: Path | None = None  # default: RUN_DIR/evaluation
    onnx_dir: Path | None = None  # default: RUN_DIR/onnx
    pytorch: bool = True  # include the PyTorch model when torch is installed
    threads: int | None = None
    latency_runs: int = 20
    throughput_batch: int | None = None  # default: 4 per CPU core, at most 32
    bootstrap_samples: int = 1000
    plots: bool = True

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.data = Path(self.data) if self.data else None
        self.output = Path(self.output) if self.output else self.run_dir / "evaluation"
        self.onnx_dir = Path(self.onnx_dir) if self.onnx_dir else self.run_dir / "onnx"
        if self.throughput_batch is None:
            self.throughput_batch = min(32, 4 * (os.cpu_count() or 1))


@dataclass
class _Model:
    name: str
    status: str
    size_bytes: int
    logits: Callable[[np.ndarray], np.ndarray]
    load_memory_mb: float = 0.0  # resident memory added by loading it


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate, write report.json / report.md / plots into ``cfg.output``, return the report."""
    from medvit_edge.report import write_report

    models, labels, spec = _load_models(cfg)
    images, pixels, skipped = _load_images(cfg, spec)
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index[i.label] for i in images])
    rows, all_logits = [], {}
    for model in models:
        _log(f"evaluating {model.name}")
        logits = _batched(model.logits, pixels, cfg.throughput_batch)
        all_logits[model.name] = logits
        rows.append(_row(model, logits, truth, labels, pixels, cfg))
    reference = rows[0]["variant"]
    for row in rows:
        _add_parity(row, all_logits[reference], all_logits[row["variant"]], reference)
    report = {
        "run_dir": str(cfg.run_dir),
        "data": str(cfg.data or cfg.run_dir / "split.csv"),
        "split": cfg.split,
        "images": len(images),
        "skipped": skipped,
        "labels": labels,
        "reference": reference,
        "machine": _machine(),
        "variants": rows,
        "disagreements": _disagreements(images, all_logits, reference, labels),
        "data_flags": _data_flags(images),
    }
    write_report(report, all_logits, truth, cfg.output, plots=cfg.plots)
    return report


def _load_models(cfg: EvaluateConfig) -> tuple[list[_Model], list[str], Any]:
    manifest = read_manifest(cfg.onnx_dir) or {}
    entries = manifest.get("variants") or [
        {"file": p.name, "status": "unknown"} for p in sorted(cfg.onnx_dir.glob("*.onnx"))
    ]
    if not entries:
        raise FileNotFoundError(f"{cfg.onnx_dir}: no ONNX variants; run `medvit-edge export` first")
    models = []
    for entry in entries:
        path = cfg.onnx_dir / entry["file"]
        before = _rss_mb()
        classifier = Classifier.load(path, device="cpu", threads=cfg.threads)
        loaded = max(_rss_mb() - before, 0.0)
        status = entry.get("status", "unknown")
        models.append(_Model(classifier.variant, status, path.stat().st_size, classifier.run, loaded))
    labels, spec = classifier.labels, classifier.spec
    torch_model = _pytorch_model(cfg) if cfg.pytorch else None
    if torch_model is not None:
        models.insert(0, torch_model)
    return models, labels, spec


def _pytorch_model(cfg: EvaluateConfig) -> _Model | None:
    try:
        import torch
        from transformers import AutoModelForImageClassification
    except ImportError:
        _log("torch/transformers not installed: parity is measured against the fp32 ONNX file")
        return None
    weights = sorted(cfg.run_dir.glob("*.safetensors"))
    if not weights:
        return None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    before = _rss_mb()
    model = AutoModelForImageClassification.from_pretrained(cfg.run_dir, use_safetensors=True).eval()
    loaded = max(_rss_mb() - before, 0.0)

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(pixel_values=torch.from_numpy(batch)).logits.float().numpy()

    return _Model("pytorch-fp32", "reference", sum(w.stat().st_size for w in weights), logits, loaded)


def _load_images(cfg: EvaluateConfig, spec: Any) -> tuple[list[LabelledImage], np.ndarray, list[str]]:
    source = cfg.data or cfg.run_dir / "split.csv"
    images = read_labelled_set(source)
    if cfg.split and any(i.split for i in images):
        images = [i for i in images if i.split == cfg.split]
    decoded, kept, skipped = [], [], []
    for image in images:
        try:
            decoded.append(load_image(image.path))
            kept.append(image)
        except ImageDecodeError as exc:
            skipped.append(str(exc))
    if not kept:
        raise ValueError(f"{source}: no readable labelled images (split {cfg.split!r})")
    return kept, preprocess_batch(decoded, spec), skipped


def _batched(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(pixels[s : s + batch]) for s in range(0, len(pixels), batch)]).astype(
        np.float32
    )


def _row(
    model: _Model,
    logits: np.ndarray,
    truth: np.ndarray,
    labels: list[str],
    pixels: np.ndarray,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(truth, predicted, labels)
    ci = bootstrap_ci(truth, predicted, len(labels), samples=cfg.bootstrap_samples)
    latency = _latency(model.logits, pixels, cfg.latency_runs)
    latency["memory_mb"] = model.load_memory_mb + latency.pop("run_memory_mb")
    return {
        "variant": model.name,
        "status": model.status,
        "size_mb": model.size_bytes / 1e6,
        "accuracy": metrics["accuracy"],
        "accuracy_ci": ci["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "recall": {label: metrics["per_class"][label]["recall"] for label in labels},
        "recall_ci": dict(zip(labels, ci["recall"])),
        "specificity": {label: metrics["per_class"][label]["specificity"] for label in labels},
        "auc": dict(zip(labels, auc_one_vs_rest(truth, probabilities))),
        "ece": calibration(probabilities, truth)["ece"],
        "confusion_matrix": metrics["confusion_matrix"],
        **latency,
        "throughput_batch": cfg.throughput_batch,
        "throughput_ips": _throughput(model.logits, pixels, cfg.throughput_batch),
    }


def _add_parity(row: dict[str, Any], reference: np.ndarray, logits: np.ndarray, reference_name: str) -> None:
    row["parity_reference"] = reference_name
    row["max_abs_logit_diff"] = float(np.abs(reference - logits).max())
    row["top1_agreement"] = float((reference.argmax(1) == logits.argmax(1)).mean())


def _latency(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, runs: int) -> dict[str, float]:
    """Batch-1 latency percentiles after one warm-up run, and the resident-memory growth."""
    before = _rss_mb()
    run(pixels[:1])
    times = []
    for i in range(runs):
        started = time.perf_counter()
        run(pixels[i % len(pixels) : i % len(pixels) + 1])
        times.append((time.perf_counter() - started) * 1000)
    quantiles = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return {
        "latency_p50_ms": statistics.median(times),
        "latency_p95_ms": quantiles[18],
        "run_memory_mb": max(_rss_mb() - before, 0.0),
    }


def _throughput(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> float:
    sample = np.resize(pixels, (batch, *pixels.shape[1:]))
    run(sample)
    repeats, started = 3, time.perf_counter()
    for _ in range(repeats):
        run(sample)
    return repeats * batch / (time.perf_counter() - started)


def _disagreements(
    images: list[LabelledImage], all_logits: dict[str, np.ndarray], reference: str, labels: list[str]
) -> list[dict[str, Any]]:
    """Images where a variant's label differs from the reference's, with both probabilities."""
    ref_probs = softmax(all_logits[reference])
    found = []
    for name, logits in all_logits.items():
        probs = softmax(logits)
        for i in np.nonzero(probs.argmax(1) != ref_probs.argmax(1))[0]:
            found.append(
                {
                    "variant": name,
                    "image": images[i].key,
                    "truth": images[i].label,
                    "reference_label": labels[int(ref_probs[i].argmax())],
                    "variant_label": labels[int(probs[i].argmax())],
                    "reference_probs": [round(float(p), 4) for p in ref_probs[i]],
                    "variant_probs": [round(float(p), 4) for p in probs[i]],
                }
            )
    return found


def _data_flags(images: list[LabelledImage]) -> dict[str, Any]:
    groups: dict[str, int] = {}
    for image in images:
        if image.group:
            groups[image.group] = groups.get(image.group, 0) + 1
    return {
        "label_conflict_images": [i.key for i in images if i.label_conflict],
        "duplicate_group_images": sum(n for n in groups.values() if n > 1),
        "group_column_present": bool(groups),
    }


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            return names[0]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> str:
    import platform

    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

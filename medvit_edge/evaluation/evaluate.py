"""``medvit-edge evaluate``: every variant side by side on the same labelled images.

All variants see the same numpy-preprocessed tensors and run through ``Classifier`` (the path
users run); raw-input files (``export --raw-input``) get the decoded RGB images themselves, so
their latency and throughput include their in-graph preprocessing. The PyTorch model (when
torch is installed) is the reference for parity, else the fp32 ONNX file is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.evaluation.decision_report import (
    VariantDecisions,
    describe_policy,
    disagreements,
    evaluate_policy,
    proportion,
)
from medvit_edge.evaluation.metrics import (
    auc_one_vs_rest,
    bootstrap_auc_and_balanced_accuracy,
    classification_metrics,
    wilson_interval,
)
from medvit_edge.evaluation.records import EvaluationReport, VariantEvaluation
from medvit_edge.evaluation.report import write_report
from medvit_edge.io.duplicates import training_overlap
from medvit_edge.io.labelled import SPLIT_ALIASES, LabelledImage, read_labelled_set
from medvit_edge.io.reader import read_labelled_image
from medvit_edge.options import validate_literals
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.images import ImageDecodeError
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.openvino_backend import INSTALL_HINT as OPENVINO_HINT
from medvit_edge.runtime.openvino_backend import backend_installed
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch
from medvit_edge.runtime.variants import Device, file_names, tool_files
from medvit_edge.system import machine_line, rss_mb
from medvit_edge.timing import measure_latency

logger = logging.getLogger(__name__)


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
    device: Device = "cpu"  # where the ONNX files run (cpu: latencies comparable across runs)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.data = Path(self.data) if self.data else None
        self.output = Path(self.output) if self.output else self.run_dir / "evaluation"
        # a run folder's onnx/, or a folder that holds the model files itself (a hand-off)
        nested = self.run_dir / "onnx"
        models = any(self.run_dir.glob("*.onnx")) or any(self.run_dir.glob("*.xml"))
        flat = not nested.is_dir() and models
        self.onnx_dir = Path(self.onnx_dir) if self.onnx_dir else (self.run_dir if flat else nested)
        validate_literals(self)
        if self.split:
            self.split = SPLIT_ALIASES.get(self.split.strip().lower(), self.split)
        if self.throughput_batch is None:
            self.throughput_batch = min(32, 4 * (os.cpu_count() or 1))
        if self.throughput_batch < 1 or self.latency_runs < 1 or self.bootstrap_samples < 1:
            raise UserError("throughput_batch, latency_runs and bootstrap_samples must be at least 1")
        if self.threads is not None and self.threads < 1:  # torch and onnxruntime both take it
            raise UserError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class EvaluatedModel:
    """One model under evaluation: a variant file through the runtime, or the PyTorch reference."""

    name: str
    status: str
    size_bytes: int
    logits: Callable[[Any], np.ndarray]
    load_memory_mb: float = 0.0  # resident memory added by loading it
    raw: bool = False  # takes RGB uint8 (H, W, 3) images, not preprocessed tensors
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)  # the PyTorch one borrows a file's


def evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    """Evaluate, write report.json / report.md / plots into ``cfg.output``, return the report."""
    with _torch_threads(cfg.threads if cfg.pytorch else None):
        return _evaluate(cfg)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``--threads`` for PyTorch while evaluating; the calling process gets its own setting back
    (a library call must not leave a process's torch on one thread)."""
    if not threads or importlib.util.find_spec("torch") is None:  # onnxruntime takes --threads itself
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    models, labels, spec = load_models(cfg)
    images, pixels, skipped, frames, overlap = _load_images(cfg, spec, labels, any(m.raw for m in models))
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index[i.label] for i in images])
    rows, all_logits, outcomes = [], {}, {}
    for model in models:
        logger.info("evaluating %s", model.name)
        inputs = frames if model.raw else pixels
        all_logits[model.name] = model.logits(inputs).astype(np.float32)
        outcomes[model.name] = evaluate_policy(all_logits[model.name], truth, labels, model.policy)
        rows.append(_row(model, all_logits[model.name], truth, labels, inputs, cfg, outcomes[model.name]))
    reference = rows[0].variant
    for row in rows:
        _add_parity(row, all_logits[reference], all_logits[row.variant], reference)
    policies = {model.name: model.policy for model in models}
    report = EvaluationReport(
        run_dir=str(cfg.run_dir),
        data=str(cfg.data or cfg.run_dir / "split.csv"),
        split=cfg.split,
        images=len(images),
        skipped=skipped,
        labels=labels,
        reference=reference,
        machine=machine_line(),
        variants=rows,
        disagreements=_disagreements(images, all_logits, reference, labels, policies),
        data_flags=_data_flags(images),
        input_size=spec.size,
        training_overlap=overlap,
    )
    _add_decisions(report, images, all_logits, outcomes, policies)
    assert cfg.output is not None
    write_report(report, all_logits, truth, cfg.output, plots=cfg.plots, policies=policies)
    return report


def _add_decisions(
    report: EvaluationReport,
    images: list[LabelledImage],
    all_logits: dict[str, np.ndarray],
    outcomes: dict[str, VariantDecisions],
    policies: dict[str, Any],
) -> None:
    """Each variant's decisions against the fp32 file's (the deployed full-precision model;
    the reference when there is no fp32 file): how many agree, and which images differ."""
    names = [row.variant for row in report.variants]
    reference = "fp32" if "fp32" in names else report.reference
    decided = {name: outcomes[name].decisions for name in names}
    for row in report.variants:
        same = sum(a == b for a, b in zip(decided[row.variant], decided[reference]))
        assert row.decision is not None
        row.decision.agreement = proportion(same, len(images))
        row.decision.reference = reference
    report.decision_reference = reference
    report.policy = describe_policy(policies[reference], reference)  # the variant it came from
    report.policy_mismatch = [name for name in names if policies[name] != policies[reference]]
    calibrated = {name: np.asarray(policies[name].probabilities(all_logits[name])) for name in names}
    report.decision_disagreements = disagreements(
        [i.key for i in images], [i.label for i in images], decided, calibrated, reference
    )


def load_models(cfg: EvaluateConfig) -> tuple[list[EvaluatedModel], list[str], PreprocessSpec]:
    """The manifest's variants (or every known variant file in the folder), PyTorch first."""
    assert cfg.onnx_dir is not None
    if not cfg.onnx_dir.is_dir():
        raise UserError(f"{cfg.onnx_dir}: no such folder; run `medvit-edge export` first")
    manifest = Manifest.read(cfg.onnx_dir)
    if manifest is not None:
        entries = [(record.file, record.status) for record in manifest.variants]
    else:
        entries = [(name, "unknown") for name in file_names() if (cfg.onnx_dir / name).is_file()]
    entries = [(name, status) for name, status in entries if name not in tool_files()]  # not explain
    absent = [name for name, _ in entries if not (cfg.onnx_dir / name).is_file()]
    if absent:  # a deployed folder holds the files it needs, not every variant exported
        logger.info("not in %s (not evaluated): %s", cfg.onnx_dir, ", ".join(absent))
    entries = [(name, status) for name, status in entries if name not in absent]
    if not entries:
        raise UserError(f"{cfg.onnx_dir}: no ONNX variants; run `medvit-edge export` first")
    models = []
    for file_name, status in entries:
        path = cfg.onnx_dir / file_name
        if not backend_installed(path):  # an OpenVINO IR on a machine without OpenVINO
            logger.warning("%s: skipped: %s", path, OPENVINO_HINT)
            continue
        before = rss_mb()
        classifier = Classifier.load(path, device=cfg.device, threads=cfg.threads)
        loaded = max(rss_mb() - before, 0.0)
        run = classifier.run_raw if classifier.raw_input else classifier.run  # raw logits
        size = classifier.size_bytes  # an IR's .bin included
        models.append(
            EvaluatedModel(
                classifier.variant,
                status,
                size,
                run,
                loaded,
                classifier.raw_input,
                classifier.metadata.policy,
            )
        )
    if not models:
        raise UserError(f"{cfg.onnx_dir}: no variant can run here ({OPENVINO_HINT} for the IRs)")
    labels, spec = classifier.labels, classifier.spec
    torch_model = _pytorch_model(cfg) if cfg.pytorch else None
    if torch_model is not None:
        # export fits the policy on the PyTorch model's validation logits and stamps the same
        # one into every file, so the reference decides with the first file's policy
        torch_model.policy = models[0].policy
        models.insert(0, torch_model)
    return models, labels, spec


def _pytorch_model(cfg: EvaluateConfig) -> EvaluatedModel | None:
    try:
        import torch
        from transformers import AutoModelForImageClassification
    except ImportError:
        logger.info("torch/transformers not installed: parity is measured against the fp32 ONNX file")
        return None
    weights = sorted(cfg.run_dir.glob("*.safetensors"))
    if not weights:
        return None
    before = rss_mb()
    model = AutoModelForImageClassification.from_pretrained(cfg.run_dir, use_safetensors=True).eval()
    loaded = max(rss_mb() - before, 0.0)
    batch = cfg.throughput_batch or 16

    def logits(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            parts = [
                model(pixel_values=torch.from_numpy(pixels[s : s + batch])).logits.float().numpy()
                for s in range(0, len(pixels), batch)
            ]
        return np.concatenate(parts)

    return EvaluatedModel("pytorch-fp32", "reference", sum(w.stat().st_size for w in weights), logits, loaded)


def _load_images(
    cfg: EvaluateConfig, spec: PreprocessSpec, labels: list[str], raw: bool = False
) -> tuple[list[LabelledImage], np.ndarray, list[str], list[np.ndarray], dict[str, Any]]:
    """The labelled images, preprocessed, with the skipped ones' errors; ``raw``: also the
    decoded RGB uint8 images (for raw-input files); and, for an external set (``--data``), which
    of them are near-duplicates of the run's own training images."""
    source = cfg.data or cfg.run_dir / "split.csv"
    if not source.exists():
        raise UserError(f"{source}: no labelled set (pass --data with a split CSV or class folders)")
    images = read_labelled_set(source)
    splits = sorted({i.split for i in images if i.split})
    if cfg.split and splits:
        images = [i for i in images if i.split == cfg.split]
        if not images:
            raise UserError(f"{source}: no images in split {cfg.split!r} (splits there: {', '.join(splits)})")
    unknown = sorted({i.label for i in images} - set(labels))
    if unknown:
        raise UserError(f"{source}: labels {unknown} are not among the model's {labels}")
    decoded, kept, skipped = [], [], []
    for image in images:
        try:
            decoded.append(read_labelled_image(image.path, image.frame))  # DICOM too
            kept.append(image)
        except ImageDecodeError as exc:
            skipped.append(str(exc))
    if not kept:
        raise UserError(f"{source}: no readable labelled images (split {cfg.split!r})")
    frames = [np.asarray(image) for image in decoded] if raw else []
    external = cfg.data is not None and not _same_path(cfg.data, cfg.run_dir / "split.csv")
    overlap = training_overlap(cfg.run_dir, [i.key for i in kept], decoded) if external else {}
    return _keys_under_data_root(kept), preprocess_batch(decoded, spec), skipped, frames, overlap


def _keys_under_data_root(images: list[LabelledImage]) -> list[LabelledImage]:
    """Reports name images relative to the folder that holds them all (a run's split CSV lists
    absolute paths): a report shared or committed carries no machine's folders."""
    paths = [os.path.abspath(image.path) for image in images]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [replace(image, key=os.path.relpath(path, root)) for image, path in zip(images, paths)]


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _row(
    model: EvaluatedModel,
    logits: np.ndarray,
    truth: np.ndarray,
    labels: list[str],
    pixels: np.ndarray | list[np.ndarray],
    cfg: EvaluateConfig,
    outcome: VariantDecisions,
) -> VariantEvaluation:
    # the runtime's (calibrated) probabilities; temperature scaling never changes the argmax
    probabilities = np.asarray(model.policy.probabilities(logits))
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(truth, predicted, labels)
    intervals = _proportion_intervals(np.asarray(metrics["confusion_matrix"]), labels)
    boot = bootstrap_auc_and_balanced_accuracy(truth, probabilities, samples=cfg.bootstrap_samples)
    before = rss_mb()
    latency = measure_latency(lambda i: model.logits(pixels[i % len(pixels)][None]), cfg.latency_runs)
    assert cfg.throughput_batch is not None
    return VariantEvaluation(
        variant=model.name,
        status=model.status,
        size_mb=model.size_bytes / 1e6,
        accuracy=metrics["accuracy"],
        accuracy_ci=intervals["accuracy"],
        balanced_accuracy=metrics["balanced_accuracy"],
        macro_f1=metrics["macro_f1"],
        recall={label: metrics["per_class"][label]["recall"] for label in labels},
        recall_ci=intervals["recall"],
        specificity={label: metrics["per_class"][label]["specificity"] for label in labels},
        auc=dict(zip(labels, auc_one_vs_rest(truth, probabilities))),
        ece=outcome.calibration.after.ece,  # of these same (calibrated) probabilities
        confusion_matrix=metrics["confusion_matrix"],
        latency_p50_ms=latency.p50_ms,
        latency_p95_ms=latency.p95_ms,
        memory_mb=model.load_memory_mb + max(rss_mb() - before, 0.0),
        throughput_batch=cfg.throughput_batch,
        throughput_ips=_throughput(model.logits, pixels, cfg.throughput_batch),
        balanced_accuracy_ci=boot["balanced_accuracy"],
        specificity_ci=intervals["specificity"],
        auc_ci=dict(zip(labels, boot["auc"])),
        calibration=outcome.calibration,
        decision=outcome.summary,
    )


def _proportion_intervals(matrix: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Wilson intervals for accuracy and each class's recall and specificity, from the confusion
    matrix's counts."""
    total = int(matrix.sum())
    hits = np.diag(matrix)
    support, called = matrix.sum(axis=1), matrix.sum(axis=0)
    negatives = total - support
    true_negatives = total - support - called + hits
    return {
        "accuracy": wilson_interval(int(hits.sum()), total),
        "recall": {label: wilson_interval(int(hits[k]), int(support[k])) for k, label in enumerate(labels)},
        "specificity": {
            label: wilson_interval(int(true_negatives[k]), int(negatives[k]))
            for k, label in enumerate(labels)
        },
    }


def _add_parity(row: VariantEvaluation, reference: np.ndarray, logits: np.ndarray, name: str) -> None:
    row.parity_reference = name
    row.max_abs_logit_diff = float(np.abs(reference - logits).max())
    row.top1_agreement = float((reference.argmax(1) == logits.argmax(1)).mean())


def _throughput(run: Callable[[Any], np.ndarray], pixels: np.ndarray | list[np.ndarray], batch: int) -> float:
    if isinstance(pixels, list):  # raw-input frames, sizes differ
        sample: Any = [pixels[i % len(pixels)] for i in range(batch)]
    else:
        sample = np.resize(pixels, (batch, *pixels.shape[1:]))
    latency = measure_latency(lambda i: run(sample), runs=3)
    return batch * 1000 / latency.p50_ms


def _disagreements(
    images: list[LabelledImage],
    all_logits: dict[str, np.ndarray],
    reference: str,
    labels: list[str],
    policies: dict[str, DecisionPolicy],
) -> list[dict[str, Any]]:
    """Images where a variant's label differs from the reference's, with both probabilities as
    the runtime reports them (each file's temperature)."""
    probabilities = {name: policies[name].probabilities(logits) for name, logits in all_logits.items()}
    chosen = {name: [labels[int(i)] for i in p.argmax(axis=1)] for name, p in probabilities.items()}
    keys, truth = [i.key for i in images], [i.label for i in images]
    return disagreements(keys, truth, chosen, probabilities, reference, what="label")


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

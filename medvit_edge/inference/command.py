"""``medvit-edge infer``: predictions for files, folders and globs, with numpy + onnxruntime.

Decoding and preprocessing run in worker threads ahead of the model (Pillow, numpy and
onnxruntime release the GIL), so the model is rarely kept waiting. A file that cannot be read,
or for which the model gives a NaN or infinite output, becomes one error row; the run goes on.

What can be checked is checked before any work (``UserError``, exit 2, one line): the batch
size, the ``--labels`` CSV, and the output: a ``.csv`` or ``.jsonl`` file in a folder that exists
and is writable, not a directory, symlink or device, and never one of the inputs. MODEL may be
a model file, a run folder or its ``onnx/`` folder (``resolve_model_path``).

The output is written atomically. If writing it fails at the end (disk full, read-only),
``OutputWriteError`` (exit 2) says so in one line and carries the summary: the previous file
is left as it was, no temporary file is left behind, and the CLI prints the predictions on
stdout instead, so a finished run is never lost silently.

How values are written (CSV that is safe in spreadsheets, valid JSONL, undecodable file-name
bytes): see ``medvit_edge.inference.output``.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE, UserError, printable
from medvit_edge.evaluation.metrics import classification_metrics
from medvit_edge.files import check_writable_folder
from medvit_edge.hospital.audit import AuditLog, ModelIdentity, audit_rows, check_audit_path
from medvit_edge.inference.decoding import decode_file
from medvit_edge.inference.engine import EngineOptions, classify_files, resolve_model_path
from medvit_edge.inference.output import Writer, format_predictions, write_predictions
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile, collect_inputs
from medvit_edge.options import validate_literals
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.variants import Device

__all__ = [
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_UNUSABLE",
    "InferConfig",
    "InferSummary",
    "OutputWriteError",
    "check_output",
    "decode_file",
    "format_predictions",
    "infer",
    "read_labels_csv",
    "resolve_model_path",
    "write_predictions",
]

OUTPUT_FORMATS = (".csv", ".jsonl")
# One batch tensor is allocated up front: 1024 images of 384x384 are 1.8 GB of float32.
MAX_BATCH_SIZE = 1024


@dataclass
class InferConfig:
    model: Path  # a model file, a run folder or its onnx/ folder
    inputs: list[str]
    output: Path | None = None
    batch_size: int = 8
    threads: int | None = None
    device: Device = "auto"
    verify: bool | None = None
    labels_csv: Path | None = None
    decode_workers: int = 2
    progress: bool = True
    dicom_out: Path | None = None  # a folder: one DICOM SR per classified DICOM input (dicom_out)
    audit_log: Path | None = None  # append-only JSONL, a line per prediction (medvit_edge.hospital.audit)
    overlays: Path | None = None  # a folder: one heat-map PNG per classified image (overlays)
    explain_model: Path | None = None  # default: model.explain.onnx beside the model

    def __post_init__(self) -> None:
        validate_literals(self)

    @property
    def engine(self) -> EngineOptions:
        return EngineOptions(self.batch_size, self.decode_workers, self.progress)


@dataclass
class InferSummary:
    rows: list[PredictionRow]
    labels: list[str]
    files: int
    failed_files: int
    predictions: int
    metrics: dict[str, Any] | None = None
    output: Path | None = None  # where the rows were written; None: nowhere
    errors: list[str] = field(default_factory=list)  # the first error of each failed file
    inputs: list[str] = field(default_factory=list)  # the specs given, to say where nothing was found
    skipped: str = ""  # what the folder walk passed over, e.g. "3 skipped: 2 BUSI mask, 1 hidden"
    reports: list[Path] = field(default_factory=list)  # DICOM SRs written (--dicom-out)
    report_failures: int = 0  # DICOM inputs whose SR could not be made (each in errors)
    overlays: list[Path] = field(default_factory=list)  # heat-map PNGs written (--overlays)
    overlay_failures: int = 0  # classified inputs whose overlay could not be made (each in errors)

    @property
    def exit_code(self) -> int:
        # no input at all is a failure too: a typo in a folder name must not look like success
        failed = self.failed_files or self.report_failures or self.overlay_failures or not self.files
        return EXIT_SOME_FAILED if failed else EXIT_OK


class OutputWriteError(UserError):
    """The run finished but its output could not be written; ``summary`` keeps every row."""

    def __init__(self, message: str, summary: InferSummary):
        super().__init__(message)
        self.summary = summary


def check_arguments(cfg: InferConfig) -> None:
    """Numbers that would only fail after the whole run (or never finish) are refused first."""
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.batch_size > MAX_BATCH_SIZE:  # its tensor is allocated up front
        raise UserError(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {cfg.batch_size}")
    if cfg.threads is not None and cfg.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or more, got {cfg.threads}")
    if cfg.decode_workers < 1:
        raise UserError(f"decode_workers must be at least 1, got {cfg.decode_workers}")
    if cfg.explain_model is not None and cfg.overlays is None:
        raise UserError("--explain-model goes with --overlays")


def check_output(output: Path, inputs: list[Path], formats: tuple[str, ...] = OUTPUT_FORMATS) -> None:
    """Refuse, before any work, an output that would destroy an input (an image, the labels
    CSV) or cannot be written. ``formats``: the suffixes the engine writes."""
    try:
        _check_output_kind(output)
        clash = _input_at(output, inputs)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot inspect it ({exc.strerror or exc})") from exc
    if clash is not None:
        raise UserError(
            f"--output {output}: this is the input {clash}; writing the predictions there "
            "would destroy it. Choose another output file."
        )
    if output.suffix.lower() not in formats:
        raise UserError(
            f"--output {output}: unknown output format {output.suffix or '(no extension)'}; "
            f"use one of: {', '.join(formats)}"
        )
    _probe_folder(output)


def _check_output_kind(output: Path) -> None:
    if output.is_symlink():
        raise UserError(f"--output {output}: is a symbolic link; name a regular file")
    if output.is_dir():
        raise UserError(f"--output {output}: is a directory; name a file in it, e.g. {output / 'preds.csv'}")
    if output.exists() and not output.is_file():
        raise UserError(f"--output {output}: is not a regular file (a device, pipe or socket)")


def _input_at(output: Path, inputs: list[Path]) -> Path | None:
    """The input that ``output`` is, resolving symlinks and relative paths; None if none is."""
    target = os.path.realpath(output)
    name = os.path.basename(target).lower()
    exists = os.path.exists(target)
    for path in inputs:
        try:
            if _same_file(path, target, name, exists):
                return path
        except OSError:  # an input that cannot be inspected cannot be the output either
            continue
    return None


def _same_file(path: Path, target: str, name: str, exists: bool) -> bool:
    # Only an input of the same name, or a symlink, can resolve to the output: this keeps a
    # folder of 100,000 inputs from costing 100,000 realpath() walks.
    if path.name.lower() != name and not path.is_symlink():
        return False
    if os.path.realpath(path) == target:
        return True
    return exists and path.exists() and os.path.samefile(path, target)  # case-folding disks


def _probe_folder(output: Path) -> None:
    folder = output.parent
    if not folder.is_dir():
        raise UserError(f"--output {output}: folder {folder} does not exist")
    check_writable_folder(folder, f"--output {output}")


def read_labels_csv(path: Path) -> dict[str, str]:
    """A CSV with ``path`` and ``label`` columns (a UTF-8 BOM is allowed); relative paths are
    relative to the CSV. Unreadable or without those columns: ``UserError``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            if not {"path", "label"} <= set(columns):
                raise UserError(
                    f"--labels {path}: a labels CSV needs 'path' and 'label' columns; "
                    f"found: {', '.join(columns) or 'nothing'}"
                )
            reader.fieldnames = columns
            return _truth_records(reader, path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UserError(f"--labels {path}: cannot read it as a UTF-8 CSV ({reason})") from exc


def _truth_records(reader: csv.DictReader[str], path: Path) -> dict[str, str]:
    truth = {}
    for record in reader:
        given, label = (record.get("path") or "").strip(), (record.get("label") or "").strip()
        if not given:
            continue
        file_path = Path(given)
        resolved = file_path if file_path.is_absolute() else path.parent / file_path
        truth[str(resolved)] = label
        truth[given] = label
    return truth


def infer(cfg: InferConfig, classifier: Classifier | None = None) -> InferSummary:
    """Run ``cfg.model`` over ``cfg.inputs``; write ``cfg.output`` (.csv or .jsonl) if given.

    Raises ``UserError`` (exit 2) before any work for unusable arguments, model or output, and
    ``OutputWriteError`` (carrying the summary) when the output cannot be written at the end."""
    check_arguments(cfg)
    truth_csv = read_labels_csv(cfg.labels_csv) if cfg.labels_csv is not None else None
    found = collect_inputs(cfg.inputs)
    items = found.files
    if cfg.output is not None:
        # an input that already failed (a path too long to inspect, a missing file) is nothing
        # the output could overwrite
        readable = [item.path for item in items if not item.error]
        protected = readable + ([cfg.labels_csv] if cfg.labels_csv else [])
        check_output(cfg.output, protected)
    if cfg.audit_log is not None:
        check_audit_path(cfg.audit_log, cfg.output)
    if cfg.dicom_out is not None:
        from medvit_edge.hospital.dicom_sr import check_report_folder

        check_report_folder(cfg.dicom_out)
    classifier = classifier or _load_classifier(cfg)
    overlays = None
    if cfg.overlays is not None:  # the explainability model and the folder, checked first
        from medvit_edge.inference.overlays import OverlayRequest, prepare_overlays

        request = OverlayRequest(
            cfg.overlays, cfg.explain_model, cfg.device, cfg.threads, cfg.verify, cfg.progress
        )
        overlays = prepare_overlays(request, cfg.inputs, classifier, items)
    rows, failed = _classify_audited(items, classifier, cfg)
    truth = truth_csv if truth_csv is not None else truth_from_folders(items, classifier.labels)
    summary = InferSummary(
        rows=rows,
        labels=classifier.labels,
        files=len(items),
        failed_files=len(failed),
        predictions=sum(1 for row in rows if row.ok),
        metrics=ground_truth_metrics(rows, truth, classifier.labels),
        errors=list(failed.values()),
        inputs=list(cfg.inputs),
        skipped=found.describe_skipped() if found.skipped else "",
    )
    if cfg.output is not None:
        write_output(cfg.output, summary)
    if cfg.dicom_out is not None:  # one DICOM SR per classified DICOM input; a failure is exit 1
        from medvit_edge.hospital.dicom_sr import write_reports

        model = ModelIdentity.of(classifier)
        summary.reports, errors = write_reports(summary.rows, summary.labels, model, cfg.dicom_out)
        summary.report_failures, summary.errors = len(errors), summary.errors + errors
    if overlays is not None:  # one PNG per classified image; a failure is exit 1
        summary.overlays, errors = overlays.write(summary.rows, summary.labels)
        summary.overlay_failures, summary.errors = len(errors), summary.errors + errors
    return summary


def _classify_audited(
    items: list[InputFile], classifier: Classifier, cfg: InferConfig
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """``classify_files``; with an audit log, every row's line is durable before any result leaves
    (an ``AuditError``, exit 2, when it cannot be written)."""
    if cfg.audit_log is None:  # overlays check that they draw the bytes that were classified
        return classify_files(items, classifier, cfg.engine, digest=cfg.overlays is not None)
    clash = _input_at(cfg.audit_log, [item.path for item in items if not item.error])
    if clash is not None:  # appending to an input would corrupt it
        raise UserError(f"--audit-log {cfg.audit_log}: this is the input {clash}; choose another file")
    with AuditLog.open(cfg.audit_log) as audit:
        rows, failed = classify_files(items, classifier, cfg.engine, digest=True)
        audit_rows(audit, rows, classifier.labels, ModelIdentity.of(classifier), source="infer")
    return rows, failed


def _load_classifier(cfg: InferConfig) -> Classifier:
    path = resolve_model_path(cfg.model, cfg.device)
    classifier = Classifier.load(path, device=cfg.device, threads=cfg.threads, verify=cfg.verify)
    if path != cfg.model:  # a folder was given: say which file of it runs
        print(f"using {printable(path)} ({printable(classifier.variant)})", file=sys.stderr, flush=True)
    return classifier


def write_output(path: Path, summary: InferSummary, writer: Writer | None = None) -> None:
    """Write the rows (``writer``: CSV/JSONL by default; the Ray engine passes its Parquet one);
    a failure at the end is an ``OutputWriteError`` that keeps the summary."""
    try:
        (writer or write_predictions)(path, summary.rows, summary.labels)
    except OSError as exc:  # disk full, read-only, removed folder: the run itself is done
        raise OutputWriteError(
            f"{path}: cannot write the predictions ({exc.strerror or exc}); nothing was written "
            "there and any previous file is unchanged",
            summary,
        ) from exc
    summary.output = path


def ground_truth_metrics(
    rows: list[PredictionRow], truth: dict[str, str], labels: list[str]
) -> dict[str, Any] | None:
    """Accuracy and recall when truth is known: a --labels CSV, or one sub-folder per class."""
    pairs = [(truth[row.path], row.label) for row in rows if row.ok and row.path in truth]
    pairs = [(t, p) for t, p in pairs if t in labels]
    if not pairs:
        return None
    index = {label: i for i, label in enumerate(labels)}
    return classification_metrics([index[t] for t, _ in pairs], [index[p] for _, p in pairs], labels)


def truth_from_folders(items: list[InputFile], labels: list[str]) -> dict[str, str]:
    by_name = {label.lower(): label for label in labels}
    truth = {}
    for item in items:
        if item.root is None:
            continue
        parts = item.path.relative_to(item.root).parts
        if len(parts) >= 2 and parts[0].lower() in by_name:
            truth[str(item.path)] = by_name[parts[0].lower()]
    return truth

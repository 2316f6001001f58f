"""``infer`` on a Ray cluster: archive-scale inference with Ray Data, the same rows as plain ``infer``.

``infer_on_ray(cfg, address=..., workers=...)`` (``medvit-edge infer MODEL PATHS --engine ray``)
lists the inputs on the driver with the same rule as plain infer (``collect_inputs``: skips,
duplicates, error rows for missing paths), checks the model and the output before any work, then
hands chunks of files to Ray Data. A pool of actors each loads the ``Classifier`` once and turns
a chunk into rows with plain infer's own code (decoding threads, batching, per-file and per-frame
error rows, the NaN check), so the rows and columns are identical, row for row. The rows come
back in input order and are written as CSV, JSONL or Parquet (atomically), or, for an output
name without a suffix, as a folder of Parquet parts with a ``_SUCCESS`` marker
(``medvit_edge.inference.parquet_out``): then the driver holds one part at a time, not the whole archive.

Ray does the scheduling, retries and multi-node placement; nothing here is a scheduler. The files
and the model must be readable under the same paths on every node (a shared filesystem);
relative paths are taken from the driver's working directory. ``address=None`` starts a local
Ray on this machine (stopped at the end); ``"auto"`` joins the cluster ``ray start`` made;
``"ray://head:10001"`` a remote one. Resources: each actor reserves ``cpus / workers`` CPUs and
runs onnxruntime with that many threads (``--threads`` overrides); ``--device cuda`` reserves one
GPU per actor. Without ``--workers``: one actor per GPU, or one per 4 CPUs.

Ray is imported only when a run starts (the ``[ray]`` extra); this module never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medvit_edge.errors import UserError, printable

# plain infer's own engine and truth helpers: the rows must be the same, not look alike
from medvit_edge.inference.command import (
    InferConfig,
    InferSummary,
    check_arguments,
    check_output,
    ground_truth_metrics,
    read_labels_csv,
    truth_from_folders,
    write_output,
)
from medvit_edge.inference.engine import classify_files, resolve_model_path
from medvit_edge.inference.parquet_out import PartitionedParquet, check_folder_target, write_parquet
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile, collect_inputs
from medvit_edge.lazy import import_optional
from medvit_edge.progress import Progress
from medvit_edge.runtime.classifier import Classifier

logger = logging.getLogger(__name__)

Engine = Literal["local", "ray"]
FILE_FORMATS = (".csv", ".jsonl", ".parquet")
FILES_PER_TASK = 32  # files an actor classifies per Ray task (fewer when there are few files)
CPUS_PER_WORKER = 4  # without --workers: one actor per this many CPUs
GPU_DEVICES = ("cuda", "tensorrt")
# options of plain infer that write more than the predictions; not on Ray yet
LOCAL_ONLY = {"dicom_out": "--dicom-out", "audit_log": "--audit-log", "overlays": "--overlays"}


@dataclass(frozen=True)
class RayPlan:
    workers: int  # actors
    cpus: float  # CPUs each actor reserves
    gpus: float  # GPUs each actor reserves
    threads: int | None  # onnxruntime intra-op threads per actor
    files_per_task: int

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return (
            f"{self.workers} Ray worker{'s' if self.workers != 1 else ''} × ({self.cpus:g} CPU{gpus}, "
            f"{self.threads or 'default'} onnxruntime threads), {self.files_per_task} files per task"
        )


def infer_on_ray(
    cfg: InferConfig,
    address: str | None = None,
    workers: int | None = None,
    files_per_task: int = FILES_PER_TASK,
) -> InferSummary:
    """Plain ``infer(cfg)``'s result, computed by a pool of Ray actors; ``cfg.output`` may also be
    ``.parquet``, or a name without a suffix for a partitioned Parquet folder.

    Raises ``UserError`` (exit 2) before any work for unusable arguments, model, output or Ray
    address, and ``OutputWriteError`` when a CSV/JSONL/Parquet file cannot be written at the end
    (the summary keeps every row)."""
    _check_ray_arguments(cfg, workers, files_per_task)
    truth_csv = read_labels_csv(cfg.labels_csv) if cfg.labels_csv is not None else None
    found = collect_inputs(cfg.inputs)
    items = found.files
    folder = _check_target(cfg, items)
    model_path = resolve_model_path(cfg.model, cfg.device)
    # the driver checks the model once (checksum, metadata, graph) before any worker starts
    probe = Classifier.load(model_path, device="cpu", threads=1, verify=cfg.verify)
    labels = probe.labels
    if model_path != cfg.model:  # a folder was given: say which file of it runs, as infer does
        print(f"using {printable(model_path)} ({printable(probe.variant)})", file=sys.stderr, flush=True)
    del probe
    truth = truth_csv if truth_csv is not None else truth_from_folders(items, labels)
    summary = InferSummary(
        rows=[], labels=labels, files=len(items), failed_files=0, predictions=0, inputs=list(cfg.inputs)
    )
    summary.skipped = found.describe_skipped() if found.skipped else ""
    collect = _collect_into_folder if folder else _collect
    if not items:  # nothing to classify (exit 1, as plain infer): no cluster needed
        collect(iter(()), summary, cfg, truth, 0)
        return summary
    with _ray_session(address) as ray:
        plan = plan_workers(ray.cluster_resources(), cfg, workers, len(items), files_per_task)
        logger.info("%s", plan.describe())
        collect(_run(ray, items, model_path, cfg, plan), summary, cfg, truth, len(items))
    return summary


def _check_ray_arguments(cfg: InferConfig, workers: int | None, files_per_task: int) -> None:
    check_arguments(cfg)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if files_per_task < 1:
        raise UserError(f"files_per_task must be at least 1, got {files_per_task}")
    for field, flag in LOCAL_ONLY.items():
        if getattr(cfg, field, None) is not None:
            raise UserError(f"{flag} is not available with --engine ray; run it with the local engine")


def _check_target(cfg: InferConfig, items: list[InputFile]) -> bool:
    """Check the output before any work; True when it is a partitioned folder."""
    if cfg.output is None:
        return False
    readable = [item.path for item in items if not item.error]
    protected = readable + ([cfg.labels_csv] if cfg.labels_csv else [])
    if not cfg.output.suffix:
        check_folder_target(cfg.output)
        return True
    check_output(cfg.output, protected, FILE_FORMATS)
    return False


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected: reuses a running session (a notebook, a test), else starts a local one
    (``address=None``) or joins a cluster; stops only what it started. Ray Data keeps rows in
    order and its own progress bars off (the driver draws one line for the files)."""
    ray = import_optional("ray", "ray.data", hint="--engine ray needs Ray: pip install 'medvit-edge[ray]'")
    started = not ray.is_initialized()
    if started:
        try:
            with _keeping_sigterm_handler():
                # Ray's own notices (token set-up, the dashboard) are not this command's output
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise UserError(
                f"--address {address or '(local)'}: cannot start or join {where} ({exc})"
            ) from exc
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    ray_data_logger = logging.getLogger("ray.data")
    saved_level = ray_data_logger.level
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    ray_data_logger.setLevel(logging.ERROR)  # its per-run plan lines are not our output
    try:
        yield ray
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        ray_data_logger.setLevel(saved_level)
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the SIGTERM handler with its own ``sys.exit(15)``; a handler set on
    purpose before (the CLI's: exit 143 after a clean-up, medvit_edge.files) is put back."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def plan_workers(
    resources: dict[str, float], cfg: InferConfig, workers: int | None, files: int, files_per_task: int
) -> RayPlan:
    """How many actors, and what each reserves: the cluster's CPUs split evenly between them, and
    onnxruntime threads = the CPUs reserved, so actors sharing a node do not fight over cores
    (``cfg.threads`` overrides the threads, not the reservation). On a GPU, one GPU each."""
    cpus = max(float(resources.get("CPU", 1.0)), 1.0)
    gpus = int(resources.get("GPU", 0))
    on_gpu = cfg.device in GPU_DEVICES
    if on_gpu and gpus < 1:
        raise UserError(f"--device {cfg.device}: the Ray cluster has no GPU")
    if workers is None:
        workers = gpus if on_gpu else max(1, int(cpus // CPUS_PER_WORKER))
    share = cpus / workers
    threads = cfg.threads if cfg.threads is not None else max(1, int(share))
    # at least ~4 tasks per actor, so the work spreads over the pool even for a small folder
    chunk = max(1, min(files_per_task, math.ceil(files / (workers * 4)))) if files else files_per_task
    return RayPlan(workers, share, 1.0 if on_gpu else 0.0, threads, chunk)


class ClassifyChunks:
    """A Ray Data actor: the model loaded once; each task is a chunk of input files, classified
    by plain infer's own code. Rows travel as JSON text: exact Python values (ints, floats, which
    JSON writes by their shortest exact repr, and strings with the surrogates of undecodable file
    names, which ``ensure_ascii`` escapes) that a table column could not all hold. JSON, not
    pickle: nothing in this package unpickles."""

    def __init__(self, model: str, cfg: InferConfig, cwd: str):
        try:
            os.chdir(cwd)  # relative input paths mean what they meant to the driver
        except OSError as exc:
            logger.warning("cannot enter %s on this node (%s): relative paths will not resolve", cwd, exc)
        self.cfg = cfg
        self.classifier = Classifier.load(model, device=cfg.device, threads=cfg.threads, verify=cfg.verify)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, failed = [], []
        for text in batch["items"]:
            chunk_rows, chunk_failed = classify_files(_decode_items(text), self.classifier, self.cfg.engine)
            rows.append(json.dumps([row.to_wire() for row in chunk_rows]))
            failed.append(json.dumps({str(index): error for index, error in chunk_failed.items()}))
        return {
            "first": batch["first"],
            "files": batch["files"],
            "rows": np.array(rows, dtype=object),
            "failed": np.array(failed, dtype=object),
        }


def _encode_items(items: list[InputFile]) -> str:
    return json.dumps([[os.fspath(i.path), i.root and os.fspath(i.root), i.error] for i in items])


def _decode_items(text: str) -> list[InputFile]:
    return [
        InputFile(Path(path), Path(root) if root else None, error) for path, root, error in json.loads(text)
    ]


# (index of the chunk's first file, its number of files, its rows, its failed files by index)
Chunk = tuple[int, int, list[PredictionRow], dict[int, str]]


def _run(ray: Any, items: list[InputFile], model: Path, cfg: InferConfig, plan: RayPlan) -> Iterator[Chunk]:
    """The chunks' results in input order, as Ray Data streams them."""
    size = plan.files_per_task
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    records = [
        {"first": index * size, "files": len(chunk), "items": _encode_items(chunk)}
        for index, chunk in enumerate(chunks)
    ]
    worker_cfg = replace(cfg, progress=False, threads=plan.threads, output=None, labels_csv=None)
    dataset = ray.data.from_items(records).map_batches(
        ClassifyChunks,
        fn_constructor_kwargs={"model": str(model), "cfg": worker_cfg, "cwd": os.getcwd()},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=plan.cpus,
        num_gpus=plan.gpus or None,
    )
    waiting: dict[int, Chunk] = {}  # Ray Data keeps the order; this holds it if it ever does not
    expected = 0
    for record in dataset.iter_rows():
        first = int(record["first"])
        failed = {first + int(index): error for index, error in json.loads(record["failed"]).items()}
        rows = [PredictionRow.from_wire(row) for row in json.loads(record["rows"])]
        waiting[first] = (first, int(record["files"]), rows, failed)
        while expected in waiting:
            chunk = waiting.pop(expected)
            expected += chunk[1]
            yield chunk


def _collect(
    chunks: Iterator[Chunk], summary: InferSummary, cfg: InferConfig, truth: dict[str, str], files: int
) -> None:
    """Every row kept (stdout, or one output file written atomically at the end)."""
    failed: dict[int, str] = {}
    progress = Progress(files, unit="files", enabled=cfg.progress)
    for _, count, rows, chunk_failed in chunks:
        summary.rows.extend(rows)
        failed.update(chunk_failed)
        progress.update(count, note=f"{len(failed)} failed" if failed else "")
    progress.close()
    _finish(summary, failed, sum(1 for row in summary.rows if row.ok), summary.rows, truth)
    if cfg.output is None:
        return
    parquet = cfg.output.suffix.lower() == ".parquet"
    write_output(cfg.output, summary, write_parquet if parquet else None)


def _collect_into_folder(
    chunks: Iterator[Chunk], summary: InferSummary, cfg: InferConfig, truth: dict[str, str], files: int
) -> None:
    """Rows go to Parquet parts as they arrive; the summary keeps counts and errors, not rows."""
    assert cfg.output is not None
    failed: dict[int, str] = {}
    predictions = 0
    scored: list[PredictionRow] = []  # kept only when truth is known, for the accuracy
    progress = Progress(files, unit="files", enabled=cfg.progress)
    try:
        with PartitionedParquet(cfg.output, summary.labels) as parts:
            for _, count, rows, chunk_failed in chunks:
                parts.add(rows)
                failed.update(chunk_failed)
                predictions += sum(1 for row in rows if row.ok)
                if truth:
                    scored.extend(rows)
                progress.update(count, note=f"{len(failed)} failed" if failed else "")
            progress.close()
            _finish(summary, failed, predictions, scored, truth)
            parts.commit({"files": summary.files, "failed_files": summary.failed_files})
    except OSError as exc:
        raise UserError(
            f"{cfg.output}: cannot write the Parquet parts ({exc.strerror or exc}); nothing was left there"
        ) from exc
    summary.output = cfg.output


def _finish(
    summary: InferSummary,
    failed: dict[int, str],
    predictions: int,
    rows: list[PredictionRow],
    truth: dict[str, str],
) -> None:
    summary.failed_files = len(failed)
    summary.errors = list(failed.values())
    summary.predictions = predictions
    summary.metrics = ground_truth_metrics(rows, truth, summary.labels)

"""``medvit-edge benchmark MODEL...``: the speed table a user runs on their own hardware.

For each model file (any file ``Classifier.load`` takes: ``.onnx``, OpenVINO ``.xml``; a run
folder or onnx folder means every variant its manifest lists), in ``rounds`` interleaved rounds
(model A, B, C, then A, B, C again, so a slow drift of the machine hits all alike):

* **one fresh process per model per round** (``python -m medvit_edge.deploy.benchmark``, a JSON job on
  stdin, a JSON result on stdout). So the load time is a real cold load, and the peak RSS
  (``VmHWM``, medvit_edge.system) is that model's own: in one process the peak would carry the
  models loaded before it, and resetting ``VmHWM`` (``/proc/self/clear_refs``) cannot give back
  memory the allocator keeps. A crash or an out-of-memory kill is that model's error row.
* ``runs`` timed ``predict_proba`` calls on a batch of ``batch`` decoded images (preprocessing +
  model; decoding excluded) after a warm-up call, through ``medvit_edge.timing.measure_latency``:
  p50/p95 ms per image and images/s (at the p50). Across rounds: the median of each round's p50
  and p95, the median load time, the largest peak RSS.
* with ``images`` (a labelled folder or split CSV, like evaluate's ``--data``): accuracy of
  every readable labelled image (first round), and the timed batch comes from those images;
  without: synthetic 640x480 noise frames (BUSI frames are about that size).

Runtime only (numpy, Pillow, onnxruntime or OpenVINO): no torch.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.deploy.info import refuse_stale_file
from medvit_edge.errors import ModelLoadError, UserError, printable
from medvit_edge.io.labelled import SPLIT_ALIASES, LabelledImage, read_labelled_set
from medvit_edge.options import validate_literals
from medvit_edge.progress import Progress
from medvit_edge.runtime.manifest import Manifest, to_json_dict
from medvit_edge.runtime.variants import Device, file_names, tool_files
from medvit_edge.system import machine_line
from medvit_edge.timing import PREPROCESS_AND_MODEL, latency_scope

SYNTHETIC_SIZE = (640, 480)  # width, height of the default frames
WORKER_TIMEOUT_S = 3600


@dataclass
class BenchmarkConfig:
    models: list[Path]
    batch: int = 1
    threads: int | None = None  # default: the runtime's (all cores)
    images: Path | None = None  # labelled folder or split CSV; default: synthetic frames
    split: str | None = "test"  # which split of a split CSV (all of it when it has none)
    runs: int = 20
    rounds: int = 3
    device: Device = "cpu"
    progress: bool = True  # one line per model run on stderr

    def __post_init__(self) -> None:
        validate_literals(self)
        self.models = [Path(model) for model in self.models]
        self.images = Path(self.images) if self.images else None
        if self.split:
            self.split = SPLIT_ALIASES.get(self.split.strip().lower(), self.split)
        if not self.models:
            raise UserError("name at least one model file or folder")
        if self.batch < 1 or self.runs < 1 or self.rounds < 1:
            raise UserError("--batch-size, --runs and --rounds must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class BenchmarkRow:
    """One model: its numbers, or the error that stopped it."""

    model: str
    variant: str = ""
    size_mb: float = 0.0
    load_s: float | None = None
    p50_ms: float | None = None  # per image
    p95_ms: float | None = None
    images_per_s: float | None = None
    peak_rss_mb: float | None = None
    accuracy: float | None = None
    correct: int = 0
    labelled: int = 0
    skipped: list[str] = field(default_factory=list)  # labelled images that could not be read
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class BenchmarkReport:
    machine: str
    batch: int
    threads: int | None
    runs: int
    rounds: int
    images: str  # what was timed: the labelled set, or the synthetic frames
    rows: list[BenchmarkRow]

    @property
    def failed(self) -> list[BenchmarkRow]:
        return [row for row in self.rows if not row.ok]

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


def benchmark(cfg: BenchmarkConfig) -> BenchmarkReport:
    """Every model of ``cfg.models``, interleaved over ``cfg.rounds`` fresh-process rounds."""
    labelled = _labelled(cfg)
    rows = [BenchmarkRow(str(path), error=error) for path, error in expand_models(cfg.models)]
    samples: list[list[dict[str, Any]]] = [[] for _ in rows]
    progress = Progress(cfg.rounds * sum(row.ok for row in rows), unit="model runs", enabled=cfg.progress)
    for round_number in range(cfg.rounds):
        for row, found in zip(rows, samples):
            if row.ok:
                result = run_worker(_job(cfg, row.model, labelled, first=round_number == 0))
                row.error = result.get("error", "")
                found.append(result)
                if row.ok:  # a failed run says so in its row (or in the one error line), not here
                    progress.update(note=f"round {round_number + 1}/{cfg.rounds}: {Path(row.model).name}")
    progress.close()
    for row, found in zip(rows, samples):
        if row.ok:
            _summarise(row, found)
    described = f"{cfg.images} (split {cfg.split})" if labelled is not None else "synthetic 640x480 frames"
    return BenchmarkReport(machine_line(), cfg.batch, cfg.threads, cfg.runs, cfg.rounds, described, rows)


def expand_models(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each model file to benchmark with "" or the reason it cannot be: a file as is, a folder
    (a run folder means its onnx/) as every file its manifest lists that is there (or, without
    a manifest, every file of the variants table that is there)."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            if path.is_file():
                refuse_stale_file(path)
            found.append((path, "" if path.is_file() else f"{path}: model file not found"))
            continue
        folder = path / "onnx" if (path / "onnx").is_dir() else path
        try:
            manifest = Manifest.read(folder)
        except ModelLoadError as exc:
            found.append((folder, str(exc)))
            continue
        names = [record.file for record in manifest.variants] if manifest else file_names()
        names = [name for name in dict.fromkeys(names) if name not in tool_files()]  # not explain
        files = [folder / name for name in names if os.path.lexists(folder / name)]
        for file in files:
            if file.is_file():
                refuse_stale_file(file)  # StaleExportError: retrained since the export
        found += [(file, _not_a_model(file)) for file in files] or [
            (folder, f"{folder}: no model files here")
        ]
    return found


def _not_a_model(path: Path) -> str:
    """ "" for a regular file; else why it is not benchmarked (a FIFO, device or dangling link
    named like a model is reported, never silently left out)."""
    return "" if path.is_file() else f"{path}: not a regular file"


def _labelled(cfg: BenchmarkConfig) -> list[LabelledImage] | None:
    if cfg.images is None:
        return None
    images = read_labelled_set(cfg.images)  # LabelledSetError (exit 2) names the file
    splits = sorted({image.split for image in images if image.split})
    if cfg.split and splits:
        images = [image for image in images if image.split == cfg.split]
    if not images:
        raise UserError(f"{cfg.images}: no labelled images (split {cfg.split!r}; splits there: {splits})")
    return images


def _job(
    cfg: BenchmarkConfig, model: str, labelled: list[LabelledImage] | None, first: bool
) -> dict[str, Any]:
    return {
        "model": model,
        "batch": cfg.batch,
        "threads": cfg.threads,
        "runs": cfg.runs,
        "device": cfg.device,
        "images": None if labelled is None else [[str(i.path), i.label, i.frame] for i in labelled],
        "accuracy": first,
    }


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One model in a fresh interpreter; a crash is an error result, never an exception."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "medvit_edge.deploy.benchmark"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{job['model']}: no result within {WORKER_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{job['model']}: benchmark process exited with code {done.returncode} ({last})"}
    try:
        result = json.loads(lines[-1])
    except (json.JSONDecodeError, RecursionError):
        result = None
    if not isinstance(result, dict):  # something else printed last: that model's error row
        return {"error": f"{job['model']}: unreadable result from the benchmark process ({lines[-1][:80]!r})"}
    return result


def _summarise(row: BenchmarkRow, results: list[dict[str, Any]]) -> None:
    first = results[0]
    row.variant, row.size_mb = first["variant"], first["size_mb"]
    row.load_s = statistics.median(r["load_s"] for r in results)
    row.p50_ms = statistics.median(r["p50_ms"] for r in results)
    row.p95_ms = statistics.median(r["p95_ms"] for r in results)
    row.images_per_s = 1000 / row.p50_ms if row.p50_ms else None
    row.peak_rss_mb = max(r["peak_rss_mb"] for r in results)
    if first.get("labelled"):
        row.correct, row.labelled, row.skipped = first["correct"], first["labelled"], first["skipped"]
        row.accuracy = row.correct / row.labelled


# -- the report ------------------------------------------------------------------------------------

COLUMNS = (
    "model",
    "variant",
    "size MB",
    "load s",
    "p50 ms/img",
    "p95 ms/img",
    "img/s",
    "peak RSS MB",
    "accuracy",
)


def format_report(report: BenchmarkReport) -> list[str]:
    """A fixed-width table (like ``yolo benchmark``), every value escaped for the terminal."""
    threads = report.threads or "default"
    lines = [
        printable(
            f"{report.machine}; batch {report.batch}, threads {threads}, {report.runs} runs x "
            f"{report.rounds} rounds (fresh process each); ms per image: "
            f"{latency_scope(PREPROCESS_AND_MODEL, report.batch, report.images)} (decoding excluded)"
        )
    ]
    table = [list(COLUMNS)] + [_cells(row) for row in report.rows]
    full = [cells for cells in table if len(cells) == len(COLUMNS)]
    widths = [max(len(cells[i]) for cells in full) for i in range(len(COLUMNS))]
    for cells in table:
        if len(cells) == 2:  # an error row: the model, then the reason
            lines.append(printable(f"{cells[0]:<{widths[0]}}  error: {cells[1]}"))
        else:
            lines.append(printable("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()))
    return lines


def _cells(row: BenchmarkRow) -> list[str]:
    if not row.ok:
        return [Path(row.model).name, row.error]
    accuracy = f"{row.accuracy:.3f} ({row.correct}/{row.labelled})" if row.accuracy is not None else "-"
    return [
        Path(row.model).name,
        row.variant,
        f"{row.size_mb:.1f}",
        f"{row.load_s:.2f}",
        f"{row.p50_ms:.2f}",
        f"{row.p95_ms:.2f}",
        f"{row.images_per_s:.1f}",
        f"{row.peak_rss_mb:.0f}",
        accuracy,
    ]


# -- the worker: one model in this (fresh) process -------------------------------------------------


def measure_one(job: dict[str, Any]) -> dict[str, Any]:
    """Load, time and (``job['accuracy']``) score one model; the JSON the parent reads."""
    import time

    from medvit_edge.runtime.classifier import Classifier
    from medvit_edge.system import peak_rss_mb
    from medvit_edge.timing import measure_latency

    path = Path(job["model"])
    started = time.perf_counter()
    classifier = Classifier.load(path, device=job["device"], threads=job["threads"])
    load_s = time.perf_counter() - started
    labelled = job["images"]
    result: dict[str, Any] = {
        "variant": classifier.variant,
        "size_mb": classifier.size_bytes / 1e6,
        "load_s": load_s,
    }
    if labelled is not None and job["accuracy"]:
        result.update(_accuracy(classifier, labelled))
    batch = _timing_batch(labelled, job["batch"])
    latency = measure_latency(lambda i: classifier.predict_proba(batch), job["runs"])
    result.update(p50_ms=latency.p50_ms / len(batch), p95_ms=latency.p95_ms / len(batch))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _timing_batch(labelled: list[list[Any]] | None, batch: int) -> list[Any]:
    """``batch`` decoded images: the first readable labelled ones (repeated when too few), else
    synthetic noise frames."""
    import numpy as np
    from PIL import Image

    from medvit_edge.io.reader import read_labelled_image
    from medvit_edge.runtime.images import ImageDecodeError

    images: list[Any] = []
    for path, _, frame in labelled or []:
        try:
            images.append(read_labelled_image(path, frame))
        except ImageDecodeError:
            continue
        if len(images) == batch:
            break
    if not images:
        rng = np.random.default_rng(0)
        width, height = SYNTHETIC_SIZE
        images = [
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(batch)
        ]
    return [images[i % len(images)] for i in range(batch)]


def _accuracy(classifier: Any, labelled: list[list[Any]]) -> dict[str, Any]:
    """Predictions for every readable labelled image, CHUNK at a time; unreadable ones skipped
    and named. Labels the model does not know are an error (the sets do not match)."""
    from medvit_edge.io.reader import read_labelled_image
    from medvit_edge.runtime.classifier import CHUNK
    from medvit_edge.runtime.images import ImageDecodeError

    unknown = sorted({label for _, label, _ in labelled} - set(classifier.labels))
    if unknown:
        raise UserError(f"labels {unknown} of the images are not among the model's {classifier.labels}")
    correct, seen, skipped = 0, 0, []
    for start in range(0, len(labelled), CHUNK):
        images, truth = [], []
        for path, label, frame in labelled[start : start + CHUNK]:
            try:
                images.append(read_labelled_image(path, frame))
                truth.append(label)
            except ImageDecodeError as exc:
                skipped.append(str(exc))
        predicted = classifier.predict_proba(images).argmax(axis=1) if images else []
        correct += sum(classifier.labels[int(p)] == t for p, t in zip(predicted, truth))
        seen += len(truth)
    if not seen:
        raise UserError("none of the labelled images could be read")
    return {"labelled": seen, "correct": int(correct), "skipped": skipped}


def _worker() -> None:
    """``python -m medvit_edge.deploy.benchmark``: one job from stdin, one JSON line on stdout."""
    job = json.loads(sys.stdin.read())
    try:
        result = measure_one(job)
    except (UserError, OSError, ValueError, RuntimeError) as exc:  # ModelLoadError is a UserError
        result = {"error": printable(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    _worker()

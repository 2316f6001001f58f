"""``medvit-edge demo``: train -> export -> infer -> report, offline, in minutes on a laptop CPU.

The stages talk only through files, as they do in real use: a saved HF model folder, then ONNX
files with a manifest, then a predictions CSV and an evaluation report.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.files import atomic_writer

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    output: Path = Path("models/demo")
    data: Path | None = None  # a real class-folder directory or split CSV instead of phantoms
    model: str = "tiny"
    # 15 epochs: held-out int8 accuracy 0.94-0.98 over seeds 0-4 in about a CPU-minute and a half
    # (BENCHMARKS.md, "Demo"); 30 doubled the wait.
    epochs: float = 15
    train_per_class: int = 200
    test_per_class: int = 40
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.data = Path(self.data) if self.data else None


@dataclass
class DemoResult:
    output: Path
    run_dir: Path
    onnx_dir: Path
    predictions: Path
    report: dict[str, Any]
    infer_accuracy: float | None
    timings: dict[str, float] = field(default_factory=dict)


def demo(cfg: DemoConfig) -> DemoResult:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.inference.command import InferConfig, infer
    from medvit_edge.train import train

    timings: dict[str, float] = {}
    clock = _Clock(timings)
    with clock("data"):
        train_data, test_csv = _prepare_data(cfg)
    run_dir = cfg.output / "run"
    with clock("train"):
        train(_train_config(cfg, train_data, run_dir))
    # Real data: hold out the test split that training made (or that the data carried).
    test_csv = test_csv or _test_split_csv(run_dir / "split.csv", cfg.output / "test_labels.csv")
    with clock("export"):
        exported = export(ExportConfig(run_dir=run_dir, fp16=True, int8=True, allow_degraded=True))
    int8_file = next(v.file for v in exported.manifest.variants if v.variant == "int8-dynamic")
    predictions = cfg.output / "predictions.int8.csv"
    with clock("infer"):
        _stage("infer", f"{exported.output / int8_file} on the held-out test images")
        summary = infer(
            InferConfig(
                model=exported.output / int8_file,
                inputs=_paths_from_csv(test_csv),
                output=predictions,
                labels_csv=test_csv,
                progress=cfg.progress,
            )
        )
    with clock("evaluate"):
        _stage("evaluate", "every variant side by side")
        report = evaluate(
            EvaluateConfig(
                run_dir=run_dir,
                data=test_csv,
                split=None,
                output=cfg.output / "evaluation",
                bootstrap_samples=500,
            )
        )
    accuracy = summary.metrics["accuracy"] if summary.metrics else None
    return DemoResult(cfg.output, run_dir, exported.output, predictions, report, accuracy, timings)


def _prepare_data(cfg: DemoConfig) -> tuple[Path, Path | None]:
    """(training data for ``train``, labelled test CSV if known yet); phantoms unless ``cfg.data``."""
    if cfg.data is not None:
        _stage("data", f"using {cfg.data}")
        return cfg.data, None
    from medvit_edge.io.phantom import generate_phantom_dataset

    data_dir = cfg.output / "data"
    _stage("data", f"generating phantom ultrasound images in {data_dir}")
    split_csv = generate_phantom_dataset(data_dir, cfg.train_per_class, cfg.test_per_class, cfg.seed)
    return split_csv, _test_split_csv(split_csv, cfg.output / "test_labels.csv")


def _train_config(cfg: DemoConfig, data: Path, run_dir: Path) -> Any:
    from medvit_edge.train import TrainConfig

    _stage("train", f"{cfg.model} ViT (random init) for {cfg.epochs:g} epochs -> {run_dir}")
    return TrainConfig.from_recipe(
        "from-scratch",
        model=cfg.model,
        data=str(data),
        output=run_dir,
        epochs=cfg.epochs,
        seed=cfg.seed,
        progress=cfg.progress,
        exist_ok=True,  # the demo folder is the demo's own: each run replaces it whole
    )


def _test_split_csv(split_csv: Path, target: Path) -> Path:
    """The test rows of a split CSV as a ``path,label`` file with absolute paths."""
    from medvit_edge.io.labelled import read_labelled_set

    rows = read_labelled_set(split_csv, "test")
    if not rows:
        raise ValueError(f"{split_csv}: no test split to hold out")
    with atomic_writer(target) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([str(r.path.resolve()), r.label, "test"] for r in rows)
    return target


def _paths_from_csv(labels_csv: Path) -> list[str]:
    from medvit_edge.io.labelled import read_labelled_set

    return [str(image.path) for image in read_labelled_set(labels_csv)]


def _stage(name: str, message: str) -> None:
    logger.info("\n== %s: %s", name, message)


class _Clock:
    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self.name = ""

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.perf_counter() - self.started

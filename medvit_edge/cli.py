"""``medvit-edge``: thin click adapters that build a config and call the library.

Nothing heavy is imported at module level: each command imports its stage when it runs, and
if the stage's extra is missing it prints the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

EXTRA_MODULES = {
    "train": ("torch", "torchvision", "transformers", "accelerate", "matplotlib"),
    "export": ("torch", "transformers", "optimum", "onnx", "onnxruntime"),
    "runtime": ("onnxruntime",),
}
EXTRA_FOR = {"train": "train", "export": "export,cpu", "runtime": "cpu"}


def require(stage: str) -> None:
    """Exit with the install line when the stage's optional dependencies are missing."""
    missing = [m for m in EXTRA_MODULES[stage] if importlib.util.find_spec(m) is None]
    if missing:
        extra = EXTRA_FOR[stage]
        hint = (
            "'medvit-edge[cpu]' (or [gpu] on an NVIDIA machine)"
            if stage == "runtime"
            else f"'medvit-edge[{extra}]'"
        )
        raise click.ClickException(
            f"this command needs packages that are not installed: {', '.join(missing)}.\n"
            f"Install it with: pip install {hint}"
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medvit-edge")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), prog_name="medvit-edge")
def main() -> None:
    """Fine-tune a ViT on medical images, export it to ONNX (fp32/fp16/int8) and run it on
    edge devices without torch.

    \b
    Typical flow:
      medvit-edge train --model google/vit-large-patch16-224 --output models/busi
      medvit-edge export models/busi --fp16 --int8
      medvit-edge infer models/busi/onnx/model.int8.onnx scans/ --output preds.csv
      medvit-edge evaluate models/busi
    Try it offline first: medvit-edge demo
    """


def _options(**values: Any) -> dict[str, Any]:
    """Only the options the user set (None means 'not given'), so config files and defaults win."""
    return {key: value for key, value in values.items() if value is not None}


@main.command()
@click.option(
    "--model",
    help="Hub id, save_pretrained folder, or preset: tiny, small. [default: google/vit-large-patch16-224]",
)
@click.option(
    "--data",
    help="Hub dataset id, class-folder directory, or split CSV. "
    "[default: emre570/breastcancer-ultrasound-images]",
)
@click.option("--output", type=click.Path(path_type=Path), help="Run folder. [default: models/run]")
@click.option("--epochs", type=float, help="Training epochs. [default: 40]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON/YAML file of settings; flags override it.",
)
@click.option("--lr", "learning_rate", type=float, help="Learning rate. [default: 2e-5]")
@click.option("--batch-size", "train_batch_size", type=int, help="Training batch. [default: 10]")
@click.option("--eval-batch-size", type=int, help="Evaluation batch. [default: 4]")
@click.option("--weight-decay", type=float, help="AdamW weight decay. [default: 0.01]")
@click.option(
    "--metric", "metric_for_best_model", help="Best-checkpoint metric. [default: balanced_accuracy]"
)
@click.option("--val-fraction", type=float, help="Share of train carved out for validation. [default: 0.25]")
@click.option(
    "--class-weighted-loss/--no-class-weighted-loss",
    default=None,
    help="Weight the loss by inverse class frequency.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    help="auto: bf16 on capable GPUs, fp32 on CPU.",
)
@click.option(
    "--attn",
    "attn_implementation",
    type=click.Choice(["sdpa", "eager"]),
    help="Attention kernel. [default: sdpa]",
)
@click.option("--workers", "dataloader_workers", type=int, help="Dataloader worker processes. [default: 2]")
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="Trade compute for memory."
)
@click.option("--compile/--no-compile", "torch_compile", default=None, help="torch.compile the model.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the run folder's last checkpoint.")
@click.option(
    "--report-to",
    type=click.Choice(["none", "wandb", "tensorboard"]),
    help="Experiment tracker. [default: none]",
)
@click.option("--push-to-hub", is_flag=True, default=None, help="Push the best model to the hub at the end.")
@click.option("--hub-model-id", help="Hub repository for --push-to-hub.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (smoke runs).")
@click.option("--seed", type=int, help="Seed for splits and training. [default: 42]")
def train(config_file: Path | None, **values: Any) -> None:
    """Fine-tune a ViT classifier (the HF cookbook recipe by default).

    Writes the model (safetensors) with its preprocessing spec, metrics.json, split.csv,
    plots and a model card into the run folder.
    """
    require("train")
    from medvit_edge.train import TrainConfig
    from medvit_edge.train import train as run_training

    options = _options(**values)
    cfg = TrainConfig.from_file(config_file, **options) if config_file else TrainConfig(**options)
    result = run_training(cfg)
    test = result.metrics.get("test")
    click.echo(f"run folder: {result.run_dir}")
    if test:
        recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in test["per_class"].items())
        click.echo(
            f"test accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}; "
            f"recall: {recalls}"
        )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output", type=click.Path(path_type=Path), help="Where the ONNX files go. [default: RUN_DIR/onnx]"
)
@click.option("--fp16", is_flag=True, help="Also write a half-precision variant (fp32 inputs/outputs).")
@click.option(
    "--int8",
    type=click.Choice(["dynamic", "static"]),
    is_flag=False,
    flag_value="dynamic",
    default=None,
    help="Also write an int8 variant: dynamic (default when given alone) or static (calibrated).",
)
@click.option(
    "--target",
    type=click.Choice(["auto", "avx2", "avx512_vnni", "arm64"]),
    default="auto",
    show_default=True,
    help="CPU the int8 file is tuned for.",
)
@click.option(
    "--calibration",
    "calibration_method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="Static int8 range method.",
)
@click.option(
    "--calibration-data",
    type=click.Path(exists=True, path_type=Path),
    help="Images for static calibration. [default: the run's training images]",
)
@click.option("--calibration-size", type=int, default=64, show_default=True, help="Calibration images used.")
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Labelled validation images. [default: the run's validation split]",
)
@click.option("--data-split", help="With --data: use only this split of a split CSV.")
@click.option("--max-images", "max_validation_images", type=int, help="Validate on at most this many images.")
@click.option("--allow-degraded", is_flag=True, help="Exit 0 even when a variant fails its tolerances.")
@click.option("--opset", type=int, help="ONNX opset. [default: Optimum's]")
@click.option(
    "--optimize/--no-optimize",
    default=False,
    show_default=True,
    help="onnxruntime's offline transformer fusions on the fp32 graph (int8 builds on it); "
    "measured slower than onnxruntime's own online fusions, hence off.",
)
def export(**values: Any) -> None:
    """Export RUN_DIR to ONNX and validate every variant against PyTorch on real images.

    Writes model.onnx (fp32), model.fp16.onnx and model.int8.onnx as asked, each carrying its
    labels and preprocessing in its metadata, plus manifest.json with checksums and results.
    Exits 1 when a variant fails its tolerances (unless --allow-degraded).
    """
    require("export")
    from medvit_edge.export import ExportConfig, ExportValidationError
    from medvit_edge.export import export as run_export

    try:
        result = run_export(ExportConfig(**values))
    except ExportValidationError as exc:
        raise click.ClickException(str(exc)) from exc
    for entry in result.manifest["variants"]:
        check = entry["validation"]
        click.echo(
            f"{entry['file']:<20} {entry['status']:<7} {entry['size_bytes'] / 1e6:8.2f} MB  "
            f"max|Δlogit| {check['max_abs_logit_diff']:.2e}  agreement {check['top1_agreement']:.2%}"
        )
    click.echo(f"manifest: {result.output / 'manifest.json'}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="preds.csv or preds.jsonl (written atomically). [default: CSV on stdout]",
)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--threads", type=int, help="onnxruntime intra-op threads. [default: all cores]")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True
)
@click.option(
    "--verify", is_flag=True, default=None, help="Require a manifest.json beside MODEL and check its sha256."
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, path_type=Path),
    help="CSV of path,label for accuracy.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def infer(model: Path, paths: tuple[str, ...], quiet: bool, **values: Any) -> None:
    """Classify images (files, folders searched recursively, or globs) with an ONNX MODEL.

    Reads PNG, JPEG, BMP, TIFF and (with the [dicom] extra) DICOM, one row per frame. A bad
    file becomes an error row and the run goes on. Exit code: 0 all read, 1 some inputs
    failed, 2 the model or the arguments could not be used.
    """
    require("runtime")
    from medvit_edge.infer import EXIT_UNUSABLE, InferConfig, format_predictions
    from medvit_edge.infer import infer as run_infer
    from medvit_edge.runtime import ModelLoadError

    cfg = InferConfig(model=model, inputs=list(paths), progress=not quiet, **values)
    try:
        summary = run_infer(cfg)
    except ModelLoadError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_UNUSABLE)
    if cfg.output is None:
        format_predictions(sys.stdout, summary.rows, summary.labels)
        sys.stdout.flush()
    _print_infer_summary(summary)
    sys.exit(summary.exit_code)


def _print_infer_summary(summary: Any) -> None:
    click.echo(
        f"{summary.predictions} predictions from {summary.files - summary.failed_files} files; "
        f"{summary.failed_files} failed" + (f"; written to {summary.output}" if summary.output else ""),
        err=True,
    )
    for error in summary.errors[:20]:
        click.echo(f"  error: {error}", err=True)
    if summary.metrics:
        m = summary.metrics
        recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in m["per_class"].items())
        click.echo(f"accuracy {m['accuracy']:.3f} on {m['n']} labelled images; recall: {recalls}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Labelled set (split CSV or class folders). [default: RUN_DIR/split.csv]",
)
@click.option("--split", default="test", show_default=True, help="Split of a split CSV to evaluate.")
@click.option(
    "--output", type=click.Path(path_type=Path), help="Report folder. [default: RUN_DIR/evaluation]"
)
@click.option(
    "--onnx-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="[default: RUN_DIR/onnx]",
)
@click.option(
    "--pytorch/--no-pytorch", default=True, show_default=True, help="Include the PyTorch model (needs torch)."
)
@click.option("--threads", type=int, help="Threads for every model.")
@click.option("--no-plots", "plots", flag_value=False, default=True, help="Skip the PNG plots.")
def evaluate(**values: Any) -> None:
    """Compare the PyTorch model and every ONNX variant of RUN_DIR on the same labelled images.

    Writes report.md, report.json and plots: accuracy with 95% bootstrap intervals, recall and
    specificity per class, AUC, calibration, parity with PyTorch, latency, throughput, size.
    """
    require("runtime")
    from medvit_edge.evaluate import EvaluateConfig
    from medvit_edge.evaluate import evaluate as run_evaluate
    from medvit_edge.report import summary_table

    report = run_evaluate(EvaluateConfig(**values))
    click.echo("\n".join(summary_table(report["variants"], report["labels"])))
    click.echo(f"report: {EvaluateConfig(**values).output / 'report.md'}")


@main.command()
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Run on a real class-folder directory or split CSV instead of phantoms.",
)
@click.option("--output", type=click.Path(path_type=Path), default=Path("models/demo"), show_default=True)
@click.option("--epochs", type=float, default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(data: Path | None, output: Path, epochs: float, seed: int, quiet: bool) -> None:
    """Run the whole pipeline offline: phantom data -> tiny ViT -> fp32/fp16/int8 ONNX ->
    infer on held-out images -> side-by-side table. About a minute on 2 CPU cores."""
    require("train")
    require("export")
    from medvit_edge.demo import DemoConfig
    from medvit_edge.demo import demo as run_demo
    from medvit_edge.report import summary_table

    result = run_demo(DemoConfig(output=output, data=data, epochs=epochs, seed=seed, progress=not quiet))
    click.echo("\n" + "\n".join(summary_table(result.report["variants"], result.report["labels"])))
    if result.infer_accuracy is not None:
        click.echo(f"\ninfer (int8) accuracy on the held-out images: {result.infer_accuracy:.3f}")
    click.echo(
        "\n".join(
            [
                "",
                f"everything is under {result.output}/:",
                f"  trained model      {result.run_dir}/ (metrics.json, confusion_matrix.png, README.md)",
                f"  ONNX variants      {result.onnx_dir}/ (manifest.json)",
                f"  predictions        {result.predictions}",
                f"  evaluation report  {result.output / 'evaluation' / 'report.md'}",
                "  timings            " + ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items()),
            ]
        )
    )


if __name__ == "__main__":
    main()

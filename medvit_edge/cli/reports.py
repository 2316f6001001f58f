"""`evaluate` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medvit_edge.cli.common import existing_path, require
from medvit_edge.demo.run import DemoConfig
from medvit_edge.evaluation.evaluate import EvaluateConfig
from medvit_edge.options import choices, field_default
from medvit_edge.runtime.variants import Device


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@existing_path("--data", "Labelled set (split CSV or class folders). [default: RUN_DIR/split.csv]")
@click.option(
    "--split",
    default=field_default(EvaluateConfig, "split"),
    show_default=True,
    help="Split of a split CSV to evaluate (train, val/validation, test).",
)
@click.option(
    "--output", type=click.Path(path_type=Path), help="Report folder. [default: RUN_DIR/evaluation]"
)
@click.option(
    "--onnx-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="[default: RUN_DIR/onnx]",
)
@click.option(
    "--pytorch/--no-pytorch",
    default=field_default(EvaluateConfig, "pytorch"),
    show_default=True,
    help="Include the PyTorch model (needs torch).",
)
@click.option("--threads", type=int, help="Threads for every model.")
@click.option(
    "--device",
    type=click.Choice(choices(Device)),
    default=field_default(EvaluateConfig, "device"),
    show_default=True,
    help="Where the ONNX files run (PyTorch runs on the CPU).",
)
@click.option("--no-plots", "plots", flag_value=False, default=True, help="Skip the PNG plots.")
def evaluate(**values: Any) -> None:
    """Compare the PyTorch model and every ONNX variant of RUN_DIR on the same labelled images.

    RUN_DIR is a run folder (its onnx/ and weights), or any folder of model files, such as a
    deployed one holding a single file (then pass --data; --no-pytorch needs no fp32 file).
    Prints the majority-class baseline beside the accuracy, and warns when the model does not
    beat it, when a class is never recognised, or when --data overlaps the run's training images.

    Writes report.md, report.json and plots: accuracy, recall and specificity per class (Wilson
    95% intervals), AUC and balanced accuracy (bootstrap intervals), calibration before/after the
    stored temperature, operating points, refer coverage, risk-coverage, decisions vs fp32,
    parity with PyTorch, latency, throughput, size.
    """
    require("runtime")
    from medvit_edge.evaluation.evaluate import evaluate as run_evaluate
    from medvit_edge.evaluation.report import latency_note, summary_table
    from medvit_edge.evaluation.verdict import evaluation_verdict

    cfg = EvaluateConfig(**values)
    report = run_evaluate(cfg)
    click.echo("\n".join(summary_table(report.variants, report.labels)))
    click.echo(latency_note(report))
    for line in evaluation_verdict(report):
        click.echo(line, err=line.startswith("warning:"))
    click.echo(f"report: {cfg.output / 'report.md' if cfg.output else ''}")


@click.command()
@existing_path("--data", "Run on a real class-folder directory or split CSV instead of phantoms.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=field_default(DemoConfig, "output"),
    show_default=True,
)
@click.option("--epochs", type=float, default=field_default(DemoConfig, "epochs"), show_default=True)
@click.option("--seed", type=int, default=field_default(DemoConfig, "seed"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(data: Path | None, output: Path, epochs: float, seed: int, quiet: bool) -> None:
    """Run the whole pipeline offline: phantom data -> tiny ViT -> fp32/fp16/int8 ONNX ->
    infer on held-out images -> side-by-side table. About 4 minutes on 2 CPU cores, mostly
    training."""
    require("train")
    require("export")
    from medvit_edge.demo import demo as run_demo
    from medvit_edge.evaluation.report import summary_table

    result = run_demo(DemoConfig(output=output, data=data, epochs=epochs, seed=seed, progress=not quiet))
    click.echo("\n" + "\n".join(summary_table(result.report.variants, result.report.labels)))
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

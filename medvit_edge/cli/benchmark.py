"""`benchmark`: the speed (and accuracy) table of model files on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from medvit_edge.cli.common import existing_path, require
from medvit_edge.deploy.benchmark import BenchmarkConfig
from medvit_edge.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE, UserError
from medvit_edge.options import choices, field_default
from medvit_edge.progress import quiet
from medvit_edge.runtime.variants import Device


def _default(name: str) -> Any:
    return field_default(BenchmarkConfig, name)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--batch-size", "batch", type=int, default=_default("batch"), show_default=True, help="Images per call."
)
@click.option("--batch", "batch_alias", type=int, hidden=True)  # the old name, still accepted
@click.option("--threads", type=int, help="Threads per model. [default: the runtime's, all cores]")
@existing_path(
    "--images",
    "Labelled set (class folders or split CSV, like evaluate's --data): accuracy, and the timed "
    "images come from it. [default: synthetic 640x480 frames, no accuracy]",
)
@click.option(
    "--split", default=_default("split"), show_default=True, help="Split of a split CSV for --images."
)
@click.option("--runs", type=int, default=_default("runs"), show_default=True, help="Timed calls per round.")
@click.option(
    "--rounds",
    type=int,
    default=_default("rounds"),
    show_default=True,
    help="Interleaved rounds, each model in a fresh process.",
)
@click.option("--device", type=click.Choice(choices(Device)), default=_default("device"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout instead of the table.")
def benchmark(models: tuple[Path, ...], as_json: bool, batch_alias: int | None, **values: Any) -> None:
    """Time MODEL files on this machine: load time, p50/p95 ms per image, images/s, peak memory,
    and accuracy with --images. Run it on the scanner PC that will run the model.

    MODEL is a model file (.onnx, OpenVINO .xml), or a run folder or its onnx/ folder: then every
    variant its manifest lists that is there. Each model runs in a fresh process per round (its
    own load time and peak RSS), rounds interleaved; ms per image covers preprocess + model at
    --batch-size, on 640x480 frames or the --images (decoding excluded): unlike export's and
    info's figure (one small frame, batch 1) and evaluate's (model only).

    \b
    Exit code:
      0  every model was measured
      1  some models failed (a row with the error each)
      2  no model could be measured, or the arguments or images cannot be used (one line says why)
    """
    require("runtime")
    from medvit_edge.deploy.benchmark import benchmark as run_benchmark
    from medvit_edge.deploy.benchmark import format_report

    if batch_alias is not None:
        values["batch"] = batch_alias
    report = run_benchmark(BenchmarkConfig(models=list(models), progress=not quiet(), **values))
    if len(report.rows) == 1 and report.failed:
        raise UserError(report.rows[0].error)  # one model: one line, exit 2
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo("\n".join(format_report(report)))
    if len(report.failed) == len(report.rows):
        sys.exit(EXIT_UNUSABLE)
    sys.exit(EXIT_SOME_FAILED if report.failed else EXIT_OK)

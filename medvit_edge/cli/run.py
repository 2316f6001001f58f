"""`infer`, `info` and `check`: the commands that run on the device (numpy + onnxruntime)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click

from medvit_edge.cli.common import new_path_option, require
from medvit_edge.errors import EXIT_UNUSABLE, UserError, printable
from medvit_edge.inference.command import InferConfig
from medvit_edge.inference.ray_engine import Engine
from medvit_edge.options import choices, field_default
from medvit_edge.runtime.variants import Device


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="preds.csv or preds.jsonl, in a folder that exists (written atomically). [default: CSV on stdout]",
)
@click.option("--batch-size", type=int, default=field_default(InferConfig, "batch_size"), show_default=True)
@click.option("--threads", type=int, help="onnxruntime intra-op threads. [default: all cores]")
@click.option(
    "--device",
    type=click.Choice(choices(Device)),
    default=field_default(InferConfig, "device"),
    show_default=True,
)
@click.option(
    "--verify", is_flag=True, default=None, help="Require a manifest.json beside MODEL and check its sha256."
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of path,label for accuracy.",
)
@new_path_option(
    "--dicom-out", "Folder for one DICOM Structured Report per DICOM input (needs [dicom]).", folder=True
)
@new_path_option(
    "--audit-log",
    "Append one JSON line per prediction here, on disk before any result is written.",
    folder=False,
)
@new_path_option(
    "--overlays",
    "Folder for one PNG per image: the frame, where the model looked (attention rollout) and "
    "the label, probability and decision. Needs model.explain.onnx (export --explain).",
    folder=True,
)
@click.option(
    "--explain-model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --overlays: the explainability model. [default: model.explain.onnx beside MODEL]",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--engine",
    type=click.Choice(choices(Engine)),
    default="local",
    show_default=True,
    help="ray: a pool of Ray actors over a cluster (archives); --output may then also be .parquet, "
    "or a name without a suffix for a folder of Parquet parts.",
)
@click.option(
    "--address",
    help="With --engine ray: 'auto' joins the cluster 'ray start' made; ray://HOST:10001 a remote "
    "one. [default: a local Ray on this machine]",
)
@click.option(
    "--workers", type=int, help="With --engine ray: model actors. [default: one per GPU, else per 4 CPUs]"
)
def infer(
    model: Path,
    paths: tuple[str, ...],
    quiet: bool,
    engine: str,
    address: str | None,
    workers: int | None,
    **values: Any,
) -> None:
    """Classify images (files, folders searched recursively, or globs) with an ONNX MODEL.

    MODEL is a model file, or a run folder or its onnx/ folder: then the variant export
    recommended (the fastest that passed, timed on the export machine) runs when this CPU has
    that machine's ISA; else the int8 file when manifest.json says it passed validation, else
    model.onnx (fp32). Reads PNG, JPEG, BMP, TIFF
    and (with the [dicom] extra) DICOM, one row per frame. A bad file becomes an error row and the
    run goes on. In the CSV, a text cell starting with = + - @ tab or CR gets a leading ' so no
    spreadsheet runs it as a formula.

    \b
    Exit code:
      0  every input was read
      1  some inputs failed (one error row each), or no input file was found
      2  the model, the arguments or the output could not be used: one line says why. Checked
         before the run; if the output cannot be written at the end (disk full), the previous
         file is kept and the predictions are printed on stdout instead.
    SIGTERM or SIGHUP stops the run cleanly (exit 143 or 129): no temporary file is left and
    an existing output file is unchanged.
    """
    require("runtime")
    from medvit_edge.files import Terminated, exit_on_signals
    from medvit_edge.inference.command import InferConfig, OutputWriteError, format_predictions

    run_infer = _infer_engine(engine, address, workers, values)
    cfg = InferConfig(model=model, inputs=list(paths), progress=not quiet, **values)
    try:
        with exit_on_signals():
            summary = run_infer(cfg)
    except Terminated as exc:
        kept = f"; {printable(cfg.output)} was not written" if cfg.output else ""
        click.echo(f"Error: stopped by {exc.signal_name}{kept}", err=True)
        raise
    except OutputWriteError as exc:
        _print_instead_of_the_output(exc)
        sys.exit(EXIT_UNUSABLE)
    except UserError as exc:
        click.echo(f"Error: {printable(exc)}", err=True)
        sys.exit(EXIT_UNUSABLE)
    if cfg.output is None:
        format_predictions(sys.stdout, summary.rows, summary.labels, terminal=sys.stdout.isatty())
        sys.stdout.flush()
    _print_infer_summary(summary)
    sys.exit(summary.exit_code)


def _infer_engine(engine: str, address: str | None, workers: int | None, values: dict[str, Any]) -> Any:
    """``medvit_edge.inference.command.infer``, or the Ray engine with its cluster options bound."""
    from medvit_edge.inference.command import infer as local_infer

    if engine != "ray":
        if address is not None or workers is not None:
            raise UserError("--address and --workers go with --engine ray")
        return local_infer
    require("ray")
    from medvit_edge.inference.ray_engine import infer_on_ray

    if values.get("dicom_out") or values.get("audit_log") or values.get("overlays"):
        raise UserError("--dicom-out, --audit-log and --overlays go with the local engine")
    return functools.partial(infer_on_ray, address=address, workers=workers)


def _print_instead_of_the_output(exc: Any) -> None:
    """The output file could not be written (disk full): the previous file is kept, and the
    predictions go to stdout so the run's work is not lost."""
    from medvit_edge.inference.command import format_predictions

    _print_infer_summary(exc.summary)
    try:
        format_predictions(sys.stdout, exc.summary.rows, exc.summary.labels, terminal=sys.stdout.isatty())
        sys.stdout.flush()
        fallback = "; the predictions were printed on stdout instead"
    except OSError:
        fallback = "; printing them on stdout failed too"
    click.echo(f"Error: {printable(exc)}{fallback}", err=True)


def _print_infer_summary(summary: Any) -> None:
    """Counts, the first errors and the accuracy, on stderr; every path and error escaped."""

    skipped = f" ({printable(summary.skipped)})" if summary.skipped else ""
    if not summary.files:
        where = ", ".join(summary.inputs) or "(no paths given)"
        click.echo(f"no input files found in {printable(where)}{skipped}", err=True)
        skipped = ""
    written = f"; written to {printable(summary.output)}" if summary.output else ""
    if getattr(summary, "reports", None):
        written += f"; {len(summary.reports)} DICOM reports in {printable(summary.reports[0].parent)}"
    if getattr(summary, "overlays", None):
        written += f"; {len(summary.overlays)} overlays in {printable(summary.overlays[0].parent)}"
    click.echo(
        f"{summary.predictions} predictions from {summary.files - summary.failed_files} files; "
        f"{summary.failed_files} failed{skipped}{written}",
        err=True,
    )
    for error in summary.errors[:20]:
        click.echo(f"  error: {printable(error)}", err=True)
    if len(summary.errors) > 20:
        click.echo(f"  ... and {len(summary.errors) - 20} more (see the error column)", err=True)
    if summary.metrics:
        m = summary.metrics
        from medvit_edge.evaluation.metrics import recall_text

        recalls = recall_text(m["per_class"])
        click.echo(
            f"accuracy {m['accuracy']:.3f} on {m['n']} labelled images; recall: {printable(recalls)}",
            err=True,
        )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout instead of the table.")
def info(model: Path, as_json: bool) -> None:
    """What MODEL is, read from the file: labels, variant, inputs and outputs, preprocessing,
    quantization (mode, target, weight bits), opset, producer, sha256 and manifest status,
    versions, provenance, model name and version, intended use.

    MODEL is a model file, or a folder (a run folder or its onnx/): then every .onnx file there
    (JSON: {"folder": ..., "models": [...]}).
    """
    require("runtime")
    import json

    from medvit_edge.deploy.info import folder_info, format_info, model_info

    data = folder_info(model) if model.is_dir() else model_info(model)
    if as_json:
        click.echo(json.dumps(data, indent=2))  # ASCII-escaped: safe on any terminal
        return
    models = data.get("models", [data])
    click.echo("\n\n".join("\n".join(format_info(one)) for one in models))


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--device",
    type=click.Choice(choices(Device)),
    default=field_default(InferConfig, "device"),
    show_default=True,
    help="Where to run, as the deployment will.",
)
@click.option("--threads", type=int, help="onnxruntime intra-op threads. [default: all cores]")
@click.option("--json", "as_json", is_flag=True, help="The results as JSON on stdout.")
def check(model: Path, device: str, threads: int | None, as_json: bool) -> None:
    """Re-run the golden files export wrote (onnx/golden/) with the installed onnxruntime on this
    machine: a field test for a new device, onnxruntime version or CPU.

    MODEL is a model folder (every variant present is checked) or one model file. Each variant
    must give its expected probabilities within its tolerance, end to end from the golden PNGs
    and (numpy-path files) from the exact preprocessed tensor.

    \b
    Exit code:
      0  every variant agrees
      1  a variant disagrees beyond its tolerance
      2  no golden files, damaged ones, or a model file they were not made for
    """
    require("runtime")
    import json

    from medvit_edge.deploy.golden import check as run_check
    from medvit_edge.deploy.golden import format_report
    from medvit_edge.runtime.manifest import to_json_dict

    report = run_check(model, device=device, threads=threads)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({**to_json_dict(report), "exit_code": report.exit_code}, indent=2))
    else:
        click.echo("\n".join(format_report(report)))
    sys.exit(report.exit_code)

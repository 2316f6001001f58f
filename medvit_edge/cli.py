"""``medvit-edge``: thin click adapters that build a config and call the library.

Nothing heavy is imported at module level: each command imports its stage when it runs, and
if the stage's extra is missing it prints the ``pip install`` line that fixes it. Choices come
from the configs' ``Literal`` aliases and defaults from their fields (medvit_edge.options), so
each is written once.

Every command keeps one exit-code contract (medvit_edge.errors): 0 done, 1 some inputs or
variants failed, 2 the model, data or arguments are unusable. A user's mistake is one line on
stderr; a traceback only with ``--debug`` (or for a real bug).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import click

from medvit_edge.demo.run import DemoConfig
from medvit_edge.errors import EXIT_UNUSABLE, UserError, printable
from medvit_edge.evaluate import EvaluateConfig
from medvit_edge.export.config import CalibrationMethod, ExportConfig, Int8Mode, TargetChoice
from medvit_edge.infer import InferConfig
from medvit_edge.options import choices, field_default, literal_values
from medvit_edge.train.config import Attention, Precision, Recipe, ReportTo, TrainConfig
from medvit_edge.variants import Device

EXTRA_MODULES = {
    "train": ("torch", "torchvision", "transformers", "accelerate", "matplotlib"),
    "export": ("torch", "transformers", "optimum", "onnx", "onnxruntime"),
    "runtime": ("onnxruntime",),
}
EXTRA_FOR = {"train": "train", "export": "export,cpu", "runtime": "cpu"}


class MissingExtra(click.ClickException):
    exit_code = EXIT_UNUSABLE


def require(stage: str) -> None:
    """Exit 2 with the install line when the stage's optional dependencies are missing."""
    missing = [m for m in EXTRA_MODULES[stage] if importlib.util.find_spec(m) is None]
    if missing:
        extra = EXTRA_FOR[stage]
        hint = (
            "'medvit-edge[cpu]' (or [gpu] on an NVIDIA machine)"
            if stage == "runtime"
            else f"'medvit-edge[{extra}]'"
        )
        raise MissingExtra(
            f"this command needs packages that are not installed: {', '.join(missing)}.\n"
            f"Install it with: pip install {hint}"
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medvit-edge")
    except PackageNotFoundError:
        return "unknown"


def _default(config: type, name: str) -> str:
    return f"[default: {field_default(config, name)}]"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it), with
    control characters escaped: messages carry file names."""

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        sys.stderr.write("\n".join(printable(line) for line in text.split("\n")) + "\n")
        sys.stderr.flush()


def configure_logging(verbose: int, quiet: bool) -> None:
    """medvit-edge's loggers print their messages on stderr: INFO by default, WARNING with -q,
    DEBUG with -v."""
    logger = logging.getLogger("medvit_edge")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _StderrHandler)]
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


class _Commands(click.Group):
    """A user's mistake (``UserError``, or an OS error such as a missing or unwritable file)
    becomes one line and its exit code; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, OSError) as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {printable(exc)}", err=True)
            ctx.exit(getattr(exc, "exit_code", EXIT_UNUSABLE))


@click.group(
    cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(_version(), prog_name="medvit-edge")
@click.option("-v", "--verbose", count=True, help="More detail on stderr.")
@click.option("-q", "--quiet", "quiet_logs", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(verbose: int, quiet_logs: bool, debug: bool) -> None:
    """Fine-tune a ViT on medical images, export it to ONNX (fp32/fp16/int8) and run it on
    edge devices without torch.

    \b
    Typical flow:
      medvit-edge train --model google/vit-large-patch16-224 --output models/busi
      medvit-edge export models/busi --fp16 --int8
      medvit-edge infer models/busi scans/ --output preds.csv
      medvit-edge evaluate models/busi
    Try it offline first: medvit-edge demo

    \b
    Exit codes (every command): 0 done; 1 some inputs or variants failed;
    2 the model, data or arguments cannot be used (one line says why).
    """
    configure_logging(verbose, quiet_logs)


def _options(**values: Any) -> dict[str, Any]:
    """Only the options the user set (None means 'not given'), so config files and defaults win."""
    return {key: value for key, value in values.items() if value is not None}


def _train_setting(flag: str, field: str, help_text: str, kind: Any = str) -> Any:
    """A train option that defaults to "not given" (so a --config file can set it) and shows
    TrainConfig's default; ``kind`` is a type or a ``Literal`` alias (then its values are the
    choices)."""
    is_literal = literal_values(kind) is not None
    return click.option(
        flag,
        field,
        type=click.Choice(choices(kind)) if is_literal else kind,
        help=f"{help_text} {_default(TrainConfig, field)}",
    )


@main.command()
@_train_setting("--model", "model", "Hub id, save_pretrained folder, or preset: tiny, small.")
@_train_setting("--data", "data", "Hub dataset id, class-folder directory, or split CSV.")
@_train_setting("--output", "output", "Run folder.", click.Path(path_type=Path))
@click.option(
    "--recipe",
    type=click.Choice(choices(Recipe)),
    help="Named settings to start from: cookbook (fine-tuning) or from-scratch (tiny/small presets). "
    "[default: cookbook]",
)
@_train_setting("--epochs", "epochs", "Training epochs.", float)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON/YAML file of settings; flags override it.",
)
@_train_setting("--lr", "learning_rate", "Learning rate.", float)
@_train_setting("--batch-size", "train_batch_size", "Training batch.", int)
@_train_setting("--eval-batch-size", "eval_batch_size", "Evaluation batch.", int)
@_train_setting("--weight-decay", "weight_decay", "AdamW weight decay.", float)
@_train_setting("--metric", "metric_for_best_model", "Best-checkpoint metric.")
@_train_setting("--val-fraction", "val_fraction", "Share of train carved out for validation.", float)
@click.option(
    "--class-weighted-loss/--no-class-weighted-loss",
    default=None,
    help="Weight the loss by inverse class frequency.",
)
@_train_setting("--precision", "precision", "auto: bf16 on capable GPUs, fp32 on CPU.", Precision)
@_train_setting("--attn", "attn_implementation", "Attention kernel.", Attention)
@_train_setting("--workers", "dataloader_workers", "Dataloader worker processes.", int)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="Trade compute for memory."
)
@click.option("--compile/--no-compile", "torch_compile", default=None, help="torch.compile the model.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the run folder's last checkpoint.")
@_train_setting("--report-to", "report_to", "Experiment tracker.", ReportTo)
@click.option("--push-to-hub", is_flag=True, default=None, help="Push the best model to the hub at the end.")
@click.option("--hub-model-id", help="Hub repository for --push-to-hub.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (smoke runs).")
@_train_setting("--seed", "seed", "Seed for splits and training.", int)
def train(config_file: Path | None, recipe: str | None, **values: Any) -> None:
    """Fine-tune a ViT classifier (the HF cookbook recipe by default).

    Writes the model (safetensors) with its preprocessing spec, metrics.json, split.csv,
    plots and a model card into the run folder.
    """
    require("train")
    from medvit_edge.train import train as run_training

    options = _options(**values)
    if config_file:
        cfg = TrainConfig.from_file(config_file, **options, **_options(recipe=recipe))
    else:
        cfg = TrainConfig.from_recipe(recipe or "cookbook", **options)  # type: ignore[arg-type]
    result = run_training(cfg)
    test = result.metrics.get("test")
    click.echo(f"run folder: {result.run_dir}")
    if test:
        recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in test["per_class"].items())
        click.echo(
            f"test accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}; "
            f"recall: {recalls}"
        )


def _existing_path(flag: str, help_text: str) -> Any:
    """An option naming a file or folder that must exist (click says which, with exit 2)."""
    return click.option(flag, type=click.Path(exists=True, path_type=Path), help=help_text)


def _config_choice(flag: str, field: str, alias: Any, help_text: str) -> Any:
    """An export option whose choices are a ``Literal`` and whose default is ExportConfig's."""
    return click.option(
        flag,
        field,
        type=click.Choice(choices(alias)),
        default=field_default(ExportConfig, field),
        show_default=True,
        help=help_text,
    )


class _ExportCommand(click.Command):
    """Keeps the old spelling ``--int8 static`` working now that ``--int8`` is a flag (as an
    optional-value option it swallowed RUN_DIR in ``export --int8 RUN_DIR``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        tokens = iter(args)
        for token in tokens:
            mode = token.partition("=")[2] if token.startswith("--int8=") else None
            if token == "--int8":
                following = next(tokens, None)
                is_mode = following in choices(Int8Mode) and not Path(following or "").exists()
                rewritten += ["--int8", "--int8-mode", following] if is_mode else ["--int8"]
                if following is not None and not is_mode:
                    rewritten.append(following)
            elif mode is not None:
                rewritten += ["--int8", "--int8-mode", mode]
            else:
                rewritten.append(token)
        return super().parse_args(ctx, rewritten)


@main.command(cls=_ExportCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output", type=click.Path(path_type=Path), help="Where the ONNX files go. [default: RUN_DIR/onnx]"
)
@click.option("--fp16", is_flag=True, help="Also write a half-precision variant (fp32 inputs/outputs).")
@click.option("--int8", is_flag=True, help="Also write an int8 variant (see --int8-mode and --target).")
@_config_choice(
    "--int8-mode",
    "int8_mode",
    Int8Mode,
    "dynamic: ranges computed per image at run time; static: calibrated on training images.",
)
@_config_choice("--target", "target", TargetChoice, "CPU the int8 file is tuned for (auto: this CPU).")
@_config_choice("--calibration", "calibration_method", CalibrationMethod, "Static int8 range method.")
@_existing_path("--calibration-data", "Images for static calibration. [default: the run's training images]")
@click.option(
    "--calibration-size",
    type=int,
    default=field_default(ExportConfig, "calibration_size"),
    show_default=True,
    help="Calibration images used.",
)
@_existing_path("--data", "Labelled validation images. [default: the run's validation split]")
@click.option("--data-split", help="With --data: use only this split of a split CSV.")
@click.option("--max-images", "max_validation_images", type=int, help="Validate on at most this many images.")
@click.option("--allow-degraded", is_flag=True, help="Exit 0 even when a variant fails its tolerances.")
@click.option("--opset", type=int, help="ONNX opset. [default: Optimum's]")
@click.option(
    "--optimize/--no-optimize",
    default=field_default(ExportConfig, "optimize"),
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
    from medvit_edge.export import export as run_export

    result = run_export(ExportConfig(**values))
    for record in result.manifest.variants:
        check = record.validation
        click.echo(
            f"{record.file:<20} {record.status:<7} {record.size_bytes / 1e6:8.2f} MB  "
            f"max|Δlogit| {check.max_abs_logit_diff:.2e}  agreement {check.top1_agreement:.2%}"
        )
    click.echo(f"manifest: {result.output / 'manifest.json'}")


@main.command()
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
@click.option("--quiet", is_flag=True, help="No progress bar.")
def infer(model: Path, paths: tuple[str, ...], quiet: bool, **values: Any) -> None:
    """Classify images (files, folders searched recursively, or globs) with an ONNX MODEL.

    MODEL is a model file, or a run folder or its onnx/ folder: then the int8 file runs when
    manifest.json says it passed validation, else model.onnx (fp32). Reads PNG, JPEG, BMP, TIFF
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
    from medvit_edge.errors import EXIT_UNUSABLE, UserError, printable
    from medvit_edge.files import Terminated, exit_on_signals
    from medvit_edge.infer import InferConfig, OutputWriteError, format_predictions
    from medvit_edge.infer import infer as run_infer

    cfg = InferConfig(model=model, inputs=list(paths), progress=not quiet, **values)
    try:
        with exit_on_signals():
            summary = run_infer(cfg)
    except Terminated as exc:
        kept = f"; {printable(cfg.output)} was not written" if cfg.output else ""
        click.echo(f"Error: stopped by {exc.signal_name}{kept}", err=True)
        raise
    except OutputWriteError as exc:
        _print_infer_summary(exc.summary)
        try:
            format_predictions(sys.stdout, exc.summary.rows, exc.summary.labels, terminal=sys.stdout.isatty())
            sys.stdout.flush()
            fallback = "; the predictions were printed on stdout instead"
        except OSError:
            fallback = "; printing them on stdout failed too"
        click.echo(f"Error: {printable(exc)}{fallback}", err=True)
        sys.exit(EXIT_UNUSABLE)
    except UserError as exc:
        click.echo(f"Error: {printable(exc)}", err=True)
        sys.exit(EXIT_UNUSABLE)
    if cfg.output is None:
        format_predictions(sys.stdout, summary.rows, summary.labels, terminal=sys.stdout.isatty())
        sys.stdout.flush()
    _print_infer_summary(summary)
    sys.exit(summary.exit_code)


def _print_infer_summary(summary: Any) -> None:
    """Counts, the first errors and the accuracy, on stderr; every path and error escaped."""
    from medvit_edge.errors import printable

    skipped = f" ({printable(summary.skipped)})" if summary.skipped else ""
    if not summary.files:
        where = ", ".join(summary.inputs) or "(no paths given)"
        click.echo(f"no input files found in {printable(where)}{skipped}", err=True)
        skipped = ""
    written = f"; written to {printable(summary.output)}" if summary.output else ""
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
        recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in m["per_class"].items())
        click.echo(
            f"accuracy {m['accuracy']:.3f} on {m['n']} labelled images; recall: {printable(recalls)}",
            err=True,
        )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_existing_path("--data", "Labelled set (split CSV or class folders). [default: RUN_DIR/split.csv]")
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
@click.option("--no-plots", "plots", flag_value=False, default=True, help="Skip the PNG plots.")
def evaluate(**values: Any) -> None:
    """Compare the PyTorch model and every ONNX variant of RUN_DIR on the same labelled images.

    Writes report.md, report.json and plots: accuracy with 95% bootstrap intervals, recall and
    specificity per class, AUC, calibration, parity with PyTorch, latency, throughput, size.
    """
    require("runtime")
    from medvit_edge.evaluate import evaluate as run_evaluate
    from medvit_edge.report import summary_table

    cfg = EvaluateConfig(**values)
    report = run_evaluate(cfg)
    click.echo("\n".join(summary_table(report.variants, report.labels)))
    click.echo(f"report: {cfg.output / 'report.md' if cfg.output else ''}")


@main.command()
@_existing_path("--data", "Run on a real class-folder directory or split CSV instead of phantoms.")
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
    infer on held-out images -> side-by-side table. About a minute on 2 CPU cores."""
    require("train")
    require("export")
    from medvit_edge.demo import demo as run_demo
    from medvit_edge.report import summary_table

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


if __name__ == "__main__":
    main()

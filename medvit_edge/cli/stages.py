"""`train` and `export`: the heavy stages (their extras are checked when a command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from medvit_edge.cli.common import (
    config_default,
    default_text,
    existing_path,
    only_given,
    require,
)
from medvit_edge.errors import UserError
from medvit_edge.evaluation.verdict import result_line
from medvit_edge.export.config import CalibrationMethod, ExportConfig, Int8Mode, TargetChoice
from medvit_edge.io.checkpoint import free_run_folder
from medvit_edge.options import choices, field_default, literal_values
from medvit_edge.progress import quiet
from medvit_edge.runtime.recommend import export_latency_scope
from medvit_edge.train.config import (
    COOKBOOK_MODEL,
    Attention,
    Augment,
    Precision,
    Recipe,
    ReportTo,
    TrainConfig,
    TrainDevice,
    default_recipe,
)


def _train_setting(flag: str, field: str, help_text: str, kind: Any = str) -> Any:
    """A train option that defaults to "not given" (so a --config file can set it) and shows
    TrainConfig's default; ``kind`` is a type or a ``Literal`` alias (then its values are the
    choices)."""
    is_literal = literal_values(kind) is not None
    return click.option(
        flag,
        field,
        type=click.Choice(choices(kind)) if is_literal else kind,
        help=f"{help_text} {default_text(TrainConfig, field)}",
    )


@click.command()
@_train_setting("--model", "model", "Hub id, save_pretrained folder, or preset: tiny, small, small-224.")
@_train_setting("--data", "data", "Hub dataset id, class-folder directory, or split CSV.")
@_train_setting(
    "--output",
    "output",
    "Run folder. Given, it must not hold a model (see --resume, --exist-ok); not given, an "
    "occupied models/run becomes models/run-2, -3, ... (said on stderr).",
    click.Path(path_type=Path),
)
@click.option(
    "--recipe",
    type=click.Choice(choices(Recipe)),
    help="Named settings to start from: cookbook (fine-tuning); from-scratch, scratch-balanced, "
    "scratch-strong (presets trained from random init; see docs/train-recipes.md). "
    "[default: from-scratch for the presets --model tiny|small|small-224, else cookbook]",
)
@_train_setting("--epochs", "epochs", "Training epochs.", float)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON/YAML file of settings; flags override it.",
)
@_train_setting("--lr", "learning_rate", "Learning rate.", float)
@_train_setting("--batch-size", "train_batch_size", "Training batch per device (GPU/process).", int)
@_train_setting("--eval-batch-size", "eval_batch_size", "Evaluation batch.", int)
@_train_setting(
    "--grad-accum", "gradient_accumulation_steps", "Batches per optimizer step (per device).", int
)
@_train_setting("--weight-decay", "weight_decay", "AdamW weight decay.", float)
@_train_setting("--metric", "metric_for_best_model", "Best-checkpoint metric.")
@_train_setting("--val-fraction", "val_fraction", "Share of train carved out for validation.", float)
@click.option(
    "--class-weighted-loss/--no-class-weighted-loss",
    default=None,
    help="Weight the loss by inverse class frequency.",
)
@_train_setting("--augment", "augment", "Extra training augmentation after crop and flip.", Augment)
@_train_setting("--label-smoothing", "label_smoothing", "Label smoothing of the cross-entropy.", float)
@_train_setting("--mixup", "mixup_alpha", "Mixup Beta(a, a); 0 turns it off.", float)
@_train_setting("--cutmix", "cutmix_alpha", "CutMix Beta(a, a); 0 turns it off.", float)
@_train_setting("--drop-path", "drop_path", "Stochastic depth of the last block.", float)
@click.option(
    "--balanced-sampling/--no-balanced-sampling",
    default=None,
    help="Draw training images so that every class is equally likely.",
)
@_train_setting("--precision", "precision", "auto: bf16 on capable GPUs, fp32 on CPU.", Precision)
@_train_setting("--attn", "attn_implementation", "Attention kernel.", Attention)
@_train_setting("--workers", "dataloader_workers", "Dataloader worker processes.", int)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="Trade compute for memory."
)
@click.option("--compile/--no-compile", "torch_compile", default=None, help="torch.compile the model.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the run folder's last checkpoint.")
@click.option(
    "--exist-ok",
    is_flag=True,
    default=None,
    help="Train over the model in --output (its old export is then refused until exported again).",
)
@_train_setting("--device", "device", "Where to train: auto uses a CUDA GPU when there is one.", TrainDevice)
@_train_setting("--report-to", "report_to", "Experiment tracker.", ReportTo)
@click.option("--push-to-hub", is_flag=True, default=None, help="Push the best model to the hub at the end.")
@click.option("--hub-model-id", help="Hub repository for --push-to-hub.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (smoke runs).")
@_train_setting("--seed", "seed", "Seed for splits and training.", int)
@_train_setting(
    "--merge-tokens",
    "merge_tokens",
    "Train with token merging on: R token pairs merged in every encoder layer (0: off); export "
    "then writes merged twins at this R by default.",
    int,
)
def train(config_file: Path | None, recipe: str | None, **values: Any) -> None:
    """Fine-tune a ViT classifier (the HF cookbook recipe by default; the presets --model
    tiny|small|small-224 train from random init with the from-scratch recipe: lr 1e-3, batch 32,
    warm-up 5%).

    Writes the model (safetensors) with its preprocessing spec, metrics.json, split.csv,
    plots and a model card into the run folder, and prints the test accuracy beside the
    majority-class baseline (a warning when the model does not beat it). The defaults shown
    below are the cookbook's; a recipe replaces them unless the option is given.
    """
    require("train")
    from medvit_edge.train import train as run_training

    options = only_given(**values)
    if config_file:
        cfg = TrainConfig.from_file(config_file, **options, **only_given(recipe=recipe))
    else:
        chosen = recipe or default_recipe(options.get("model", COOKBOOK_MODEL))
        cfg = TrainConfig.from_recipe(chosen, **options)  # type: ignore[arg-type]
    if "output" not in options and not (cfg.resume or cfg.exist_ok):
        _new_run_folder(cfg)
    cfg.progress = cfg.progress and not quiet()
    result = run_training(cfg)
    if not result.main_process:
        return  # one process of a distributed run speaks for all
    click.echo(f"run folder: {result.run_dir}")
    test = result.metrics.get("test")
    if test:
        line, warnings = result_line(test, "test")
        click.echo(line)
        for warning in warnings:
            click.echo(warning, err=True)


def _new_run_folder(cfg: TrainConfig) -> None:
    """No --output: a default folder that holds a model gives way to the next free name."""
    chosen = free_run_folder(cfg.output)
    if chosen != cfg.output:
        click.echo(f"{cfg.output} holds a trained model: this run goes to {chosen}", err=True)
        cfg.output = chosen


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


@click.command()
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
@_config_choice(
    "--target",
    "target",
    TargetChoice,
    "CPUs the int8 file must be right on. portable: 7-bit weights, no saturation on any CPU; "
    "avx512_vnni / arm64: 8-bit weights, for x86 with VNNI / ARM64 only; auto: the CPU that exports.",
)
@_config_choice("--calibration", "calibration_method", CalibrationMethod, "Static int8 range method.")
@existing_path("--calibration-data", "Images for static calibration. [default: the run's training images]")
@config_default("--calibration-size", ExportConfig, "calibration_size", int, "Calibration images used.")
@existing_path("--data", "Labelled validation images. [default: the run's validation split]")
@click.option("--data-split", help="With --data: use only this split of a split CSV.")
@click.option("--max-images", "max_validation_images", type=int, help="Validate on at most this many images.")
@click.option("--allow-degraded", is_flag=True, help="Exit 0 even when a variant fails its tolerances.")
@click.option("--opset", type=int, help="ONNX opset. [default: Optimum's]")
@click.option(
    "--model-version",
    type=click.IntRange(min=1),
    help="Whole-number model version (ONNX model_version and metadata). "
    "[default: the model card's model_version, else 1]",
)
@click.option(
    "--golden-images",
    type=click.IntRange(min=0),
    default=None,
    help="onnx/golden/ (every variant's expected outputs, for `medvit-edge check`) holds N REAL "
    "validation images instead of the default synthetic phantoms; they travel with the deployed "
    "files and may show patient data burnt into the pixels (0: no golden files).",
)
@click.option(
    "--raw-input",
    is_flag=True,
    help="Also write a raw-input twin of each variant (model.raw.onnx, ...): uint8 RGB "
    "[N, H, W, 3] in, resize/crop/normalise in the graph, probabilities and logits out.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also write model.explain.onnx: fp32 plus each layer's attention probabilities as extra "
    "outputs, for `infer --overlays` heat maps (not deployed).",
)
@click.option(
    "--openvino",
    is_flag=True,
    help="Also write OpenVINO IR variants: model.openvino.xml (fp32), and with --int8 "
    "model.openvino-int8.xml (NNCF post-training int8); each with its .bin. Needs "
    "[openvino-export] (OpenVINO and NNCF); running the IRs needs only [openvino].",
)
@click.option(
    "--optimize/--no-optimize",
    default=field_default(ExportConfig, "optimize"),
    show_default=True,
    help="onnxruntime's offline transformer fusions on the fp32 graph (int8 builds on it); "
    "measured slower than onnxruntime's own online fusions, hence off.",
)
@click.option(
    "--operating-point",
    "operating_points",
    multiple=True,
    metavar="LABEL-GOAL=T",
    help="A decision threshold chosen on the validation images, e.g. malignant-sensitivity=0.95 or "
    "malignant-specificity=0.9 (GOAL sensitivity|specificity); repeatable, the first one is applied "
    "by the runtime. [default: none: the most probable label]",
)
@click.option(
    "--refer-risk",
    type=float,
    help="Decide 'refer' when unsure: the threshold on the top probability that keeps the error among "
    "accepted cases at or below this (e.g. 0.05). [default: never refer]",
)
@click.option(
    "--refer-confidence",
    type=float,
    default=field_default(ExportConfig, "refer_confidence"),
    show_default=True,
    help="With --refer-risk: the probability that the error bound holds on new images, certified on "
    "the validation images by a binomial bound (0: met on the validation images only, no guarantee).",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=field_default(ExportConfig, "calibrate"),
    show_default=True,
    help="Temperature scaling fitted on the validation images (NLL): probabilities that mean what "
    "they say. The policy goes into every variant's metadata.",
)
@click.option(
    "--merge-tokens",
    metavar="R|auto|r0,r1,...",
    help="Also write token-merged twins of every variant (model.tome8.onnx, model.int8.tome8.onnx ...): "
    "R token pairs merged in every encoder layer, one count per layer, or auto (the largest R whose "
    "twin passes the int8 guard on the labelled validation images). Validated against the unmerged "
    "model. 0: none. [default: what the run was trained with (train --merge-tokens), else none]",
)
def export(**values: Any) -> None:
    """Export RUN_DIR to ONNX and validate every variant against PyTorch on real images.

    Writes model.onnx (fp32), model.fp16.onnx and model.int8.onnx as asked, each carrying its
    labels and preprocessing in its metadata, plus manifest.json with checksums and results.
    Exits 1 when a variant fails its tolerances (unless --allow-degraded).
    """
    require("export")
    from medvit_edge.export import export as run_export

    given = click.get_current_context().get_parameter_source("refer_confidence")
    if given == ParameterSource.COMMANDLINE and values.get("refer_risk") is None:
        raise UserError("--refer-confidence goes with --refer-risk (it certifies the refer rule's risk)")
    result = run_export(ExportConfig(**values))
    click.echo("\n".join(export_table(result.manifest)))
    if result.manifest.token_merging is not None:
        from medvit_edge.export.merged import describe

        click.echo("\n".join(describe(result.manifest.token_merging)))
    if result.manifest.decision_policy is not None:
        for name, text in result.manifest.decision_policy.describe():
            click.echo(f"{name}: {text}")
    if result.pytorch_metrics:
        line, warnings = result_line(result.pytorch_metrics, "validation")
        click.echo(f"PyTorch model: {line}")
        for warning in warnings:
            click.echo(warning, err=True)
    click.echo(f"manifest: {result.output / 'manifest.json'}")


def export_table(manifest: Any) -> list[str]:
    """One row per file, columns as wide as the longest file name; what "passed" and "ms" mean
    under it."""
    width = max([len("file")] + [len(record.file) for record in manifest.variants])
    header = (
        f"{'file':<{width}}  {'vs PyTorch':<10}  {'size MB':>8}  {'max|Δlogit|':>11}  agreement  ms/image"
    )
    lines = [header]
    for record in manifest.variants:
        check = record.validation
        ms = f"{record.latency_ms:.1f}" if record.latency_ms is not None else "-"
        lines.append(
            f"{record.file:<{width}}  {record.status:<10}  {record.size_bytes / 1e6:8.2f}  "
            f"{check.max_abs_logit_diff:11.2e}  {check.top1_agreement:9.2%}  {ms:>8}"
        )
    size = manifest.preprocess.get("size") if isinstance(manifest.preprocess, dict) else None
    lines.append(
        "vs PyTorch: passed = the file gives the PyTorch model's results within its tolerances "
        f"(not that the model is good); ms/image: {export_latency_scope(size)}, this machine"
    )
    return lines

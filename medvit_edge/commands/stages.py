"""`train` and `export`: the heavy stages (their extras are checked when a command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from medvit_edge.commands.common import (
    config_default,
    default_text,
    existing_path,
    only_given,
    require,
)
from medvit_edge.errors import UserError
from medvit_edge.export.config import CalibrationMethod, ExportConfig, Int8Mode, TargetChoice
from medvit_edge.options import choices, field_default, literal_values
from medvit_edge.train.config import Attention, Precision, Recipe, ReportTo, TrainConfig


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
@_train_setting(
    "--merge-tokens",
    "merge_tokens",
    "Train with token merging on: R token pairs merged in every encoder layer (0: off); export "
    "then writes merged twins at this R by default.",
    int,
)
def train(config_file: Path | None, recipe: str | None, **values: Any) -> None:
    """Fine-tune a ViT classifier (the HF cookbook recipe by default).

    Writes the model (safetensors) with its preprocessing spec, metrics.json, split.csv,
    plots and a model card into the run folder.
    """
    require("train")
    from medvit_edge.train import train as run_training

    options = only_given(**values)
    if config_file:
        cfg = TrainConfig.from_file(config_file, **options, **only_given(recipe=recipe))
    else:
        cfg = TrainConfig.from_recipe(recipe or "cookbook", **options)  # type: ignore[arg-type]
    result = run_training(cfg)
    if not result.main_process:
        return  # one process of a distributed run speaks for all
    test = result.metrics.get("test")
    click.echo(f"run folder: {result.run_dir}")
    if test:
        recalls = ", ".join(f"{k} {v['recall']:.3f}" for k, v in test["per_class"].items())
        click.echo(
            f"test accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}; "
            f"recall: {recalls}"
        )


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


@click.command(cls=_ExportCommand)
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
    default=field_default(ExportConfig, "golden_images"),
    show_default=True,
    help="Validation images copied to onnx/golden/ with every variant's expected outputs, "
    "for `medvit-edge check` (0: none; they travel with the deployed files).",
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
    "model.openvino-int8.xml (NNCF post-training int8); each with its .bin. Needs [openvino].",
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
    for record in result.manifest.variants:
        check = record.validation
        click.echo(
            f"{record.file:<20} {record.status:<7} {record.size_bytes / 1e6:8.2f} MB  "
            f"max|Δlogit| {check.max_abs_logit_diff:.2e}  agreement {check.top1_agreement:.2%}"
        )
    if result.manifest.token_merging is not None:
        from medvit_edge.export.merged import describe

        for line in describe(result.manifest.token_merging):
            click.echo(line)
    if result.manifest.decision_policy is not None:
        for name, text in result.manifest.decision_policy.describe():
            click.echo(f"{name}: {text}")
    click.echo(f"manifest: {result.output / 'manifest.json'}")

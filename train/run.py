"""``train(cfg)``: fine-tune a ViT classifier with the transformers Trainer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.evaluation.metrics import classification_metrics, flat_metrics
from medvit_edge.files import write_json_atomic
from medvit_edge.io.checkpoint import holds_model, save_model
from medvit_edge.runtime.preprocess import PreprocessSpec

from .config import TrainConfig
from .data import DataBundle, Sample
from .distributed import barrier, check_same_split, describe_batch, effective_batch, from_main, quiet_replicas
from .models import load_model, torchvision_transforms
from .prepare import class_counts, prepare_data, write_split_csv
from .report import plot_confusion_matrix, plot_samples, plot_training_curves, write_model_card

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    labels: list[str]
    main_process: bool = True  # False on the other ranks of a distributed run (they wrote nothing)


class ImageDataset:
    """A torch map-style dataset over samples: ``{"pixel_values", "labels"}`` per item."""

    def __init__(self, samples: list[Sample], labels: list[str], transform: Any):
        self.samples, self.transform = samples, transform
        self.index = {label: i for i, label in enumerate(labels)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        return {"pixel_values": self.transform(sample.image()), "labels": self.index[sample.label]}


def make_compute_metrics(labels: list[str]) -> Any:
    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, targets = eval_pred
        return flat_metrics(classification_metrics(targets, np.argmax(logits, axis=-1), labels))

    return compute_metrics


def check_output_writable(output: Path, needed_bytes: int) -> None:
    """Fail before training, not after hours, when the run folder cannot hold the checkpoints."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{output}: output folder is not writable ({exc})") from exc
    free = shutil.disk_usage(output).free
    if free < needed_bytes:
        raise OSError(
            f"{output}: only {free / 1e9:.1f} GB free, the run needs about {needed_bytes / 1e9:.1f} GB "
            "for its checkpoints"
        )


def train(cfg: TrainConfig) -> TrainResult:
    """Prepare data, fine-tune, evaluate on validation and test, and write the run folder.

    Under ``torchrun`` / ``accelerate launch`` every process runs this (DDP): each computes the
    same split (checked), the Trainer shards the batches, and only global rank 0 writes the run
    folder; every rank returns once the folder is complete."""
    # transformers warns on every checkpoint rotation on filesystems with coarse mtimes; it
    # falls back to step numbers, which is what we want anyway.
    warnings.filterwarnings("ignore", message="mtime may not be reliable")
    refuse_reuse(cfg)
    args = training_arguments(cfg)  # under a launcher, this joins the process group
    main = args.process_index == 0
    with quiet_replicas(main):
        return _train(cfg, args, main)


def refuse_reuse(cfg: TrainConfig) -> None:
    """A run folder that holds a model is never overwritten silently: its exports and reports
    would then describe another model."""
    if holds_model(cfg.output) and not (cfg.resume or cfg.exist_ok):
        raise UserError(
            f"{cfg.output}: holds a trained model already; --resume continues it, --exist-ok "
            "trains over it (export it again afterwards), or choose another --output"
        )


def _train(cfg: TrainConfig, args: Any, main: bool) -> TrainResult:
    run_dir = cfg.output
    bundle = prepare_data(cfg)
    check_same_split(bundle)
    logger.info("data: %s -> labels %s; %s", cfg.data, bundle.labels, "; ".join(bundle.notes))
    counts = class_counts(bundle)
    for split, per_class in counts.items():
        logger.info("  %-10s %s", split, "  ".join(f"{k}={v}" for k, v in per_class.items()))
    model, spec = seeded_model(cfg, bundle.labels)
    if cfg.merge_tokens:
        from .merging import MergeRequest, patch_model

        plan = patch_model(model, MergeRequest(cfg.merge_tokens))  # weights untouched: saves a plain ViT
        logger.info("token merging: r %s per layer, tokens %s", list(plan.schedule), plan.tokens)
    parameters = sum(p.numel() for p in model.parameters())
    batch = effective_batch(args)
    source = "as given" if "learning_rate" in cfg.given else f"{cfg.recipe} recipe"
    logger.info("%s", describe_batch(batch, source))
    if main:
        # a checkpoint holds weights + 2 Adam moments: ~12 bytes/param, times kept checkpoints + final
        check_output_writable(run_dir, 12 * parameters * (cfg.save_total_limit + 1))
        _write_data_reports(run_dir, cfg, bundle, counts)
    barrier()  # the run folder exists before any rank saves a checkpoint into it
    trainer = build_trainer(cfg, args, bundle, model, spec)
    last_checkpoint = from_main(_resume_point(run_dir) if cfg.resume and main else None)
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint)
    # every rank predicts (the Trainer gathers the shards); rank 0 writes
    metrics = {**_final_metrics(trainer, bundle, spec, train_output, parameters), "batch": batch}
    if main:
        _write_results(trainer, cfg, bundle, metrics, spec)
    if cfg.push_to_hub:
        trainer.push_to_hub()  # the Trainer pushes from rank 0 only
    barrier()
    return TrainResult(run_dir, metrics, bundle.labels, main_process=main)


def seeded_model(cfg: TrainConfig, labels: list[str]) -> tuple[Any, PreprocessSpec]:
    """The model ``cfg`` trains and its preprocessing spec, drawn after seeding with ``cfg.seed``:
    a preset's random init is part of what --seed fixes (the Trainer seeds only once it is
    built, after the weights are drawn)."""
    from transformers import set_seed

    set_seed(cfg.seed)
    return load_model(cfg.model, labels, cfg.attn_implementation)


def _write_data_reports(
    run_dir: Path, cfg: TrainConfig, bundle: DataBundle, counts: dict[str, dict[str, int]]
) -> None:
    write_json_atomic(run_dir / "train_config.json", cfg.to_dict())
    write_split_csv(run_dir / "split.csv", bundle)
    write_json_atomic(
        run_dir / "data_report.json", {"class_counts": counts, "notes": bundle.notes, **bundle.leakage}
    )
    plot_samples(bundle, run_dir / "samples.png")


def _resume_point(run_dir: Path) -> str | None:
    last_checkpoint = _last_checkpoint(run_dir / "checkpoints")
    if last_checkpoint:
        logger.info("resuming from %s", last_checkpoint)
    else:
        logger.info("no checkpoint: starting fresh")
    return last_checkpoint


def _write_results(
    trainer: Any, cfg: TrainConfig, bundle: DataBundle, metrics: dict[str, Any], spec: Any
) -> None:
    """The trained model and everything people read about it (rank 0 only)."""
    run_dir = cfg.output
    save_model(trainer.model, spec, run_dir)
    write_json_atomic(run_dir / "metrics.json", metrics)
    plot_training_curves(
        trainer.state.log_history, cfg.metric_for_best_model, run_dir / "training_curves.png"
    )
    if "test" in metrics:
        plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], bundle.labels, run_dir / "confusion_matrix.png"
        )
    write_model_card(run_dir, cfg, bundle, class_counts(bundle), metrics, spec)


def training_arguments(cfg: TrainConfig) -> Any:
    """The Trainer's arguments. Building them sets up the devices: under ``torchrun`` that
    starts the process group (gloo on CPUs, NCCL on GPUs), which ``train()`` needs early."""
    import torch
    from transformers import TrainingArguments

    from .trainer import precision_flags

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not cuda:
        raise UserError("--device cuda: torch sees no CUDA GPU here (use --device cpu or auto)")
    cpu_ddp = not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if cpu_ddp:
        # accelerate names rank N's device "cpu:N", and resuming then fails: torch.load cannot
        # map the optimizer state saved from "cpu:0" there. "cpu" is the same device for all.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    settings: dict[str, Any] = dict(
        output_dir=str(cfg.output / "checkpoints"),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=cfg.metric_for_best_model not in ("loss", "eval_loss"),
        logging_steps=cfg.logging_steps,
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_workers,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        push_to_hub=cfg.push_to_hub,
        hub_model_id=cfg.hub_model_id,
        seed=cfg.seed,
        gradient_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.torch_compile,
        disable_tqdm=True,  # our ProgressCallback draws the bar
        dataloader_pin_memory=cuda,
        save_safetensors=True,
        # every ViT parameter gets a gradient: skip DDP's per-step search for unused ones
        ddp_find_unused_parameters=False,
        # launched on CPUs only, accelerate runs DDP (gloo) only when told the run is CPU: else
        # each process would train a model of its own
        use_cpu=cpu_ddp or cfg.device == "cpu",
        **precision_flags(cfg.precision, cuda),
    )
    return TrainingArguments(**{**settings, **cfg.extra})


def build_trainer(cfg: TrainConfig, args: Any, bundle: DataBundle, model: Any, spec: Any) -> Any:
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgressCallback

    from .regularisation import Mixing, RecipeTrainer, add_drop_path, balanced_weights
    from .trainer import ProgressCallback

    train_set = ImageDataset(
        bundle.split("train"),
        bundle.labels,
        torchvision_transforms(spec, train=True, crop_scale=cfg.crop_scale, augment=cfg.augment),
    )
    val_set = ImageDataset(
        bundle.split("validation"), bundle.labels, torchvision_transforms(spec, train=False)
    )
    add_drop_path(model, cfg.drop_path)
    train_labels = [train_set.index[s.label] for s in train_set.samples]
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        compute_metrics=make_compute_metrics(bundle.labels),
        compute_loss_func=_loss_function(cfg, bundle),
        callbacks=[ProgressCallback(cfg.metric_for_best_model, enabled=cfg.progress)],
        sample_weights=balanced_weights(train_labels) if cfg.balanced_sampling else None,
        mixing=Mixing(len(bundle.labels), cfg.mixup_alpha, cfg.cutmix_alpha),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    return trainer


def _loss_function(cfg: TrainConfig, bundle: DataBundle) -> Any:
    """None (the model's own cross-entropy) unless a setting changes the loss. Mixed batches have
    soft labels, which the model's loss would take for multi-label targets."""
    from .regularisation import recipe_loss

    mixing = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
    if not (cfg.class_weighted_loss or cfg.label_smoothing > 0 or mixing):
        return None
    weights = _class_weights(bundle) if cfg.class_weighted_loss else None
    return recipe_loss(weights, cfg.label_smoothing)


def _class_weights(bundle: DataBundle) -> list[float]:
    """Inverse-frequency weights (mean 1) for the imbalanced classes."""
    counts = np.array(
        [sum(s.label == label for s in bundle.split("train")) for label in bundle.labels], float
    )
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return weights.tolist()


def _final_metrics(
    trainer: Any, bundle: DataBundle, spec: Any, train_output: Any, parameters: int
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "parameters": parameters,
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_loss": train_output.metrics.get("train_loss"),
    }
    for split in ("validation", "test"):
        samples = bundle.split(split)
        if samples:
            dataset = ImageDataset(samples, bundle.labels, torchvision_transforms(spec, train=False))
            output = trainer.predict(dataset)
            predicted = np.argmax(output.predictions, axis=-1)
            metrics[split] = classification_metrics(output.label_ids, predicted, bundle.labels)
    return metrics


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors")


def _last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* checkpoint: a run killed while saving leaves a folder without its
    trainer state (written last), and resuming from that would crash."""
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for checkpoint in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if _is_complete(checkpoint):
            return str(checkpoint)
        logger.warning("skipping incomplete checkpoint %s (interrupted while saving)", checkpoint.name)
    return None


def _is_complete(checkpoint: Path) -> bool:
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return True

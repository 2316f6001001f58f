"""What a run leaves for people: sample grid, curves, confusion matrix, model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.runtime.preprocess import PreprocessSpec

from .config import TrainConfig
from .data import DataBundle


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training servers
    import matplotlib.pyplot as plt

    return plt


def plot_samples(bundle: DataBundle, path: Path, per_class: int = 4) -> None:
    """A few training images of each class, as the cookbook shows them before training."""
    plt = _pyplot()
    train = bundle.split("train") or bundle.samples
    fig, axes = plt.subplots(
        len(bundle.labels), per_class, figsize=(2.2 * per_class, 2.2 * len(bundle.labels)), squeeze=False
    )
    for row, label in enumerate(bundle.labels):
        picks = [s for s in train if s.label == label][:per_class]
        for col in range(per_class):
            axis = axes[row][col]
            axis.axis("off")
            if col < len(picks):
                axis.imshow(picks[col].image())
            if col == 0:
                axis.set_title(label, loc="left", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_training_curves(log_history: list[dict[str, Any]], metric: str, path: Path) -> None:
    plt = _pyplot()
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e and "epoch" in e]
    evals = [(e["epoch"], e["eval_loss"], e.get(key)) for e in log_history if "eval_loss" in e]
    fig, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        loss_axis.plot(*zip(*train), label="train loss")
    if evals:
        loss_axis.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss")
        metric_axis.plot([e[0] for e in evals], [e[2] for e in evals], "o-", color="tab:green")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    metric_axis.set(
        xlabel="epoch", ylabel=key.removeprefix("eval_"), title=f"Validation {key.removeprefix('eval_')}"
    )
    metric_axis.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion_matrix(
    matrix: list[list[int]], labels: list[str], path: Path, title: str = "Test"
) -> None:
    """Counts, with each row's recall share as the cell colour."""
    plt = _pyplot()
    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, axis = plt.subplots(figsize=(1.4 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if shares[i, j] > 0.6 else "black"
            axis.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center", color=colour)
    axis.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=f"{title} confusion matrix",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


INTENDED_USE = (
    "Research on triage of breast-ultrasound images into the classes above. **Research use only: "
    "not a medical device, not for diagnosis**, not validated for any clinical population."
)
CONTRAINDICATIONS = (
    "Do not use for diagnosis or treatment decisions; on images from other organs, modalities or "
    "scanners unlike the training data; or without a radiologist's review."
)


def model_card_data(run_dir: Path, cfg: TrainConfig, metrics: dict[str, Any]) -> Any:
    """The card's YAML header (huggingface_hub's ``ModelCardData``)."""
    from huggingface_hub import ModelCardData

    from .models import PRESETS

    local_data = Path(cfg.data).exists()
    return ModelCardData(
        model_name=run_dir.name,
        license=cfg.license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["vit", "medical-imaging", "ultrasound", "medvit-edge"],
        base_model=None if cfg.model in PRESETS or Path(cfg.model).exists() else cfg.model,
        datasets=None if local_data else [cfg.data],
        metrics=["accuracy", "balanced_accuracy", "f1", "recall"],
        intended_use=INTENDED_USE,
        contraindications=CONTRAINDICATIONS,
        test_accuracy=metrics.get("test", {}).get("accuracy"),
    )


def write_model_card(
    run_dir: Path,
    cfg: TrainConfig,
    bundle: DataBundle,
    counts: dict[str, dict[str, int]],
    metrics: dict[str, Any],
    spec: PreprocessSpec,
) -> None:
    from huggingface_hub import ModelCard

    lines = [
        f"# {run_dir.name}: ViT image classifier",
        "",
        "> **Research use only. Not a medical device; not for diagnosis.**",
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## Contraindications",
        CONTRAINDICATIONS,
        "",
        "## Data",
        f"Source: `{cfg.data}`. Labels: {', '.join(bundle.labels)}.",
        "",
        "| split | " + " | ".join(bundle.labels) + " | total |",
        "|---|" + "---|" * (len(bundle.labels) + 1),
    ]
    for split, per_class in counts.items():
        lines.append(
            f"| {split} | "
            + " | ".join(str(v) for v in per_class.values())
            + f" | {sum(per_class.values())} |"
        )
    lines += [""] + [f"- {note}" for note in bundle.notes]
    leakage = bundle.leakage
    lines += [
        f"- near-duplicate groups (16x16 dHash, distance <= {cfg.duplicate_hash_distance}): "
        f"{leakage.get('near_duplicate_groups', 0)}; "
        f"straddling splits: {len(leakage.get('cross_split_groups', []))}; "
        f"with conflicting labels: {len(leakage.get('label_conflict_groups', []))} (see data_report.json)",
        "",
        "## Recipe",
        f"Model `{cfg.model}`, lr {cfg.learning_rate}, {_batch_text(cfg, metrics)} "
        f"(eval {cfg.eval_batch_size} per device), "
        f"{cfg.epochs:g} epochs, weight decay {cfg.weight_decay}, best checkpoint by validation "
        f"{cfg.metric_for_best_model}, class-weighted loss: {cfg.class_weighted_loss}. Full settings: "
        "`train_config.json`.",
        "",
        f"Preprocessing (`preprocess.json`): {spec.to_json()}",
        "",
        "## Results",
    ]
    lines += _results_table(metrics, bundle.labels)
    header = model_card_data(run_dir, cfg, metrics).to_yaml()
    ModelCard(f"---\n{header}\n---\n\n" + "\n".join(lines) + "\n").save(run_dir / "README.md")


def _batch_text(cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    """The batch one optimizer step saw: per device × processes × accumulation steps."""
    batch = metrics.get("batch")
    if not batch or batch["effective_batch_size"] == cfg.train_batch_size:
        return f"batch {cfg.train_batch_size}"
    return (
        f"batch {batch['effective_batch_size']} ({batch['per_device_batch_size']} per device × "
        f"{batch['processes']} processes × {batch['gradient_accumulation_steps']} accumulation steps)"
    )


def _results_table(metrics: dict[str, Any], labels: list[str]) -> list[str]:
    header = (
        "| split | accuracy | balanced acc. | macro F1 | "
        + " | ".join(f"recall {label}" for label in labels)
        + " |"
    )
    rows = [header, "|---" * (4 + len(labels)) + "|"]
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            recalls = " | ".join(f"{m['per_class'][label]['recall']:.3f}" for label in labels)
            rows.append(
                f"| {split} (n={m['n']}) | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | "
                f"{m['macro_f1']:.3f} | {recalls} |"
            )
    speed = metrics.get("train_samples_per_second")
    if speed:
        rows += ["", f"Training throughput: {speed:.1f} samples/s."]
    return rows

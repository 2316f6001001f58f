"""The training configuration: the cookbook recipe as defaults, every value overridable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

COOKBOOK_MODEL = "google/vit-large-patch16-224"
COOKBOOK_DATA = "emre570/breastcancer-ultrasound-images"


@dataclass
class TrainConfig:
    """``train(cfg)`` settings. Defaults reproduce the HF cookbook recipe for BUSI + ViT-L."""

    model: str = COOKBOOK_MODEL  # hub id, save_pretrained folder, or preset ("tiny", "small")
    data: str = COOKBOOK_DATA  # hub dataset id, class-folder directory, or split CSV
    output: Path = Path("models/run")
    epochs: float = 40
    learning_rate: float = 2e-5
    train_batch_size: int = 10
    eval_batch_size: int = 4
    weight_decay: float = 0.01
    save_total_limit: int = 2
    metric_for_best_model: str = "balanced_accuracy"
    # Validation carved from train (stratified, seeded, duplicate-group aware): 25% of the
    # hub's 624 training images = 156, the cookbook's 468/156/156 proportions.
    val_fraction: float = 0.25
    test_fraction: float = 0.2  # only for data with no test split of its own
    seed: int = 42
    # RandomResizedCrop's area range; the cookbook uses torchvision's default (0.08, 1.0).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    class_weighted_loss: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    dataloader_workers: int = 2
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    resume: bool = False
    report_to: str = "none"  # "wandb", "tensorboard" or "none"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    warmup_ratio: float = 0.0  # the cookbook uses none; from-scratch presets want some
    max_steps: int = -1  # > 0 stops early (smoke runs and tests)
    logging_steps: int = 10
    duplicate_hash_distance: int = 45  # 16x16 dHash Hamming distance for near-duplicates
    max_samples_per_split: int | None = None  # cap for quick runs; None uses every image
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        if self.train_batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        return data

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML config file; keyword overrides (from the CLI) win."""
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        data.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**data)

"""The training configuration: the cookbook recipe as defaults, every value overridable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from medvit_edge.errors import UserError
from medvit_edge.options import validate_literals

from .models import PRESETS

COOKBOOK_MODEL = "google/vit-large-patch16-224"
COOKBOOK_DATA = "emre570/breastcancer-ultrasound-images"

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Attention = Literal["sdpa", "eager"]
ReportTo = Literal["none", "wandb", "tensorboard"]
TrainDevice = Literal["auto", "cpu", "cuda"]
Recipe = Literal["cookbook", "from-scratch", "scratch-balanced", "scratch-strong"]
Augment = Literal["none", "trivial", "randaugment"]

# Named recipes: settings that differ from the dataclass defaults (the cookbook's fine-tuning).
# "from-scratch" is for the offline presets (tiny, small) trained from random init: such a ViT
# wants a far higher learning rate than fine-tuning, some warm-up, and gentler crops (a crop that
# misses the lesion teaches the wrong label). The demo, the tests and the CPU benchmark use it.
_SCRATCH_BALANCED: dict[str, Any] = {
    "learning_rate": 5e-4,
    "train_batch_size": 32,
    "eval_batch_size": 64,
    "crop_scale": (0.5, 1.0),
    "warmup_ratio": 0.1,
    "logging_steps": 5,
    "dataloader_workers": 0,
    "balanced_sampling": True,
    "label_smoothing": 0.1,
}
RECIPES: dict[str, dict[str, Any]] = {
    "cookbook": {},
    "from-scratch": {
        "learning_rate": 1e-3,
        "train_batch_size": 32,
        "eval_batch_size": 64,
        "crop_scale": (0.5, 1.0),
        "warmup_ratio": 0.05,
        "logging_steps": 5,
        "dataloader_workers": 0,
    },
    # For a small, imbalanced data set (BUSI: 56% benign, 17% normal): every class equally often
    # per batch, so the rare class is learnt at all, and label smoothing against the
    # over-confidence a from-scratch ViT reaches on a few hundred images. The learning rate and
    # warm-up of the CPU benchmark's from-scratch runs (5e-4, 10%), which train more steadily.
    "scratch-balanced": _SCRATCH_BALANCED,
    # The DeiT / small-data-ViT regularisation on top of scratch-balanced: TrivialAugment,
    # mixup 0.8 / cutmix 1.0 (one of them per batch), stochastic depth 0.1. The literature trains
    # with it for hundreds of epochs: it slows how fast the training loss falls.
    "scratch-strong": {
        **_SCRATCH_BALANCED,
        "augment": "trivial",
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "drop_path": 0.1,
    },
}
# The offline presets (train/models.py) start from random init: the from-scratch recipe is theirs
# unless another is named (the cookbook's 2e-5 barely moves a random ViT).
PRESET_MODELS = tuple(PRESETS)  # tiny, small, small-224


def default_recipe(model: str) -> Recipe:
    """The recipe a model gets when none is named: from-scratch for the presets, else cookbook."""
    return "from-scratch" if model in PRESET_MODELS else "cookbook"


@dataclass
class TrainConfig:
    """``train(cfg)`` settings. Defaults reproduce the HF cookbook recipe for BUSI + ViT-L."""

    model: str = COOKBOOK_MODEL  # hub id, save_pretrained folder, or preset ("tiny", "small")
    data: str = COOKBOOK_DATA  # hub dataset id, class-folder directory, or split CSV
    output: Path = Path("models/run")
    epochs: float = 40
    learning_rate: float = 2e-5
    train_batch_size: int = 10  # per device: a step sees this × processes × accumulation steps
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
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
    # Regularisation for from-scratch training (all off in the cookbook): see RECIPES.
    augment: Augment = "none"  # after crop and flip: torchvision TrivialAugmentWide or RandAugment(2, 9)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # Beta(a, a) mixing of two images and their labels; 0 = off
    cutmix_alpha: float = 0.0  # a box of one image pasted into another; with mixup: one per batch
    drop_path: float = 0.0  # stochastic depth of the last block (rising linearly from 0 at the first)
    balanced_sampling: bool = False  # draw training images so that every class is equally likely
    precision: Precision = "auto"
    device: TrainDevice = "auto"  # auto: a CUDA GPU when torch sees one, else the CPU
    attn_implementation: Attention = "sdpa"
    dataloader_workers: int = 2
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    resume: bool = False
    exist_ok: bool = False  # train into a folder that holds a model (overwrites it; not resume)
    report_to: ReportTo = "none"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    warmup_ratio: float = 0.0  # the cookbook uses none; from-scratch presets want some
    max_steps: int = -1  # > 0 stops early (smoke runs and tests)
    logging_steps: int = 10
    duplicate_hash_distance: int = 45  # 16x16 dHash Hamming distance for near-duplicates
    max_samples_per_split: int | None = None  # cap for quick runs; None uses every image
    progress: bool = True
    # token merging during training (medvit_edge.train.merging): r token pairs merged in every
    # encoder layer; the saved weights are a plain ViT, and export merges at this r by default
    merge_tokens: int = 0
    license: str = (
        "other"  # the trained model's licence, for its model card (base model and data licences apply)
    )
    extra: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments
    recipe: Recipe = "cookbook"  # the named settings this started from (from_recipe sets it)
    given: tuple[str, ...] = ()  # the settings set over the recipe (said so in the log)

    def __post_init__(self) -> None:
        validate_literals(self)
        self.output = Path(self.output)
        self.given = tuple(self.given)
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        if self.train_batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("batch sizes must be >= 1")
        if self.gradient_accumulation_steps < 1:
            raise UserError("gradient accumulation steps must be >= 1")
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise UserError("val_fraction and test_fraction must be between 0 and 1")
        if not self.epochs > 0 or not self.learning_rate > 0:
            raise UserError("epochs and learning rate must be positive")
        if not (0 <= self.label_smoothing < 1 and 0 <= self.drop_path < 1):
            raise UserError("label_smoothing and drop_path must be in [0, 1)")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise UserError("mixup_alpha and cutmix_alpha must be >= 0 (0 turns them off)")
        merge = self.merge_tokens
        if isinstance(merge, bool) or not isinstance(merge, int) or merge < 0:
            raise UserError(f"merge_tokens must be a whole number, 0 or more, got {self.merge_tokens!r}")
        if self.merge_tokens and self.gradient_checkpointing:
            raise UserError("--merge-tokens and --gradient-checkpointing cannot be combined")

    @classmethod
    def from_recipe(cls, recipe: Recipe, **overrides: Any) -> TrainConfig:
        """A named recipe's settings, then ``overrides`` (which win)."""
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}; one of {', '.join(RECIPES)}")
        overrides.pop("recipe", None)
        given = tuple(overrides.pop("given", ())) or tuple(sorted(overrides))
        return cls(**{**RECIPES[recipe], **overrides}, recipe=recipe, given=given)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["given"] = list(self.given)
        return data

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML config file; keyword overrides (from the CLI) win. A ``recipe`` key
        starts from that named recipe."""
        data = _read_settings(path)
        known = {f.name for f in fields(cls)} | {"recipe"}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{path}: unknown training settings {sorted(unknown)}")
        data.update({key: value for key, value in overrides.items() if value is not None})
        recipe = data.pop("recipe", None) or default_recipe(str(data.get("model", COOKBOOK_MODEL)))
        try:
            return cls.from_recipe(recipe, **data)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: a setting has the wrong type ({exc})") from exc


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the settings file ({exc})") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of setting: value")
    return data

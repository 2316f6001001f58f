"""Models: a hub id, a local ``save_pretrained`` folder, or a preset built locally (random init)."""

from __future__ import annotations

from typing import Any

from medvit_edge.io.checkpoint import load_spec
from medvit_edge.runtime.preprocess import PreprocessSpec

# Offline presets. "tiny" is for tests and the demo (seconds on a CPU); "small" (DeiT-Tiny
# width, 6 blocks, 128 px so 64 tokens) learns real ultrasound from scratch on a CPU in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=64,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
    ),
    "small": dict(
        image_size=128,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
    ),
    # "small" at the cookbook's geometry (224 px, 196 patch tokens), so speed and token merging
    # can be measured where the product runs; about 3-3.5x the CPU time of "small" per training
    # image (measured).
    "small-224": dict(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
    ),
}


def load_model(name: str, labels: list[str], attn_implementation: str = "sdpa") -> tuple[Any, PreprocessSpec]:
    """(ViT classifier with a ``len(labels)`` head, the preprocessing it expects)."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    if name in PRESETS:
        config = ViTConfig(
            **PRESETS[name],
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            attn_implementation=attn_implementation,
        )
        size = PRESETS[name]["image_size"]
        return ViTForImageClassification(config), PreprocessSpec(size=size, resize_size=size)
    from .hub import check_model_source

    check_model_source(name)  # one line, at once, for a missing folder or an unreachable hub
    model = AutoModelForImageClassification.from_pretrained(
        name,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,  # a new head when the class count differs
        attn_implementation=attn_implementation,
        use_safetensors=True,  # never unpickle weights
    )
    return model, load_spec(name, AutoImageProcessor)


def torchvision_transforms(
    spec: PreprocessSpec, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0), augment: str = "none"
) -> Any:
    """The torchvision pipeline for the spec: RandomResizedCrop + flip (+ ``augment``) for
    training, the exact eval transform (which ``medvit_edge.runtime.preprocess`` reproduces in numpy)
    otherwise."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(spec.interpolation)
    tail = [T.ToTensor(), T.Normalize(mean=spec.mean, std=spec.std)]
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(spec.size, scale=crop_scale, interpolation=interpolation),
                T.RandomHorizontalFlip(),
                *_augmentation(augment, interpolation),
                *tail,
            ]
        )
    if spec.resize_mode == "squash":
        return T.Compose([T.Resize((spec.size, spec.size), interpolation=interpolation), *tail])
    return T.Compose(
        [T.Resize(spec.resize_size, interpolation=interpolation), T.CenterCrop(spec.size), *tail]
    )


def _augmentation(augment: str, interpolation: Any) -> list[Any]:
    """On the PIL image, after the crop: TrivialAugment (one random op at a random strength, no
    tuning; Müller & Hutter 2021) or RandAugment with the ViT papers' 2 ops at magnitude 9."""
    from torchvision import transforms as T

    if augment == "trivial":
        return [T.TrivialAugmentWide(interpolation=interpolation)]
    if augment == "randaugment":
        return [T.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation)]
    return []

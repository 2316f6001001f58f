"""From-scratch regularisation the transformers Trainer lacks: label smoothing with class weights
and soft targets, mixup / cutmix, stochastic depth for the HF ViT, class-balanced sampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer


def recipe_loss(class_weights: Sequence[float] | None, label_smoothing: float) -> Callable[..., Any]:
    """A ``compute_loss_func``: cross-entropy with optional class weights and label smoothing. The
    labels are class indices, or per-class probabilities (a mixed batch)."""
    weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs.logits
        weight = None if weights is None else weights.to(logits.device, logits.dtype)
        return torch.nn.functional.cross_entropy(
            logits, labels, weight=weight, label_smoothing=label_smoothing
        )

    return loss


@dataclass(frozen=True)
class Mixing:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch with itself reversed in a
    random permutation; with both on, each batch uses one of them (as timm and DeiT do)."""

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed pixels, soft labels) for a batch of (N, C, H, W) pixels and N class indices."""
        targets = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(pixels.dtype)
        permutation = torch.randperm(pixels.shape[0], device=pixels.device)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()) < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if use_cutmix:
            mixed, lam = _paste_box(pixels, permutation, lam)
        else:
            mixed = lam * pixels + (1 - lam) * pixels[permutation]
        return mixed, lam * targets + (1 - lam) * targets[permutation]


def _paste_box(pixels: torch.Tensor, permutation: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """CutMix: a box of area ``1 - lam`` (clipped at the border) from the permuted batch; the
    returned ``lam`` is the area actually kept, which the labels must use."""
    height, width = pixels.shape[-2:]
    cut = (1 - lam) ** 0.5
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    mixed = pixels.clone()
    mixed[..., top:bottom, left:right] = pixels[permutation][..., top:bottom, left:right]
    return mixed, 1 - (bottom - top) * (right - left) / (height * width)


def add_drop_path(model: Any, rate: float) -> int:
    """Stochastic depth (Huang et al. 2016) for a transformers ViT, which has none: in training,
    each residual branch of block i is dropped for a whole sample with probability
    ``rate * i / (blocks - 1)`` and scaled up by the keep probability otherwise.

    Done with forward hooks on the dropout that ends each branch (ViTSelfOutput.dropout, whose
    output is added to the residual in ViTLayer, and ViTOutput.dropout, before ViTOutput adds it):
    the weights, their names and the saved model stay those of a plain ViT, and in eval mode
    (export, inference) the hooks change nothing. Returns the number of hooked branches."""
    if rate <= 0:
        return 0
    blocks = model.vit.encoder.layer
    hooked = 0
    for index, block in enumerate(blocks):
        block_rate = rate * index / max(len(blocks) - 1, 1)
        if block_rate <= 0:
            continue
        for branch_end in (block.attention.output.dropout, block.output.dropout):
            branch_end.register_forward_hook(_drop_path_hook(block_rate))
            hooked += 1
    return hooked


def _drop_path_hook(rate: float) -> Callable[..., Any]:
    keep = 1.0 - rate

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        shape = (output.shape[0],) + (1,) * (output.dim() - 1)
        mask = torch.empty(shape, dtype=output.dtype, device=output.device).bernoulli_(keep)
        return output * mask / keep

    return hook


def balanced_weights(labels: Sequence[int]) -> list[float]:
    """A sampling weight per image, inversely proportional to its class size: each class is
    drawn equally often in expectation."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [1.0 / counts[label] for label in labels]


class RecipeTrainer(Trainer):
    """The Trainer, plus a class-balanced sampler and mixup/cutmix of training batches."""

    def __init__(
        self,
        *args: Any,
        sample_weights: list[float] | None = None,
        mixing: Mixing | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.sample_weights = sample_weights
        self.mixing = mixing if mixing is not None and mixing.enabled else None

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        # with replacement, an epoch's worth of draws: the rare class's images repeat
        return torch.utils.data.WeightedRandomSampler(
            self.sample_weights, num_samples=len(self.sample_weights), replacement=True, generator=generator
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self.mixing is not None and model.training and "labels" in inputs:
            pixels, labels = self.mixing(inputs["pixel_values"], inputs["labels"])
            inputs = {**inputs, "pixel_values": pixels, "labels": labels}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

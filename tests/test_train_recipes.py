"""The from-scratch recipes' settings take effect: balanced sampling, label smoothing, mixup and
cutmix, stochastic depth, TrivialAugment; and every recipe trains a few steps on phantom data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from medvit_edge.errors import UserError

from .conftest import needs_torch

pytestmark = needs_torch


@pytest.fixture(scope="module")
def imbalanced_csv(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom split with 30 benign, 15 malignant and 5 normal training images."""
    keep = {"benign": 30, "malignant": 15, "normal": 5}
    with open(phantom_dir / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen: Counter[str] = Counter()
    kept = []
    for row in rows:
        if row["split"] == "train":
            seen[row["label"]] += 1
            if seen[row["label"]] > keep[row["label"]]:
                continue
        kept.append({**row, "path": str(phantom_dir / row["path"])})
    path = tmp_path_factory.mktemp("imbalanced") / "split.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(kept)
    return path


def _trainer(data: Path, tmp_path: Path, recipe: str = "from-scratch", **overrides: Any) -> Any:
    """The Trainer ``train()`` would build for these settings (tiny preset, phantom data)."""
    from medvit_edge.train import TrainConfig
    from medvit_edge.train.models import load_model
    from medvit_edge.train.prepare import prepare_data
    from medvit_edge.train.run import build_trainer, training_arguments

    settings: dict[str, Any] = dict(
        model="tiny", data=str(data), output=tmp_path / "run", seed=5, progress=False, val_fraction=0.2
    )
    cfg = TrainConfig.from_recipe(recipe, **{**settings, **overrides})  # type: ignore[arg-type]
    bundle = prepare_data(cfg)
    model, spec = load_model(cfg.model, bundle.labels)
    return build_trainer(cfg, training_arguments(cfg), bundle, model, spec)


def _drawn_labels(trainer: Any, epochs: int) -> Counter[int]:
    drawn: Counter[int] = Counter()
    loader = trainer.get_train_dataloader()
    for _ in range(epochs):
        for batch in loader:
            drawn.update(batch["labels"].tolist())
    return drawn


def test_balanced_sampling_draws_every_class_about_equally(imbalanced_csv: Path, tmp_path: Path) -> None:
    balanced = _trainer(imbalanced_csv, tmp_path, balanced_sampling=True)
    train_counts = Counter(balanced.train_dataset.index[s.label] for s in balanced.train_dataset.samples)
    rare = min(train_counts, key=train_counts.__getitem__)
    assert train_counts[rare] / sum(train_counts.values()) < 0.15  # the data really is imbalanced
    drawn = _drawn_labels(balanced, epochs=10)
    assert sum(drawn.values()) == 10 * len(balanced.train_dataset)  # an epoch is still one pass's worth
    for label in train_counts:
        assert 0.25 < drawn[label] / sum(drawn.values()) < 0.42, drawn
    plain = _drawn_labels(_trainer(imbalanced_csv, tmp_path / "plain"), epochs=2)
    assert plain[rare] == 2 * train_counts[rare]  # without it, each image once per epoch


def _batch(trainer: Any) -> dict[str, Any]:
    return next(iter(trainer.get_train_dataloader()))


def test_label_smoothing_changes_the_loss_by_its_formula(phantom_dir: Path, tmp_path: Path) -> None:
    import torch

    trainer = _trainer(phantom_dir / "split.csv", tmp_path, label_smoothing=0.2)
    model = trainer.model.eval()  # eval: no dropout or drop path, the logits are fixed
    batch = _batch(trainer)
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"]).logits
        loss = trainer.compute_loss(model, dict(batch))
    log_p = torch.log_softmax(logits, dim=-1)
    plain = -log_p.gather(1, batch["labels"][:, None]).mean()
    expected = 0.8 * plain + 0.2 * (-log_p.mean(dim=-1)).mean()
    assert abs(float(loss) - float(expected)) < 1e-5
    assert abs(float(loss) - float(plain)) > 1e-3


def test_mixup_and_cutmix_mix_training_batches_only(phantom_dir: Path, tmp_path: Path) -> None:
    import torch

    for mixing in ({"mixup_alpha": 0.8}, {"cutmix_alpha": 1.0}):
        trainer = _trainer(phantom_dir / "split.csv", tmp_path / str(mixing), **mixing)
        seen: list[torch.Tensor] = []
        trainer.model.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen: seen.append(kwargs["pixel_values"]), with_kwargs=True
        )
        batch = _batch(trainer)
        torch.manual_seed(0)
        trainer.compute_loss(trainer.model.train(), dict(batch))
        assert not torch.equal(seen[-1], batch["pixel_values"]), mixing
        with torch.no_grad():
            trainer.compute_loss(trainer.model.eval(), dict(batch))
        assert torch.equal(seen[-1], batch["pixel_values"]), mixing  # evaluation sees the images as they are


def test_mixing_targets_match_the_mixed_pixels() -> None:
    import torch

    from medvit_edge.train.regularisation import Mixing

    torch.manual_seed(3)
    # every image a constant: a pixel's value says which image it came from
    pixels = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 16, 16).clone()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(5):
        mixed, targets = Mixing(3, cutmix_alpha=1.0)(pixels, labels)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        for i in range(8):
            own = float((mixed[i] == i).float().mean())  # the share of image i kept
            if own < 1:  # a partner other than itself: targets follow the pasted area
                partner = int(mixed[i][mixed[i] != i][0])
                assert abs(targets[i, labels[i]] - (own if labels[partner] != labels[i] else 1)) < 1e-5
        mixed, targets = Mixing(3, mixup_alpha=0.8)(pixels, labels)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        for i in range(8):
            value, lam = float(mixed[i, 0, 0, 0]), float(targets[i, labels[i]])
            assert torch.all(mixed[i] == value)  # a blend of two whole images
            if lam < 1 - 1e-6:  # the partner has another class: its image has weight 1 - lam
                partner = (value - lam * i) / (1 - lam)
                assert abs(partner - round(partner)) < 1e-3
                assert float(targets[i, labels[round(partner)]]) == pytest.approx(1 - lam, abs=1e-5)


def test_stochastic_depth_drops_whole_samples_in_training_only(phantom_dir: Path, tmp_path: Path) -> None:
    import torch

    from medvit_edge.train.models import load_model
    from medvit_edge.train.regularisation import _drop_path_hook, add_drop_path

    hook = _drop_path_hook(0.5)
    branch = torch.nn.Dropout(0.0).train()
    out = hook(branch, (), torch.ones(400, 5, 8))
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(dim=1).values, per_sample.max(dim=1).values)  # whole samples
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/keep
    assert 0.4 < float((per_sample[:, 0] == 0).float().mean()) < 0.6
    assert torch.equal(hook(branch.eval(), (), torch.ones(4, 5, 8)), torch.ones(4, 5, 8))

    plain, _ = load_model("tiny", ["a", "b", "c"])
    hooked, _ = load_model("tiny", ["a", "b", "c"])
    hooked.load_state_dict(plain.state_dict())
    assert add_drop_path(hooked, 0.5) == 2 * (len(hooked.vit.encoder.layer) - 1)  # block 0 keeps rate 0
    assert list(hooked.state_dict()) == list(plain.state_dict())  # saved like a plain ViT
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(hooked.eval()(pixel_values=x).logits, plain.eval()(pixel_values=x).logits)
        first, second = (hooked.train()(pixel_values=x).logits for _ in range(2))
    assert not torch.equal(first, second)
    trainer = _trainer(phantom_dir / "split.csv", tmp_path, drop_path=0.3)
    hooks = [m for m in trainer.model.modules() if m._forward_hooks]
    assert len(hooks) == 2 * (len(trainer.model.vit.encoder.layer) - 1)  # train() wires it


def test_augment_setting_reaches_the_training_transform(phantom_dir: Path, tmp_path: Path) -> None:
    from torchvision import transforms as T

    for augment, kind in (("trivial", T.TrivialAugmentWide), ("randaugment", T.RandAugment)):
        trainer = _trainer(phantom_dir / "split.csv", tmp_path / augment, augment=augment)
        steps = trainer.train_dataset.transform.transforms
        assert any(isinstance(step, kind) for step in steps), augment
        assert not any(isinstance(step, kind) for step in trainer.eval_dataset.transform.transforms)
    plain = _trainer(phantom_dir / "split.csv", tmp_path / "none").train_dataset.transform.transforms
    assert not any(isinstance(s, (T.TrivialAugmentWide, T.RandAugment)) for s in plain)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"drop_path": -0.1}, "drop_path"),
        ({"mixup_alpha": -1}, "mixup_alpha"),
        ({"augment": "autoaugment"}, "augment"),
    ],
)
def test_bad_regularisation_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    from medvit_edge.train import TrainConfig

    with pytest.raises(UserError, match=message):
        TrainConfig.from_recipe("scratch-strong", **settings)


def test_every_recipe_trains_a_few_steps_on_phantom_data(phantom_dir: Path, tmp_path: Path) -> None:
    from medvit_edge.train import TrainConfig, train
    from medvit_edge.train.config import RECIPES

    for recipe in ("scratch-balanced", "scratch-strong"):
        assert recipe in RECIPES
        cfg = TrainConfig.from_recipe(
            recipe,  # type: ignore[arg-type]
            model="tiny",
            data=str(phantom_dir / "split.csv"),
            output=tmp_path / recipe,
            max_steps=6,
            train_batch_size=16,
            logging_steps=2,
            progress=False,
            save_total_limit=1,
        )
        result = train(cfg)
        metrics = json.loads((tmp_path / recipe / "metrics.json").read_text())
        assert metrics["steps"] == 6 and metrics["train_loss"] == pytest.approx(result.metrics["train_loss"])
        saved = json.loads((tmp_path / recipe / "train_config.json").read_text())
        assert saved["balanced_sampling"] is True and saved["label_smoothing"] == 0.1


def test_command_line_flags_reach_the_training_settings(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medvit_edge import cli

    base = ["train", "--model", "tiny", "--data", str(tmp_path), "--recipe", "scratch-balanced"]
    for flags, words in (
        (["--label-smoothing", "1.5"], "label_smoothing"),
        (["--drop-path", "1"], "drop_path"),
        (["--mixup", "-0.5"], "mixup_alpha"),
        (["--augment", "auto"], "auto"),
    ):
        result = CliRunner().invoke(cli.main, [*base, *flags])
        assert result.exit_code == 2 and words in result.output.strip().splitlines()[-1], (
            flags,
            result.output,
        )

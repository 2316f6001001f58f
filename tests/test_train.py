"""Training at toy scale on the real BUSI images, and leakage-aware splitting."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from .conftest import needs_torch

pytestmark = needs_torch

RUN_OUTPUTS = [
    "model.safetensors",
    "model.safetensors.sha256",  # what a stale export is detected by
    "config.json",
    "preprocessor_config.json",
    "preprocess.json",
    "metrics.json",
    "confusion_matrix.png",
    "training_curves.png",
    "split.csv",
    "README.md",
    "samples.png",
    "train_config.json",
    "data_report.json",
]


@pytest.mark.busi
def test_tiny_vit_trains_on_busi_and_writes_every_output(tiny_busi_run: Path) -> None:
    for name in RUN_OUTPUTS:
        assert (tiny_busi_run / name).is_file() and (tiny_busi_run / name).stat().st_size > 0, name
    metrics = json.loads((tiny_busi_run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 156  # the data's own test split
    assert abs(metrics["validation"]["n"] - 156) <= 3  # whole duplicate groups move together
    for split in ("validation", "test"):
        assert set(metrics[split]["per_class"]) == {"benign", "malignant", "normal"}
        assert all("recall" in v for v in metrics[split]["per_class"].values())
    assert metrics["steps"] == 24
    card = (tiny_busi_run / "README.md").read_text()
    assert "not for diagnosis" in card and "balanced" in card


@pytest.mark.busi
def test_loss_falls(tiny_busi_run: Path) -> None:
    state = sorted(
        (tiny_busi_run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )[-1]
    history = json.loads((state / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) >= 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.busi
def test_saved_split_is_the_given_split_with_validation_carved_from_train(
    tiny_busi_run: Path, busi_dir: Path
) -> None:
    with open(busi_dir / "split.csv", newline="") as handle:
        given = {row["path"]: row for row in csv.DictReader(handle)}
    with open(tiny_busi_run / "split.csv", newline="") as handle:
        used = list(csv.DictReader(handle))
    assert len(used) == 780
    counts = Counter(row["split"] for row in used)
    assert counts["test"] == 156 and abs(counts["validation"] - 156) <= 3
    groups_by_split: dict[str, set] = {}
    for row in used:
        key = str(Path(row["path"]).relative_to(busi_dir.resolve()))
        original = given[key]
        assert (row["split"] == "test") == (original["split"] == "test")
        groups_by_split.setdefault(row["split"], set()).add(original["dup_group"])
    assert not groups_by_split["train"] & groups_by_split["validation"]
    validation_classes = Counter(row["label"] for row in used if row["split"] == "validation")
    for label, in_test in {"benign": 87, "malignant": 42, "normal": 27}.items():  # stratified like test
        assert abs(validation_classes[label] - in_test) <= 2


@pytest.mark.busi
def test_folder_split_keeps_near_duplicates_on_one_side(busi_dir: Path, tmp_path: Path) -> None:
    """BUSI as a plain class folder (no split.csv): our own hash groups must never straddle."""
    from medvit_edge.train.config import TrainConfig
    from medvit_edge.train.prepare import prepare_data

    folder = tmp_path / "busi"
    folder.mkdir()
    for label in ("benign", "malignant", "normal"):
        (folder / label).symlink_to(busi_dir / label)
    bundle = prepare_data(TrainConfig(data=str(folder), seed=7))
    assert Counter(s.split for s in bundle.samples) == pytest.approx(
        {"train": 468, "validation": 156, "test": 156}, abs=12
    )
    split_of_group: dict[str, set] = {}
    for sample in bundle.samples:
        split_of_group.setdefault(sample.group, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in split_of_group.values())
    assert bundle.leakage["cross_split_groups"] == []
    # BUSI's known duplicates: the data README names 144 multi-image groups and label conflicts.
    assert bundle.leakage["near_duplicate_groups"] > 50
    assert len(bundle.leakage["label_conflict_groups"]) >= 1
    with open(busi_dir / "split.csv", newline="") as handle:
        reference = {row["path"]: row["dup_group"] for row in csv.DictReader(handle)}
    ours = {s.key: s.group for s in bundle.samples}
    # images the data's own grouping pairs are (almost always) paired by ours too
    pairs = Counter(reference.values())
    together = [g for g, n in pairs.items() if n > 1]
    agree = sum(len({ours[k] for k, rg in reference.items() if rg == g}) == 1 for g in together)
    assert agree / len(together) > 0.9


@pytest.mark.busi
def test_given_split_leakage_is_reported(busi_dir: Path, tmp_path: Path) -> None:
    """A random image-level split (as the cookbook makes) puts near-duplicates on both sides."""
    from medvit_edge.train.config import TrainConfig
    from medvit_edge.train.prepare import prepare_data

    rng = np.random.default_rng(0)
    with open(busi_dir / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    naive = tmp_path / "naive.csv"
    with open(naive, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for row in rows:
            writer.writerow(
                [str(busi_dir / row["path"]), row["label"], "test" if rng.random() < 0.2 else "train"]
            )
    bundle = prepare_data(TrainConfig(data=str(naive)))
    assert len(bundle.leakage["cross_split_groups"]) > 10


def test_stratified_group_split_hits_class_shares() -> None:
    from medvit_edge.train.data import stratified_group_split

    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    groups = [f"g{i // 3}" for i in range(1000)]  # triples of near-duplicates
    splits = stratified_group_split(labels, groups, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    for split, share in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        for label, total in (("a", 600), ("b", 300), ("c", 100)):
            count = sum(1 for s, lab in zip(splits, labels) if s == split and lab == label)
            assert abs(count - share * total) <= 3
    by_group: dict[str, set] = {}
    for split, group in zip(splits, groups):
        by_group.setdefault(group, set()).add(split)
    assert all(len(v) == 1 for v in by_group.values())


def test_config_file_and_overrides(tmp_path: Path) -> None:
    from medvit_edge.train import TrainConfig

    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.001\nmodel: tiny\n")
    cfg = TrainConfig.from_file(path, epochs=5)
    # a preset model without a recipe takes the from-scratch recipe (batch 32)
    assert (cfg.epochs, cfg.learning_rate, cfg.model, cfg.train_batch_size) == (5, 0.001, "tiny", 32)
    path.write_text("epochz: 3\n")
    from medvit_edge.errors import UserError

    with pytest.raises(UserError, match="epochz"):
        TrainConfig.from_file(path)


def test_every_preset_starts_from_the_from_scratch_recipe(tmp_path: Path) -> None:
    """A random-init preset with the cookbook's fine-tuning lr (2e-5) barely learns: every preset,
    the 224 px one included, takes the from-scratch recipe unless another is named."""
    from medvit_edge.train import TrainConfig
    from medvit_edge.train.models import PRESETS

    path = tmp_path / "run.yaml"
    for preset in PRESETS:
        path.write_text(f"model: {preset}\n")
        cfg = TrainConfig.from_file(path)
        assert (cfg.learning_rate, cfg.train_batch_size) == (1e-3, 32), preset
    path.write_text("model: google/vit-base-patch16-224\n")
    assert TrainConfig.from_file(path).learning_rate == 2e-5


def test_unwritable_output_fails_before_training(tmp_path: Path) -> None:
    from medvit_edge.train.run import check_output_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        check_output_writable(blocker / "run", 10)
    with pytest.raises(OSError, match="GB free"):
        check_output_writable(tmp_path / "run", 10**18)


def test_hub_dataset_source(phantom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default data source (a hub id) through a real DatasetDict, since the hub is out of reach."""
    datasets = pytest.importorskip("datasets")
    from medvit_edge.io.labelled import read_labelled_set
    from medvit_edge.train.config import COOKBOOK_DATA, TrainConfig
    from medvit_edge.train.prepare import prepare_data

    names = ["benign", "malignant", "normal"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def load_dataset(dataset_id: str) -> object:
        assert dataset_id == COOKBOOK_DATA
        parts = {}
        for split in ("train", "test"):
            rows = read_labelled_set(phantom_dir, split)
            parts[split] = datasets.Dataset.from_dict(
                {"image": [str(r.path) for r in rows], "label": [names.index(r.label) for r in rows]},
                features=features,
            )
        return datasets.DatasetDict(parts)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    # the hub is out of reach here: its one reachability check stands in for the real hub
    monkeypatch.setattr("medvit_edge.train.data.ensure_hub_reachable", lambda *args, **kwargs: None)
    bundle = prepare_data(TrainConfig())
    counts = Counter(s.split for s in bundle.samples)
    assert bundle.labels == names and counts["test"] == 24 and counts["train"] + counts["validation"] == 90
    assert abs(counts["validation"] - 90 * 0.25) <= 3
    sample = bundle.split("validation")[0]
    assert sample.key.startswith("hub:train/") and sample.path is None
    assert sample.image().mode == "RGB" and sample.image().size[0] > 50


def test_seed_fixes_a_presets_random_init(tmp_path: Path) -> None:
    """Same --seed, same model, whatever ran before in the process; another seed, other weights.
    (The Trainer seeds only once built: a preset's weights were drawn from whatever state the
    random generator was left in.) ``seeded_model`` is what ``train`` builds its model with."""
    import torch

    from medvit_edge.train import TrainConfig
    from medvit_edge.train.run import seeded_model

    def weights(seed: int) -> dict[str, np.ndarray]:
        torch.rand(1000)  # what an earlier caller in the same process leaves behind
        cfg = TrainConfig.from_recipe("from-scratch", model="tiny", output=tmp_path / "run", seed=seed)
        model, _ = seeded_model(cfg, ["benign", "malignant", "normal"])
        return {k: v.numpy() for k, v in model.state_dict().items()}

    first, again, other = weights(5), weights(5), weights(6)
    assert first.keys() == again.keys() == other.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)

"""From a data source to a leakage-aware train/validation/test split, with a report."""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.errors import UserError, printable
from medvit_edge.files import atomic_writer
from medvit_edge.runtime.images import ImageDecodeError

from .config import TrainConfig
from .data import (
    DataBundle,
    Sample,
    dhash,
    duplicate_groups,
    load_samples,
    stratified_group_split,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def prepare_data(cfg: TrainConfig) -> DataBundle:
    samples, labels, has_split = load_samples(cfg.data)  # UserError when it cannot train a classifier
    samples, hashes, unreadable = _hash_all(samples)
    hashed_groups = [f"h{g}" for g in duplicate_groups(hashes, cfg.duplicate_hash_distance)]
    # A group given by the data (split.csv's dup_group) wins over the one we compute.
    groups = [s.group or hashed for s, hashed in zip(samples, hashed_groups)]
    notes = []
    if not has_split:
        # The cookbook's proportions for 780 images: 468/156/156 = 60/20/20.
        fractions = {
            "train": 1 - 2 * cfg.test_fraction,
            "validation": cfg.test_fraction,
            "test": cfg.test_fraction,
        }
        splits = stratified_group_split([s.label for s in samples], groups, fractions, cfg.seed)
        notes.append(
            "no split in the data: made train/validation/test "
            f"{fractions['train']:.0%}/{cfg.test_fraction:.0%}/{cfg.test_fraction:.0%}, "
            "stratified by class, near-duplicate groups kept on one side"
        )
    else:
        splits, carve_notes = _carve_missing_splits(samples, groups, cfg)
        notes.extend(carve_notes)
    samples = [replace(s, split=split, group=group) for s, split, group in zip(samples, splits, groups)]
    leakage = leakage_report(samples, hashed_groups)
    if cfg.max_samples_per_split:
        samples = _cap_per_split(samples, cfg.max_samples_per_split, cfg.seed)
    leakage["unreadable_images"] = unreadable
    leakage["warnings"] = [f"skipped an unreadable image: {error}" for error in unreadable]
    leakage["warnings"] += missing_class_warnings(samples, labels)
    for warning in leakage["warnings"] + duplicate_warnings(leakage):
        logger.warning("%s", printable(warning))  # on screen too, not only in data_report.json
    return DataBundle(samples, labels, cfg.data, notes, leakage)


def duplicate_warnings(leakage: dict[str, Any]) -> list[str]:
    """Near-duplicates across splits (test scores then flatter the model) and with conflicting
    labels (the model is taught both answers), one line each with an example."""
    lines = []
    cross, conflicts = leakage["cross_split_groups"], leakage["label_conflict_groups"]
    if cross:
        first = cross[0]
        example = ", ".join(f"{k} ({s})" for k, s in zip(first["images"][:2], first["splits"][:2]))
        lines.append(
            f"data: {len(cross)} near-duplicate group(s) straddle splits (e.g. {example}): scores on "
            "those splits may be optimistic; see data_report.json"
        )
    if conflicts:
        first = conflicts[0]
        pairs = list(zip(first["images"], first["labels"]))
        other = next(pair for pair in pairs if pair[1] != pairs[0][1])  # a conflict has two labels
        example = ", ".join(f"{k} ({label})" for k, label in (pairs[0], other))
        lines.append(
            f"data: {len(conflicts)} near-duplicate group(s) carry different labels (e.g. {example}); "
            "see data_report.json"
        )
    return lines


def missing_class_warnings(samples: list[Sample], labels: list[str]) -> list[str]:
    """A class absent from a split: untrainable (train), or unmeasured (validation, test), which a
    rare class in a small data set silently is."""
    present = {split: {s.label for s in samples if s.split == split} for split in SPLITS}
    return [
        f"class {label!r} has no images in {split}"
        for split in SPLITS
        for label in labels
        if label not in present[split]
    ]


def _hash_all(samples: list[Sample]) -> tuple[list[Sample], np.ndarray, list[str]]:
    """Near-duplicate hashes of every readable image; an unreadable one is dropped and named
    (one corrupt file must not cost the whole run), all of them is an error."""

    def hash_one(sample: Sample) -> np.ndarray | str:
        try:
            return dhash(sample.image())
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(hash_one, samples))
    kept = [(s, r) for s, r in zip(samples, results) if not isinstance(r, str)]
    unreadable = [r for r in results if isinstance(r, str)]
    if not kept:
        raise UserError(f"no readable image among the {len(samples)} listed (first: {unreadable[0]})")
    return [s for s, _ in kept], np.stack([r for _, r in kept]), unreadable


def _carve_missing_splits(
    samples: list[Sample], groups: list[str], cfg: TrainConfig
) -> tuple[list[str], list[str]]:
    """Keep the data's own splits; carve validation (and test, if absent) out of train."""
    splits = [s.split or "train" for s in samples]
    present = set(splits)
    wanted = {"train": 1.0}
    if "validation" not in present:
        wanted["validation"] = cfg.val_fraction
    if "test" not in present:
        wanted["test"] = cfg.test_fraction
    if len(wanted) == 1:
        return splits, []
    wanted["train"] = 1.0 - sum(v for k, v in wanted.items() if k != "train")
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    carved = stratified_group_split(
        [samples[i].label for i in train_idx], [groups[i] for i in train_idx], wanted, cfg.seed
    )
    for i, split in zip(train_idx, carved):
        splits[i] = split
    carved_names = " and ".join(k for k in wanted if k != "train")
    note = (
        f"carved {carved_names} from the training split ({cfg.val_fraction:.0%} of it), "
        f"stratified by class, seed {cfg.seed}, near-duplicate groups kept on one side"
    )
    return splits, [note]


def leakage_report(samples: list[Sample], hashed_groups: list[str]) -> dict[str, Any]:
    """Near-duplicates that straddle splits, and near-duplicates whose labels disagree."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(hashed_groups):
        members[group].append(index)
    cross_split, conflicts = [], []
    for indices in members.values():
        if len(indices) < 2:
            continue
        keys = [samples[i].key for i in indices]
        if len({samples[i].split for i in indices}) > 1:
            cross_split.append({"images": keys, "splits": [samples[i].split for i in indices]})
        if len({samples[i].label for i in indices}) > 1:
            conflicts.append({"images": keys, "labels": [samples[i].label for i in indices]})
    return {
        "near_duplicate_groups": sum(1 for m in members.values() if len(m) > 1),
        "cross_split_groups": cross_split,
        "label_conflict_groups": conflicts,
    }


def _cap_per_split(samples: list[Sample], cap: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    kept: list[Sample] = []
    for split in ("train", "validation", "test"):
        chosen = [s for s in samples if s.split == split]
        if len(chosen) > cap:
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), cap, replace=False))]
        kept.extend(chosen)
    return kept


def class_counts(bundle: DataBundle) -> dict[str, dict[str, int]]:
    counts = {
        split: Counter(s.label for s in bundle.split(split)) for split in ("train", "validation", "test")
    }
    return {split: {label: counts[split].get(label, 0) for label in bundle.labels} for split in counts}


def write_split_csv(path: Path, bundle: DataBundle) -> None:
    """One row per image used: path, label, split, duplicate group, frame (empty: the reader's
    rule, see medvit_edge.io.reader)."""
    with atomic_writer(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "dup_group", "frame"])
        for sample in bundle.samples:
            # Absolute paths, so export and evaluate can find the images from anywhere.
            location = str(sample.path.resolve()) if sample.path else sample.key
            frame = "" if sample.frame is None else sample.frame
            writer.writerow([location, sample.label, sample.split, sample.group, frame])

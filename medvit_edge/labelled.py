"""Labelled image sets on disk: a split CSV, or a folder with one sub-folder per class."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medvit_edge.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_mask_file

SPLIT_ALIASES = {
    "train": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}


@dataclass(frozen=True)
class LabelledImage:
    key: str  # the path as the CSV or folder names it (relative to its root)
    path: Path
    label: str
    split: str = ""  # train / validation / test, or "" when the source has no split
    group: str = ""  # near-duplicate group, when the source records one
    label_conflict: bool = False


def read_split_csv(csv_path: Path) -> list[LabelledImage]:
    """Rows ``path,label[,split][,dup_group][,label_conflict]``; relative paths are relative
    to the CSV's folder."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: needs 'path' and 'label' columns (and optionally 'split')")
    images = []
    for row in rows:
        raw_split = (row.get("split") or "").strip().lower()
        split = SPLIT_ALIASES.get(raw_split, "")
        if raw_split and not split:
            raise ValueError(f"{csv_path}: unknown split {row['split']!r} for {row['path']}")
        given = Path(row["path"])
        images.append(
            LabelledImage(
                key=row["path"],
                path=given if given.is_absolute() else csv_path.parent / given,
                label=row["label"],
                split=split,
                group=row.get("dup_group") or "",
                label_conflict=(row.get("label_conflict") or "").strip().lower() in ("yes", "true", "1"),
            )
        )
    return images


def read_class_folders(root: Path) -> list[LabelledImage]:
    """``root/<class>/**/image``; segmentation masks (``*_mask*``) are skipped."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{root}: expected one sub-folder per class (found {classes or 'none'})")
    suffixes = IMAGE_SUFFIXES | DICOM_SUFFIXES
    return [
        LabelledImage(str(path.relative_to(root)), path, label)
        for label in classes
        for path in sorted((root / label).rglob("*"))
        if path.suffix.lower() in suffixes and not is_mask_file(path) and path.is_file()
    ]


def read_labelled_set(source: Path, split: str | None = None) -> list[LabelledImage]:
    """A CSV, a folder holding ``split.csv``, or class folders; optionally one split only."""
    if source.is_file():
        images = read_split_csv(source)
    elif (source / "split.csv").is_file():
        images = read_split_csv(source / "split.csv")
    elif source.is_dir():
        images = read_class_folders(source)
    else:
        raise FileNotFoundError(f"{source}: no such labelled set (a CSV or a class-folder directory)")
    if split is None:
        return images
    return [image for image in images if image.split == split]

"""Labelled image sets on disk: a split CSV, or a folder with one sub-folder per class."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medvit_edge.errors import UserError
from medvit_edge.io.inputs import SkippedInput, walk_folder

SPLIT_ALIASES = {
    "train": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}


class LabelledSetError(UserError, ValueError):
    """A labelled set (split CSV or class folders) that cannot be used; names the file (exit 2)."""


@dataclass(frozen=True)
class LabelledImage:
    key: str  # the path as the CSV or folder names it (relative to its root)
    path: Path
    label: str
    split: str = ""  # train / validation / test, or "" when the source has no split
    group: str = ""  # near-duplicate group, when the source records one
    label_conflict: bool = False
    # Which frame of a multi-frame file (0-based); None: the rule of medvit_edge.io.reader (a
    # single image, or the middle frame of a multi-frame file).
    frame: int | None = None


def read_split_csv(csv_path: Path) -> list[LabelledImage]:
    """Rows ``path,label[,split][,dup_group][,label_conflict][,frame]``; relative paths are
    relative to the CSV's folder; ``frame`` (0-based, may be empty) picks a frame of a
    multi-frame DICOM file (``medvit_edge.io.reader``). A UTF-8 byte-order mark (as Excel writes)
    is allowed; spaces around column names, paths and labels are dropped ("benign " is
    "benign")."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [(name or "").strip() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelledSetError(f"{csv_path}: cannot read it as a UTF-8 CSV ({exc})") from exc
    if not {"path", "label"} <= set(columns):
        found = ", ".join(columns) or "no header"
        raise LabelledSetError(
            f"{csv_path}: needs 'path' and 'label' columns (and optionally 'split'); found: {found}"
        )
    images = []
    for number, row in enumerate(rows, start=2):  # spreadsheet numbering: the header is row 1
        raw_split = (row.get("split") or "").lower()
        split = SPLIT_ALIASES.get(raw_split, "")
        if raw_split and not split:
            raise LabelledSetError(f"{csv_path}: unknown split {row['split']!r} for {row['path']}")
        given = Path(row["path"])
        images.append(
            LabelledImage(
                key=row["path"],
                path=given if given.is_absolute() else csv_path.parent / given,
                label=row["label"],
                split=split,
                group=row.get("dup_group") or "",
                label_conflict=(row.get("label_conflict") or "").lower() in ("yes", "true", "1"),
                frame=_frame(row.get("frame") or "", csv_path, number),
            )
        )
    return images


def _frame(text: str, csv_path: Path, row: int) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise LabelledSetError(f"{csv_path} row {row}: frame {text!r} is not a frame number (0, 1, 2 ...)")
    return int(text)


def read_class_folders(root: Path) -> list[LabelledImage]:
    """``root/<class>/**/image``, by the same input rule as ``infer``'s folder walk
    (``medvit_edge.io.inputs``): image and DICOM suffixes, DICOM files without a suffix, BUSI masks
    (``name_mask.png``, ``name_mask_1.png``) and hidden names skipped. A sub-folder that cannot
    be read is a ``LabelledSetError``: training on part of a class without saying so is worse."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise LabelledSetError(f"{root}: expected one sub-folder per class (found {classes or 'none'})")
    images = []
    for label in classes:
        for item in walk_folder(root / label):
            if isinstance(item, SkippedInput):
                continue
            if item.error:
                raise LabelledSetError(item.error)
            images.append(LabelledImage(str(item.path.relative_to(root)), item.path, label))
    return sorted(images, key=lambda image: image.path)  # the order rglob gave before


def read_labelled_set(source: Path, split: str | None = None) -> list[LabelledImage]:
    """A CSV, a folder holding ``split.csv``, or class folders; optionally one split only."""
    if source.is_file():
        images = read_split_csv(source)
    elif (source / "split.csv").is_file():
        images = read_split_csv(source / "split.csv")
    elif source.is_dir():
        images = read_class_folders(source)
    else:
        raise LabelledSetError(f"{source}: no such labelled set (a CSV or a class-folder directory)")
    if split is None:
        return images
    return [image for image in images if image.split == split]

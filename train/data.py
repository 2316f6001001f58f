"""Data sources (hub dataset, class folders, split CSV) and leakage-aware splitting."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.errors import UserError, printable
from medvit_edge.io.duplicates import dhash, hamming_matrix  # noqa: F401  (dhash: prepare imports it here)
from medvit_edge.io.inputs import InputFile, walk_folder
from medvit_edge.io.labelled import SPLIT_ALIASES, read_class_folders, read_split_csv
from medvit_edge.io.reader import read_labelled_image
from medvit_edge.runtime.images import as_rgb_image

from .hub import ensure_hub_reachable, looks_like_local_path


@dataclass(frozen=True)
class Sample:
    key: str  # path (relative to the data root) or "hub:<split>/<index>": the row in split.csv
    label: str
    split: str = ""
    path: Path | None = None
    hub_ref: tuple[Any, int] | None = field(default=None, compare=False, hash=False)
    group: str = ""
    frame: int | None = None  # of a multi-frame file; None: medvit_edge.io.reader's rule

    def image(self) -> Image.Image:
        if self.path is not None:
            return read_labelled_image(self.path, self.frame)  # the reader infer uses (DICOM too)
        dataset, index = self.hub_ref  # type: ignore[misc]
        return as_rgb_image(dataset[index]["image"])


@dataclass
class DataBundle:
    samples: list[Sample]
    labels: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    # What data_report.json records besides class counts and notes: near-duplicate findings
    # and "warnings" (e.g. a class with no images in a split).
    leakage: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.leakage.get("warnings", []))

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def load_samples(data: str) -> tuple[list[Sample], list[str], bool]:
    """(samples, labels, has_own_split) from a CSV, a class-folder directory or a hub id.

    Raises ``UserError`` naming the source when it cannot train a classifier: no images, fewer
    than two classes, an empty label, a path that does not exist, an unreachable hub."""
    path = Path(data).expanduser()
    if path.is_dir() and (path / "split.csv").is_file():
        path = path / "split.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        samples, labels, has_split = _from_csv(path)
    elif path.is_dir():
        samples, labels, has_split = _from_folder(path)
    elif path.exists():
        raise UserError(f"{printable(data)}: expected a class-folder directory or a split CSV")
    elif looks_like_local_path(data):
        # A typo in a path is not a hub dataset id: say so instead of asking the hub.
        raise UserError(f"{printable(data)}: no such file or folder")
    else:
        samples, labels, has_split = _from_hub(data)
    check_classes(str(path) if path.exists() else data, samples)
    return samples, labels, has_split


def check_classes(source: str, samples: list[Sample]) -> None:
    """A classifier needs at least two named classes; one class trains a model that predicts it
    for everything, and an empty label becomes a class called ``""``."""
    if not samples:
        raise UserError(f"{printable(source)}: no images found")
    empty = [s for s in samples if not s.label.strip()]
    if empty:
        raise UserError(f"{printable(source)}: empty label for {printable(empty[0].key)}")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise UserError(
            f"{printable(source)}: only one class ({printable(classes[0])!r}); a classifier needs at least 2"
        )


def _from_csv(csv_path: Path) -> tuple[list[Sample], list[str], bool]:
    """Through ``medvit_edge.io.labelled``, so train reads a CSV exactly as infer and evaluate do."""
    try:
        images = read_split_csv(csv_path)
    except (OSError, ValueError) as exc:
        raise _as_user_error(csv_path, exc) from None
    for row, image in enumerate(images, start=2):  # spreadsheet numbering: the header is row 1
        if not image.label.strip():
            raise UserError(f"{printable(csv_path)} row {row}: empty label for {printable(image.key)}")
    rows_per_file = Counter(i.key for i in images)
    samples = [
        # frames of one file (several rows naming it) share a group: they never straddle splits
        Sample(
            i.key, i.label, i.split, i.path, group=i.group or _file_group(i.key, rows_per_file), frame=i.frame
        )
        for i in images
    ]
    return samples, sorted({s.label for s in samples}), any(s.split for s in samples)


def _file_group(key: str, rows_per_file: Counter[str]) -> str:
    return f"file:{key}" if rows_per_file[key] > 1 else ""


def _from_folder(root: Path) -> tuple[list[Sample], list[str], bool]:
    no_images = UserError(
        f"{printable(root)}: no images found (expected one sub-folder per class, or a split CSV)"
    )
    try:
        images = read_class_folders(root)
    except (OSError, ValueError) as exc:
        if not _has_images(root):
            raise no_images from None
        raise _as_user_error(root, exc) from None
    if not images:
        raise no_images
    samples = [Sample(i.key, i.label, "", i.path) for i in images]
    return samples, sorted({s.label for s in samples}), False


def _has_images(root: Path) -> bool:
    """By infer's rule of what counts as an image, the one class folders are read with."""
    return any(isinstance(item, InputFile) and not item.error for item in walk_folder(root))


def _as_user_error(source: Path, exc: Exception) -> UserError:
    """The reader's message, prefixed with the source when it does not name it already."""
    message = printable(exc)
    return UserError(message if str(source) in str(exc) else f"{printable(source)}: {message}")


def _from_hub(dataset_id: str) -> tuple[list[Sample], list[str], bool]:
    """A hub image-classification dataset with ``image`` and ``label`` columns."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("hub datasets need: pip install 'medvit-edge[train]'") from exc
    ensure_hub_reachable(dataset_id, "dataset")  # one quick request, not load_dataset's retries
    loaded = datasets.load_dataset(dataset_id)
    first = next(iter(loaded.values()))
    label_feature = first.features["label"]
    names = list(getattr(label_feature, "names", None) or sorted(set(first["label"])))
    samples = []
    for hub_split, dataset in loaded.items():
        split = SPLIT_ALIASES.get(hub_split, "train")
        for index, label in enumerate(dataset["label"]):
            name = names[label] if isinstance(label, int) else str(label)
            samples.append(Sample(f"hub:{hub_split}/{index}", name, split, None, (dataset, index)))
    return samples, names, True


def duplicate_groups(hashes: np.ndarray, max_distance: int) -> list[int]:
    """Union-find over pairs within ``max_distance``: a group id per image."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    distances = hamming_matrix(hashes)
    for i, j in zip(*np.nonzero(np.triu(distances <= max_distance, k=1))):
        parent[find(int(i))] = find(int(j))
    return [find(i) for i in range(len(hashes))]


def stratified_group_split(
    labels: list[str], groups: list[str], fractions: dict[str, float], seed: int
) -> list[str]:
    """Assign whole groups to splits so each class reaches its share in every split."""
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    class_counts = Counter(labels)
    targets = {s: {c: f * n for c, n in class_counts.items()} for s, f in fractions.items()}
    filled = {s: Counter() for s in fractions}
    rng = np.random.default_rng(seed)
    order = list(members)
    rng.shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # big groups first, while there is room
    assignment = [""] * len(labels)
    for group in order:
        label = Counter(labels[i] for i in members[group]).most_common(1)[0][0]
        deficits = {
            s: (targets[s][label] - filled[s][label]) / max(targets[s][label], 1e-9) for s in fractions
        }
        chosen = max(deficits, key=lambda s: (deficits[s], fractions[s]))
        for i in members[group]:
            assignment[i] = chosen
            filled[chosen][labels[i]] += 1
    return assignment

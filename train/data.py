"""Data sources (hub dataset, class folders, split CSV) and leakage-aware splitting."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvit_edge.images import as_rgb_image, load_image
from medvit_edge.labelled import SPLIT_ALIASES, read_class_folders, read_split_csv


@dataclass(frozen=True)
class Sample:
    key: str  # path (relative to the data root) or "hub:<split>/<index>": the row in split.csv
    label: str
    split: str = ""
    path: Path | None = None
    hub_ref: tuple[Any, int] | None = field(default=None, compare=False, hash=False)
    group: str = ""

    def image(self) -> Image.Image:
        if self.path is not None:
            return load_image(self.path)
        dataset, index = self.hub_ref  # type: ignore[misc]
        return as_rgb_image(dataset[index]["image"])


@dataclass
class DataBundle:
    samples: list[Sample]
    labels: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    leakage: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def load_samples(data: str) -> tuple[list[Sample], list[str], bool]:
    """(samples, labels, has_own_split) from a CSV, a class-folder directory or a hub id."""
    path = Path(data)
    if path.suffix.lower() == ".csv" and path.is_file():
        return _from_csv(path)
    if path.is_dir():
        if (path / "split.csv").is_file():
            return _from_csv(path / "split.csv")
        return _from_folder(path)
    if path.exists():
        raise ValueError(f"{data}: expected a class-folder directory or a split CSV")
    return _from_hub(data)


def _from_csv(csv_path: Path) -> tuple[list[Sample], list[str], bool]:
    images = read_split_csv(csv_path)
    samples = [Sample(i.key, i.label, i.split, i.path, group=i.group) for i in images]
    return samples, sorted({s.label for s in samples}), any(s.split for s in samples)


def _from_folder(root: Path) -> tuple[list[Sample], list[str], bool]:
    images = read_class_folders(root)
    samples = [Sample(i.key, i.label, "", i.path) for i in images]
    return samples, sorted({s.label for s in samples}), False


def _from_hub(dataset_id: str) -> tuple[list[Sample], list[str], bool]:
    """A hub image-classification dataset with ``image`` and ``label`` columns."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("hub datasets need: pip install 'medvit-edge[train]'") from exc
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


def dhash(image: Image.Image, hash_size: int = 16) -> np.ndarray:
    """Difference hash: ``hash_size**2`` bits saying whether each pixel is brighter than its left."""
    grey = image.convert("L").resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.int16)
    return (pixels[:, 1:] > pixels[:, :-1]).ravel()


def hamming_matrix(hashes: np.ndarray) -> np.ndarray:
    bits = hashes.astype(np.float32)
    return (bits @ (1 - bits).T + (1 - bits) @ bits.T).astype(np.int32)


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

"""``medvit-edge check``: re-run the golden files that ``export`` wrote, on this machine.

``onnx/golden/golden.json`` (written by export/golden.py) lists a few real images and, per
variant, the probabilities its file gave at export. ``check`` runs each file present with the
installed onnxruntime on this CPU or GPU, twice for a numpy-path file:

* end to end: the PNG decoded, preprocessed here and classified, as ``infer`` does it;
* the model alone: the exact float tensor export preprocessed (``pixel_values.npy``), so a
  difference in Pillow's resize and one in the model's kernels are told apart.

A variant agrees when every probability is within its tolerance (``Variant.check_tolerance``:
only kernel differences may move a re-run of the same file). ``golden.json`` is trusted only as
far as it is authenticated: its sha256 must match ``manifest.json``'s record when there is one,
and without that record (no manifest, or one written before golden files) a tolerance looser
than the file's variant default is refused (exit 2), so an edited ``golden.json`` cannot make
moved probabilities "agree". Exit codes: 0 every variant
agrees, 1 one disagrees, 2 the golden files are missing or damaged, or a file is not the one
they were made for (``ModelLoadError``). Needs numpy, Pillow and onnxruntime only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medvit_edge.errors import EXIT_OK, EXIT_SOME_FAILED, ModelLoadError, UserError, printable
from medvit_edge.files import sha256_file
from medvit_edge.runtime.classifier import Classifier, import_onnxruntime
from medvit_edge.runtime.images import load_image
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.metadata import PIXEL_VALUES_INPUT
from medvit_edge.runtime.openvino_backend import backend_installed
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch
from medvit_edge.runtime.variants import Device, variant_named
from medvit_edge.system import machine_line

GOLDEN_FOLDER = "golden"
GOLDEN_INDEX = "golden.json"
PIXEL_VALUES_FILE = "pixel_values.npy"
GOLDEN_FORMAT = 1
Result = Literal["agree", "disagree", "not present", "skipped"]
IR_SKIPPED = "an OpenVINO IR runs on the CPU with pip install 'medvit-edge[openvino]'"


@dataclass(frozen=True)
class VariantCheck:
    variant: str
    file: str
    result: Result
    tolerance: float
    images: int = 0
    provider: str = ""
    max_abs_diff: float | None = None  # end to end: PNG -> decode -> preprocess -> probabilities
    max_abs_diff_tensor: float | None = None  # the golden tensor -> probabilities (numpy path)
    max_abs_pixel_diff: float | None = None  # this machine's preprocessing vs the golden tensor
    label_changes: int = 0
    decision_changes: int = 0  # the file's policy applied to these vs the golden probabilities
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    folder: str
    machine: str
    onnxruntime: str
    variants: tuple[VariantCheck, ...]

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if any(v.result == "disagree" for v in self.variants) else EXIT_OK


@dataclass(frozen=True)
class GoldenSet:
    folder: Path
    index: dict[str, Any]
    pngs: list[Path]
    pixel_values: np.ndarray
    bound: bool = False  # golden.json's sha256 matched manifest.json's record


def check(model: Path, device: Device = "auto", threads: int | None = None) -> CheckReport:
    """Re-run the golden files of a model folder (every variant present) or of one model file."""
    if threads is not None and threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or more, got {threads}")
    folder, only = _model_folder(Path(model))
    golden = read_golden(folder)
    entries = golden.index["variants"]
    if only is not None:
        entries = {name: entry for name, entry in entries.items() if entry.get("file") == only}
        if not entries:
            raise ModelLoadError(f"{model}: {golden.folder / GOLDEN_INDEX} has no expected outputs for it")
    results = tuple(_check_variant(golden, name, entry, device, threads) for name, entry in entries.items())
    if all(r.result == "not present" for r in results):
        raise ModelLoadError(f"{folder}: none of the files in {golden.folder / GOLDEN_INDEX} is here")
    if all(r.result in ("not present", "skipped") for r in results):
        raise ModelLoadError(f"{folder}: only OpenVINO IRs to check here: {IR_SKIPPED}")
    return CheckReport(str(folder), machine_line(), import_onnxruntime().__version__, results)


def _model_folder(model: Path) -> tuple[Path, str | None]:
    """(the folder holding the model files, the one file to check or None for all)."""
    if model.is_dir():
        return (model / "onnx" if (model / "onnx").is_dir() else model), None
    if not model.exists():
        raise ModelLoadError(f"{model}: model file not found")
    return model.parent, model.name


def read_golden(folder: Path) -> GoldenSet:
    """The golden files beside the models, every one checked against its sha256 (and the index
    against manifest.json when there is one)."""
    where = folder / GOLDEN_FOLDER
    path = where / GOLDEN_INDEX
    if not path.is_file():
        raise ModelLoadError(
            f"{folder}: no golden files ({GOLDEN_FOLDER}/{GOLDEN_INDEX}); "
            "`medvit-edge export` writes them beside the models"
        )
    manifest = Manifest.read(folder)
    bound = manifest is not None and manifest.golden is not None
    if bound and sha256_file(path) != manifest.golden.sha256:  # type: ignore[union-attr]
        raise ModelLoadError(f"{path}: checksum differs from manifest.json (modified or replaced)")
    index = _read_index(path)
    pngs = [_verified(where, image, "png") for image in index["images"]]
    for image in index["images"]:
        _verified(where, image, "array")
    tensor = _verified(where, index["pixel_values"], "file", "sha256")
    try:
        pixel_values = np.load(tensor, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{tensor}: unreadable ({exc})") from exc
    if pixel_values.dtype != np.float32 or len(pixel_values) != len(pngs):
        raise ModelLoadError(f"{where / PIXEL_VALUES_FILE}: not a float32 tensor of {len(pngs)} images")
    return GoldenSet(where, index, pngs, pixel_values, bound)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != GOLDEN_FORMAT:
        raise ModelLoadError(f"{path}: not a golden index of format {GOLDEN_FORMAT}")
    for key, kind in (("images", list), ("variants", dict), ("pixel_values", dict), ("labels", list)):
        if not isinstance(index.get(key), kind) or not index[key]:
            raise ModelLoadError(f"{path}: '{key}' is missing or empty")
    for name, entry in index["variants"].items():
        if not isinstance(entry, dict) or not _plain_name(entry.get("file")):
            raise ModelLoadError(f"{path}: variant {name!r} does not name a model file in this folder")
        if not isinstance(entry.get("tolerance"), (int, float)) or isinstance(entry["tolerance"], bool):
            raise ModelLoadError(f"{path}: variant {name!r} has no numeric tolerance")
    return index


def _plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and "/" not in name
        and "\\" not in name
        and name not in (".", "..")
    )


def _verified(folder: Path, entry: Any, key: str, sha_key: str | None = None) -> Path:
    """The file ``entry[key]`` names in ``folder``, after checking its sha256."""
    name = entry.get(key) if isinstance(entry, dict) else None
    if not _plain_name(name):
        raise ModelLoadError(f"{folder / GOLDEN_INDEX}: bad file entry {entry!r}")
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{path}: golden file missing")
    if sha256_file(path) != entry.get(sha_key or f"{key}_sha256"):
        raise ModelLoadError(f"{path}: checksum differs from {GOLDEN_INDEX} (modified or damaged)")
    return path


def _check_variant(
    golden: GoldenSet, name: str, entry: dict[str, Any], device: Device, threads: int | None
) -> VariantCheck:
    file, tolerance = str(entry.get("file", "")), float(entry.get("tolerance", 0.0))
    path = golden.folder.parent / file
    if not path.is_file():
        if os.path.lexists(path):  # a FIFO, device or dangling link is not "not deployed"
            raise ModelLoadError(f"{path}: not a regular file")
        return VariantCheck(name, file, "not present", tolerance)
    if not backend_installed(path) or (path.suffix == ".xml" and device not in ("auto", "cpu")):
        # an IR runs through OpenVINO on the CPU only: not checkable on this install/device
        return VariantCheck(name, file, "skipped", tolerance, failures=(IR_SKIPPED,))
    classifier = Classifier.load(path, device=device, threads=threads)
    if classifier.sha256 != entry.get("sha256"):
        raise ModelLoadError(f"{path}: not the file the golden outputs were made for (sha256 differs)")
    if not golden.bound:
        _refuse_loosened(golden, name, tolerance, classifier.variant)
    expected = _expected(entry, len(golden.pngs), len(classifier.labels), golden.folder)
    found = classifier.predict_proba(golden.pngs)
    numbers: dict[str, Any] = {"max_abs_diff": _max_diff(found, expected)}
    if entry.get("input", PIXEL_VALUES_INPUT) == PIXEL_VALUES_INPUT:
        tensor_probabilities = classifier.policy.probabilities(classifier.run(golden.pixel_values))
        numbers["max_abs_diff_tensor"] = _max_diff(tensor_probabilities, expected)
        numbers["max_abs_pixel_diff"] = _pixel_diff(golden, classifier.spec)
    failures = tuple(
        f"{what} max |Δprobability| {value:.2e} > {tolerance:.0e}"
        for what, key in (("end to end", "max_abs_diff"), ("golden tensor", "max_abs_diff_tensor"))
        if (value := numbers.get(key)) is not None and not value <= tolerance
    )
    labels = [classifier.labels[int(i)] for i in found.argmax(axis=1)]
    # the same decisions on every device: a probability within tolerance can still cross a threshold
    decided = classifier.decide(found)
    changed = sum(a != b for a, b in zip(decided, classifier.decide(expected.astype(np.float32))))
    failures += (f"{changed} decision(s) differ from the golden ones",) if changed else ()
    return VariantCheck(
        name,
        file,
        "disagree" if failures else "agree",
        tolerance,
        images=len(golden.pngs),
        provider=classifier.session.get_providers()[0],
        label_changes=sum(a != b for a, b in zip(labels, entry.get("top1", labels))),
        decision_changes=changed,
        failures=failures,
        **numbers,
    )


def _refuse_loosened(golden: GoldenSet, name: str, tolerance: float, variant: str) -> None:
    """An unauthenticated golden.json may not loosen a tolerance beyond the variant's default."""
    row = variant_named(variant)
    default = row.check_tolerance if row is not None else None
    if default is None or not tolerance <= default:
        allowed = f"its default {default:.0e}" if default is not None else "a known default"
        raise ModelLoadError(
            f"{golden.folder / GOLDEN_INDEX}: tolerance {tolerance:g} for {name} is looser than "
            f"{allowed}, and no manifest.json records this golden.json's sha256: not trusted"
        )


def _expected(entry: dict[str, Any], images: int, classes: int, folder: Path) -> np.ndarray:
    try:
        expected = np.asarray(entry["probabilities"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{folder / GOLDEN_INDEX}: bad probabilities for {entry.get('file')}") from exc
    if expected.shape != (images, classes):
        raise ModelLoadError(
            f"{folder / GOLDEN_INDEX}: {entry.get('file')} expects {expected.shape} probabilities, "
            f"the model gives ({images}, {classes})"
        )
    return expected


def _max_diff(found: np.ndarray, expected: np.ndarray) -> float:
    """NaN and infinity count as infinitely far."""
    diff = np.abs(found.astype(np.float64) - expected)
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _pixel_diff(golden: GoldenSet, spec: PreprocessSpec) -> float:
    here = preprocess_batch([load_image(png) for png in golden.pngs], spec)
    return float(np.abs(here - golden.pixel_values).max())


def format_report(report: CheckReport) -> list[str]:
    """A table of the variants, then one line with the verdict (escaped for the terminal)."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.1e}"

    lines = [
        f"{'variant':<18} {'file':<24} {'result':<12} {'end to end':>10} {'tensor':>9} "
        f"{'pixels':>9} {'tolerance':>9}  labels changed"
    ]
    for v in report.variants:
        if v.result == "not present":
            continue  # a deployed folder holds the files it needs: said once below, not as rows
        lines.append(
            f"{v.variant:<18} {v.file:<24} {v.result:<12} {number(v.max_abs_diff):>10} "
            f"{number(v.max_abs_diff_tensor):>9} {number(v.max_abs_pixel_diff):>9} "
            f"{v.tolerance:>9.0e}  {v.label_changes}"
        )
    ran = [v for v in report.variants if v.result not in ("not present", "skipped")]
    agree = sum(v.result == "agree" for v in ran)
    images = max((v.images for v in ran), default=0)
    lines += [
        "",
        f"{agree} of {len(ran)} variants agree with their golden outputs on {images} images "
        f"(max |Δprobability|; onnxruntime {report.onnxruntime}; {report.machine})",
    ]
    lines += [f"  {v.variant}: {failure}" for v in ran for failure in v.failures]
    absent = [v.variant for v in report.variants if v.result == "not present"]
    if absent:
        lines.append(f"not in this folder (not checked): {', '.join(absent)}")
    return [printable(line) for line in lines]

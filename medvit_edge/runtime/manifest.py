"""``manifest.json``: what ``export`` wrote beside the models, as typed records.

Export builds these records, the runtime checks a file's sha256 against its record, evaluate
lists the variants from it. Reading is strict: a truncated, mistyped or non-UTF-8 manifest, or
an entry whose ``file`` leaves the folder, is a ``ModelLoadError`` (exit 2), never a traceback
and never a silent pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit_edge.errors import ModelLoadError
from medvit_edge.files import write_json_atomic
from medvit_edge.options import literal_values
from medvit_edge.runtime.policy import DecisionPolicy

MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes
MANIFEST_NAME = "manifest.json"
Status = Literal["passed", "failed"]


@dataclass(frozen=True)
class Validation:
    """A variant against the PyTorch model on the same images (the reference)."""

    images: int
    max_abs_logit_diff: float
    top1_agreement: float
    disagreements: int
    tolerance: dict[str, float]
    failures: tuple[str, ...] = ()
    accuracy: float | None = None
    pytorch_accuracy: float | None = None
    recall: dict[str, float] = field(default_factory=dict)
    pytorch_recall: dict[str, float] = field(default_factory=dict)
    max_abs_probability_diff: float | None = None  # after softmax (recorded since raw-input twins)

    json_extras = ("passed",)  # computed, written for readers of the JSON

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class GuardAttempt:
    kept_float: int
    max_abs_logit_diff: float
    top1_agreement: float


@dataclass(frozen=True)
class GuardReport:
    """What the int8 accuracy guard tried when full int8 failed, and what keeping layers in
    float cost."""

    full_int8: Validation
    full_int8_size_bytes: int
    full_int8_latency_ms: float
    excluded_nodes: tuple[str, ...]
    tried: tuple[GuardAttempt, ...]
    quantizable: int
    size_bytes_cost: int
    latency_ms: float


@dataclass(frozen=True)
class CompanionFile:
    """A file a variant loads beside ``file`` (an OpenVINO IR's weights ``.bin``), checked at load
    like the file itself."""

    file: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class VariantRecord:
    file: str
    variant: str
    status: Status
    sha256: str
    size_bytes: int  # every file of the variant together (``file`` and its companions)
    export_seconds: float
    validation: Validation
    quantization: dict[str, Any] = field(default_factory=dict)
    guard: GuardReport | None = None
    # batch-1 ms per image through Classifier on the export machine (passed variants; absent in
    # manifests written before export measured it): medvit_edge/runtime/recommend.py
    latency_ms: float | None = None
    companions: tuple[CompanionFile, ...] = ()  # absent in manifests written before OpenVINO


@dataclass(frozen=True)
class Recommendation:
    """The variant export recommends: the fastest that passed validation on the machine it was
    measured on (``machine``; ``isa`` decides whether ``infer`` may trust it elsewhere)."""

    variant: str
    file: str
    latency_ms: float
    machine: str
    isa: tuple[str, ...]
    runs: int


@dataclass(frozen=True)
class GoldenRecord:
    """The golden files (``golden/``): images with every variant's expected probabilities,
    re-run by ``medvit-edge check`` on a new device (medvit_edge/deploy/golden.py)."""

    folder: str
    index: str  # the JSON file inside ``folder``
    sha256: str  # of that JSON file, which lists every other golden file's sha256
    images: int
    variants: tuple[str, ...]
    # "phantom": synthetic images (the default, no patient pixels); "validation": real images
    # asked for with --golden-images (manifests written before this field hold real ones)
    source: str = "validation"


@dataclass(frozen=True)
class MergeTrial:
    """One token-merging schedule ``export --merge-tokens auto`` tried: its fp32 merged graph
    against the unmerged PyTorch model on the validation images, and its batch-1 latency."""

    r: int
    schedule: tuple[int, ...]
    top1_agreement: float
    accuracy: float | None
    recall: dict[str, float]  # the guarded classes
    latency_ms: float
    passed: bool
    failures: tuple[str, ...] = ()
    requested: str = ""  # as --merge-tokens spells it: "8" (uniform) or "4,4,6,6" (a schedule)


@dataclass(frozen=True)
class MergeReport:
    """The token merging of the merged twins (export --merge-tokens), and the search behind it."""

    requested: str  # "8", "4,4,8,8" or "auto"
    r: int | None  # None: auto found no schedule that passes (no merged twins written)
    schedule: tuple[int, ...]  # tokens merged in each encoder layer
    tokens: tuple[int, ...]  # tokens entering each layer, then leaving the last
    unmerged_latency_ms: float | None = None  # the unmerged fp32 graph, timed like the trials
    search: tuple[MergeTrial, ...] = ()


@dataclass(frozen=True)
class Manifest:
    source: str
    source_sha256: str
    labels: tuple[str, ...]
    preprocess: dict[str, Any]
    created: str
    versions: dict[str, str]
    validation_data: dict[str, Any]
    variants: tuple[VariantRecord, ...]
    graph_fusions: dict[str, int] = field(default_factory=dict)
    format: int = 1
    golden: GoldenRecord | None = None  # absent in manifests written before golden files
    recommended: Recommendation | None = None  # absent before export measured latency
    # the policy stamped into every variant (medvit_edge.runtime.policy); absent in older manifests
    decision_policy: DecisionPolicy | None = None
    token_merging: MergeReport | None = None  # export --merge-tokens; absent otherwise

    def entry(self, file_name: str) -> VariantRecord | None:
        return next((v for v in self.variants if v.file == file_name), None)

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        write_json_atomic(path, to_json_dict(self))
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``, None when there is none; ``ModelLoadError`` when it is
        unusable."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            if os.path.lexists(path):  # a FIFO, device or dangling link must not pass for "none"
                raise ModelLoadError(f"{path}: not a regular file; cannot verify the models against it")
            return None
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ModelLoadError(f"{path}: more than {MAX_MANIFEST_BYTES} bytes; not a manifest")
            data = json.loads(path.read_bytes().decode("utf-8"))
        except RecursionError as exc:
            raise ModelLoadError(f"{path}: unreadable manifest (nested too deeply)") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: unreadable manifest ({exc})") from exc
        try:
            manifest = from_json_dict(cls, data, str(path))
        except ValueError as exc:  # a record's own check (a decision policy's temperature ...)
            raise ModelLoadError(f"{path}: {exc}") from exc
        for record in manifest.variants:
            for name in (record.file, *(companion.file for companion in record.companions)):
                if not _plain_file_name(name):
                    raise ModelLoadError(
                        f"{path}: entry {name!r} points outside the model folder; refusing it"
                    )
        return manifest


def manifest_entry(model_path: Path) -> VariantRecord | None:
    """The manifest's record of this file, if a manifest beside it lists it."""
    manifest = Manifest.read(model_path.parent)
    return manifest.entry(model_path.name) if manifest else None


def _plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def to_json_dict(record: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists (``dataclasses.asdict`` without the copies)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        names = [f.name for f in dataclasses.fields(record)] + list(getattr(record, "json_extras", ()))
        return {name: to_json_dict(getattr(record, name)) for name in names}
    if isinstance(record, (list, tuple)):
        return [to_json_dict(item) for item in record]
    if isinstance(record, dict):
        return {key: to_json_dict(value) for key, value in record.items()}
    return record


def from_json_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from parsed JSON, checking every field's type; a mismatch is a
    ``ModelLoadError`` naming ``where`` and the field."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: expected a JSON object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # unknown keys (json_extras, newer fields) are ignored
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ModelLoadError(f"{where}: '{f.name}' is missing")
            continue
        values[f.name] = _convert(hints[f.name], data[f.name], f"{where}: '{f.name}'")
    return cls(**values)


def _convert(annotation: Any, value: Any, where: str) -> Any:
    allowed = literal_values(annotation)
    if allowed is not None:
        if value not in allowed:
            raise ModelLoadError(f"{where} must be one of {[a for a in allowed if a is not None]}")
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if annotation is DecisionPolicy:  # one strict reader for the policy, wherever it is stored
        from medvit_edge.runtime.metadata import MetadataError
        from medvit_edge.runtime.policy import policy_from_dict

        try:
            return policy_from_dict(value, where)
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
    if dataclasses.is_dataclass(annotation):
        return from_json_dict(annotation, value, where)
    if origin is tuple:
        _expect(value, list, where)
        return tuple(_convert(args[0], item, where) for item in value)
    if origin is dict or annotation is dict:
        _expect(value, dict, where)
        return value
    if annotation is float:
        _expect(value, (int, float), where)
        return float(value)
    if annotation in (int, str, bool):
        _expect(value, annotation, where)
        return value
    return value  # Any


def _expect(value: Any, kind: Any, where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "number"
        raise ModelLoadError(f"{where} must be a JSON {names}, found {type(value).__name__}")

"""What every exported ONNX file says about itself, in ``metadata_props``.

Each value is a string; structured ones are JSON (parsed with ``json``, never ``eval``).
A C++/C# integrator reads the same keys through onnxruntime's ``ModelMetadata``.

| key                       | value                                                        |
|---------------------------|--------------------------------------------------------------|
| ``medvit_edge.format``    | metadata format version, ``"1"``                            |
| ``labels``                | JSON list of class names, index = output column              |
| ``preprocess``            | JSON ``PreprocessSpec`` (size, resize, crop, mean, std, ...) |
| ``variant``               | ``fp32``, ``fp16``, ``int8-dynamic``, ``int8-static`` ...    |
| ``source_sha256``         | sha256 of the PyTorch weights the file was exported from     |
| ``versions``              | JSON object: package and library versions at export          |
| ``created``               | export time, ISO 8601 UTC                                    |
| ``quantization``          | JSON object with the int8 settings (int8 variants only)      |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from medvit_edge.preprocess import PreprocessError, PreprocessSpec

FORMAT_KEY = "medvit_edge.format"
FORMAT_VERSION = "1"
REQUIRED_KEYS = ("labels", "preprocess", "variant")
# Columns of every prediction row: a label with one of these names would overwrite it.
RESERVED_COLUMNS = frozenset({"path", "frame", "label", "error", "variant", "model_sha256", "decision"})
MAX_LABEL_LENGTH = 64


class MetadataError(ValueError):
    """A model file's metadata is missing or malformed."""


@dataclass(frozen=True)
class ModelMetadata:
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    variant: str
    source_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        props = {
            FORMAT_KEY: FORMAT_VERSION,
            "labels": json.dumps(list(self.labels)),
            "preprocess": self.preprocess.to_json(),
            "variant": self.variant,
            "source_sha256": self.source_sha256,
            "versions": json.dumps(self.versions, sort_keys=True),
            "created": self.created,
        }
        if self.quantization:
            props["quantization"] = json.dumps(self.quantization, sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``metadata_props``; ``source`` names the file in error messages."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise MetadataError(
                f"{source}: no medvit-edge metadata ({', '.join(missing)} missing). Export it "
                "with `medvit-edge export`, or add the keys described in medvit_edge.metadata."
            )
        labels = check_labels(_json_value(props, "labels", list, source), source)
        try:
            spec = PreprocessSpec.from_json(props["preprocess"])
        except (PreprocessError, TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: bad 'preprocess' metadata: {exc}") from exc
        return cls(
            labels=tuple(labels),
            preprocess=spec,
            variant=_check_text(props["variant"], "variant", source),
            source_sha256=props.get("source_sha256", ""),
            versions=_json_value(props, "versions", dict, source, default={}),
            created=props.get("created", ""),
            quantization=_json_value(props, "quantization", dict, source, default={}),
        )


def check_labels(labels: Any, source: str) -> list[str]:
    """Labels become output columns and class names: at least two distinct, non-empty, printable
    strings, none named like a fixed column."""
    if not isinstance(labels, list) or len(labels) < 2:
        raise MetadataError(f"{source}: 'labels' must be a JSON list of at least 2 class names")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise MetadataError(f"{source}: label {label!r} is not a non-empty string")
        if len(label) > MAX_LABEL_LENGTH or not label.isprintable():
            raise MetadataError(f"{source}: label {label!r} is too long or holds control characters")
        if label.lower() in RESERVED_COLUMNS:
            raise MetadataError(f"{source}: label {label!r} collides with an output column")
    folded = [label.lower() for label in labels]
    repeated = sorted({label for label in labels if folded.count(label.lower()) > 1})
    if repeated:
        raise MetadataError(f"{source}: labels repeat ({', '.join(repeated)})")
    return labels


def _check_text(value: str, key: str, source: str) -> str:
    if not value or len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        raise MetadataError(f"{source}: metadata {key!r} must be a short printable string, got {value!r}")
    return value


def _json_value(props: dict[str, str], key: str, kind: type, source: str, default: Any = None) -> Any:
    if key not in props:
        return default
    try:
        value = json.loads(props[key])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(f"{source}: metadata '{key}' is not valid JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise MetadataError(f"{source}: metadata '{key}' must be a JSON {kind.__name__}")
    return value

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
        labels = _json_value(props, "labels", list, source)
        if not labels or not all(isinstance(label, str) for label in labels):
            raise MetadataError(f"{source}: 'labels' must be a non-empty JSON list of strings")
        try:
            spec = PreprocessSpec.from_json(props["preprocess"])
        except (PreprocessError, TypeError) as exc:
            raise MetadataError(f"{source}: bad 'preprocess' metadata: {exc}") from exc
        return cls(
            labels=tuple(labels),
            preprocess=spec,
            variant=props["variant"],
            source_sha256=props.get("source_sha256", ""),
            versions=_json_value(props, "versions", dict, source, default={}),
            created=props.get("created", ""),
            quantization=_json_value(props, "quantization", dict, source, default={}),
        )


def _json_value(props: dict[str, str], key: str, kind: type, source: str, default: Any = None) -> Any:
    if key not in props:
        return default
    try:
        value = json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source}: metadata '{key}' is not valid JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise MetadataError(f"{source}: metadata '{key}' must be a JSON {kind.__name__}")
    return value

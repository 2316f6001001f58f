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
| ``input``                 | ``pixel-values-nchw`` (float32 N×3×size×size, preprocessed)  |
|                           | or ``raw-uint8-nhwc`` (uint8 N×H×W×3 RGB, preprocessing in   |
|                           | the graph); absent means ``pixel-values-nchw``               |
| ``model_name``            | the model's name (its model card's ``model_name``)           |
| ``model_version``         | a whole number, also the ONNX ``model_version``              |
| ``intended_use``          | from the model card                                          |
| ``contraindications``     | from the model card                                          |
| ``notice``                | the research-use notice                                      |
| ``license``               | the weights' licence (model card)                            |
| ``decision_policy``       | JSON ``DecisionPolicy``: temperature, operating points,      |
|                           | refer rule (medvit_edge.runtime.policy); absent: T 1, argmax       |
| ``token_merging``         | JSON ``{"r": int, "schedule": [int per layer]}``: tokens     |
|                           | merged in each encoder layer (token-merged twins only;       |
|                           | export --merge-tokens); absent: no merging                   |

The last six (governance) are plain text; files exported before them lack them (read as "").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from medvit_edge.errors import MetadataError
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.preprocess import PreprocessError, PreprocessSpec

FORMAT_KEY = "medvit_edge.format"
FORMAT_VERSION = "1"
REQUIRED_KEYS = ("labels", "preprocess", "variant")
# Columns of every prediction row: a label with one of these names would overwrite it.
RESERVED_COLUMNS = frozenset(
    {"path", "frame", "label", "error", "variant", "model_sha256", "decision"}
    | {"study_uid", "series_uid", "sop_uid"}  # DICOM identifiers (medvit_edge.io.reader.UID_COLUMNS)
)
MAX_LABEL_LENGTH = 64
# What the graph's input is: the numpy path's preprocessed tensor, or decoded RGB pixels.
InputKind = Literal["pixel-values-nchw", "raw-uint8-nhwc"]
PIXEL_VALUES_INPUT: InputKind = "pixel-values-nchw"
RAW_INPUT: InputKind = "raw-uint8-nhwc"
GOVERNANCE_KEYS = ("model_name", "model_version", "intended_use", "contraindications", "notice", "license")
POLICY_KEY = "decision_policy"
MERGE_KEY = "token_merging"
RESEARCH_NOTICE = "Research use only. Not a medical device; not for diagnosis."


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported file says about itself (its ONNX custom metadata, or an OpenVINO IR's
    runtime info): labels, preprocessing, variant, provenance, governance text and the decision
    policy. ``Classifier.metadata`` holds the loaded file's; ``from_props`` checks every key."""

    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    variant: str
    source_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)
    input: InputKind = PIXEL_VALUES_INPUT
    # governance, from the run's model card (export/card.py); plain text, "" when unknown
    model_name: str = ""
    model_version: str = ""
    intended_use: str = ""
    contraindications: str = ""
    notice: str = ""
    license: str = ""
    # how probabilities become decisions: the same in every variant of an export
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    # token merging in the graph ({"r": ..., "schedule": [...]}), empty for an unmerged file
    token_merging: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        props = {
            FORMAT_KEY: FORMAT_VERSION,
            "labels": json.dumps(list(self.labels)),
            "preprocess": self.preprocess.to_json(),
            "variant": self.variant,
            "source_sha256": self.source_sha256,
            "versions": json.dumps(self.versions, sort_keys=True),
            "created": self.created,
            "input": self.input,
        }
        if self.quantization:
            props["quantization"] = json.dumps(self.quantization, sort_keys=True)
        props.update({key: getattr(self, key) for key in GOVERNANCE_KEYS if getattr(self, key)})
        props[POLICY_KEY] = self.policy.to_json()
        if self.token_merging:
            props[MERGE_KEY] = json.dumps(self.token_merging, sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``metadata_props``; ``source`` names the file in error messages."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise MetadataError(
                f"{source}: no medvit-edge metadata ({', '.join(missing)} missing). Export it "
                "with `medvit-edge export`, or add the keys described in medvit_edge.runtime.metadata."
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
            input=_input_kind(props.get("input", PIXEL_VALUES_INPUT), source),
            **{key: props.get(key, "") for key in GOVERNANCE_KEYS},
            policy=_policy(props, labels, source),
            token_merging=_token_merging(props, source),
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
        if label.lower() == "refer":  # medvit_edge.runtime.policy.REFER: a decision, never a class
            raise MetadataError(f"{source}: label {label!r} is the decision 'refer' (hand to a radiologist)")
    folded = [label.lower() for label in labels]
    repeated = sorted({label for label in labels if folded.count(label.lower()) > 1})
    if repeated:
        raise MetadataError(f"{source}: labels repeat ({', '.join(repeated)})")
    return labels


def _policy(props: dict[str, str], labels: list[str], source: str) -> DecisionPolicy:
    """The file's decision policy (absent: the default); every label it names must be one of
    the model's."""
    if POLICY_KEY not in props:
        return DecisionPolicy()
    policy = DecisionPolicy.from_json(props[POLICY_KEY], source)
    for point in policy.operating_points:
        if point.positive not in labels:
            raise MetadataError(
                f"{source}: metadata 'decision_policy' operating point {point.name!r} names "
                f"{point.positive!r}, which is not a label of this model ({', '.join(labels)})"
            )
    return policy


def _token_merging(props: dict[str, str], source: str) -> dict[str, Any]:
    """``{"r": whole number, "schedule": [whole numbers]}``, strictly; absent: {} (no merging)."""
    if MERGE_KEY not in props:
        return {}
    text = props[MERGE_KEY]
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(f"{source}: metadata '{MERGE_KEY}' is not valid JSON ({exc})") from exc

    def whole(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool) and item >= 0

    schedule = value.get("schedule") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or set(value) != {"r", "schedule"}
        or not whole(value["r"])
        or not isinstance(schedule, list)
        or not all(whole(item) for item in schedule)
    ):
        raise MetadataError(
            f"{source}: metadata '{MERGE_KEY}' must be a JSON object "
            '{"r": whole number, "schedule": [whole numbers, one per layer]}'
        )
    return value


def _input_kind(value: str, source: str) -> InputKind:
    kinds = get_args(InputKind)
    if value not in kinds:
        raise MetadataError(f"{source}: metadata 'input' must be one of {', '.join(kinds)}, got {value!r}")
    return value  # type: ignore[return-value]


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

"""Metadata is JSON in, JSON out; anything else is refused with a message that names the file."""

from __future__ import annotations

import pytest

from medvit_edge.runtime.metadata import MetadataError, ModelMetadata
from medvit_edge.runtime.preprocess import PreprocessSpec


def _metadata() -> ModelMetadata:
    return ModelMetadata(
        labels=("benign", "malignant", "normal"),
        preprocess=PreprocessSpec(size=64, resize_size=64),
        variant="int8-dynamic",
        source_sha256="ab" * 32,
        versions={"onnx": "1.0"},
        created="2026-01-01T00:00:00+00:00",
        quantization={"per_channel": True},
    )


def test_round_trip() -> None:
    props = _metadata().to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert ModelMetadata.from_props(props) == _metadata()


def test_missing_keys_say_what_is_missing() -> None:
    with pytest.raises(MetadataError, match=r"model.onnx: no medvit-edge metadata \(labels, preprocess"):
        ModelMetadata.from_props({"variant": "fp32"}, source="model.onnx")


@pytest.mark.parametrize("labels", ["__import__('os').system('true')", "['a', 'b']", "[]", "[1, 2]", '"abc"'])
def test_labels_must_be_a_json_list_of_strings(labels: str) -> None:
    props = _metadata().to_props() | {"labels": labels}
    with pytest.raises(MetadataError, match="label"):
        ModelMetadata.from_props(props)


def test_bad_preprocess_is_reported() -> None:
    props = _metadata().to_props() | {"preprocess": '{"size": -1}'}
    with pytest.raises(MetadataError, match="preprocess"):
        ModelMetadata.from_props(props)

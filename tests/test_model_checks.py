"""A model is checked at load (metadata, signature, manifest, the bytes it is built from), and the
runtime's API behaves at the edges (empty input, many inputs). Each test here failed on the code
before it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvit_edge.errors import ModelLoadError
from medvit_edge.runtime.classifier import CHUNK, Classifier

from .conftest import needs_export

pytestmark = [needs_export]
LABELS = ["benign", "malignant", "normal"]


def small_model(
    path: Path, *, input_type: int | None = None, labels: object = LABELS, **spec: object
) -> Path:
    """A real ONNX classifier (mean pooling + a linear layer) with medvit-edge metadata; the input
    element type, labels and preprocessing spec can be set to hostile values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    input_type = TensorProto.FLOAT if input_type is None else input_type
    size = spec.get("size", 16)
    nodes = [
        helper.make_node("Cast", ["pixel_values"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    weights = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 2, "W")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    dims = ["N", 3, size, size] if isinstance(size, int) else ["N", 3, 16, 16]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("pixel_values", input_type, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [weights, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    preprocess = {"size": 16, "resize_size": 16, **spec}
    props = {"labels": json.dumps(labels), "preprocess": json.dumps(preprocess), "variant": "fp32"}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_the_small_model_itself_loads_and_predicts(tmp_path: Path) -> None:
    classifier = Classifier.load(small_model(tmp_path / "ok.onnx"))
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 1] = 255  # green: the second class scores highest
    assert classifier.predict(pixels).label == "malignant"


@pytest.mark.parametrize(
    ("labels", "cause"),
    [
        (["path", "malignant", "normal"], "collides with an output column"),
        (["benign", "model_sha256", "normal"], "collides with an output column"),
        (["benign", "benign", "normal"], "labels repeat"),
        (["Benign", "benign", "normal"], "labels repeat"),
        (["", "malignant", "normal"], "not a non-empty string"),
        ([1, 2, 3], "not a non-empty string"),
        (["only"], "at least 2"),
        (["a\nb", "c", "d"], "control characters"),
        ({"0": "benign"}, "must be a JSON list"),
    ],
)
def test_labels_that_would_break_the_output_are_refused(tmp_path: Path, labels: object, cause: str) -> None:
    with pytest.raises(ModelLoadError, match=cause):
        Classifier.load(small_model(tmp_path / "m.onnx", labels=labels))


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ({"std": [float("nan"), 0.5, 0.5]}, "std needs 3 finite numbers"),
        ({"std": [0.0, 0.5, 0.5]}, "std must be > 0"),
        ({"std": [-1.0, 0.5, 0.5]}, "std must be > 0"),
        ({"mean": ["a", 0.5, 0.5]}, "mean needs 3 finite numbers"),
        ({"size": 16.0}, "size must be a whole number"),
        ({"size": 20000, "resize_size": 20000}, "size must be a whole number"),
        ({"size": "16"}, "size must be a whole number"),
        ({"rescale_factor": 0}, "rescale_factor"),
    ],
)
def test_a_preprocessing_spec_that_cannot_work_is_refused(tmp_path: Path, spec: dict, cause: str) -> None:
    with pytest.raises(ModelLoadError, match=cause):
        Classifier.load(small_model(tmp_path / "m.onnx", **spec))


@pytest.mark.parametrize("name", ["FLOAT16", "INT64", "UINT8"])
def test_an_input_that_is_not_float32_is_refused_at_load(tmp_path: Path, name: str) -> None:
    from onnx import TensorProto

    path = small_model(tmp_path / "m.onnx", input_type=getattr(TensorProto, name))
    with pytest.raises(ModelLoadError, match="input/output types"):
        Classifier.load(path)


def test_empty_input_gives_an_empty_result(tmp_path: Path) -> None:
    classifier = Classifier.load(small_model(tmp_path / "m.onnx"))
    assert classifier.predict([]) == []
    assert classifier.predict_proba([]).shape == (0, 3)


def test_many_inputs_run_in_bounded_batches(tmp_path: Path) -> None:
    """10,000 frames once ran as one batch (3.4 GB): the runtime now preprocesses and runs CHUNK
    images at a time, and the results are the same as one by one."""
    classifier = Classifier.load(small_model(tmp_path / "m.onnx"))
    seen: list[int] = []
    session_run = classifier.session.run

    class Recording:
        def run(self, outputs: list, feed: dict) -> list:
            seen.append(len(next(iter(feed.values()))))
            return session_run(outputs, feed)

        def __getattr__(self, name: str) -> object:
            return getattr(classifier.session, name)

    frames = [np.full((20, 30), i % 256, np.uint8) for i in range(5 * CHUNK + 3)]
    one_by_one = [classifier.predict(frame) for frame in frames]
    classifier.session = Recording()
    assert classifier.predict(frames) == one_by_one
    assert max(seen) <= CHUNK and sum(seen) == len(frames)


@pytest.mark.parametrize("swap", ["rewrite in place", "rename over"])
def test_a_model_swapped_while_loading_is_not_accepted_with_the_good_checksum(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """The file is replaced just as onnxruntime starts reading it, after its checksum matched the
    manifest: the load is refused, never accepted under the good file's sha256."""
    import os

    import onnxruntime

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_export, folder)
    good, other = folder / "model.int8.onnx", folder / "model.fp16.onnx"
    real = onnxruntime.InferenceSession

    class Swapping(real):  # type: ignore[misc, valid-type]
        def __init__(self, model: object, *args: object, **kwargs: object) -> None:
            if swap == "rename over":
                shutil.copyfile(other, folder / "staged.onnx")
                os.replace(folder / "staged.onnx", good)
            else:
                shutil.copyfile(other, good)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Swapping)
    with pytest.raises(ModelLoadError, match="changed while it was being loaded"):
        Classifier.load(good, device="cpu")


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b'{"variants": [{"file": "model.onnx", "sha', "unreadable manifest"),
        (b"\xff\xfe not utf-8", "unreadable manifest"),
        (b'{"variants": {"file": "model.onnx"}}', "missing|must be a JSON"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_a_malformed_manifest_is_a_clear_load_error(
    tiny_export: Path, tmp_path: Path, content: bytes, cause: str
) -> None:
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_export, folder)
    (folder / "manifest.json").write_bytes(content)
    with pytest.raises(ModelLoadError, match=cause):
        Classifier.load(folder / "model.onnx")


def test_a_manifest_entry_with_a_wrong_type_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["variants"][0]["sha256"] = 12345
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="'sha256' must be a JSON str"):
        Classifier.load(folder / "model.onnx")


@pytest.mark.parametrize("escape", ["../outside.onnx", "/etc/passwd", "sub/model.onnx"])
def test_evaluate_refuses_manifest_entries_outside_the_folder(
    tiny_export: Path, tmp_path: Path, escape: str
) -> None:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_export.parent, run, ignore=shutil.ignore_patterns("checkpoints"))
    manifest = json.loads((run / "onnx" / "manifest.json").read_text())
    manifest["variants"][0]["file"] = escape
    (run / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="points outside the model folder"):
        evaluate(EvaluateConfig(run_dir=run, output=tmp_path / "e", pytorch=False, plots=False))

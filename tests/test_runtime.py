"""The runtime: inputs of every kind, parity with the torchvision pipeline, clear errors, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit_edge.runtime.classifier import Classifier, ModelLoadError, choose_providers

from .conftest import needs_export

pytestmark = [needs_export]


@pytest.fixture(scope="module")
def classifier(tiny_export: Path) -> Classifier:
    return Classifier.load(tiny_export / "model.int8.onnx", device="cpu", threads=2)


@pytest.fixture(scope="module")
def images(phantom_dir: Path) -> list[Path]:
    """Real files of varied sizes (the phantoms are not square)."""
    return sorted(phantom_dir.rglob("*.png"))[::3][:40]


def test_predict_accepts_paths_pil_arrays_and_batches(classifier: Classifier, images: list) -> None:
    path = images[0]
    image = Image.open(path)
    expected = classifier.predict(path)
    for item in (
        str(path),
        image,
        np.asarray(image),
        np.asarray(image.convert("L")),
        np.asarray(image).astype(np.float32) / 255,
    ):
        assert classifier.predict(item).label == expected.label
    assert classifier.predict(np.asarray(image)).probabilities == pytest.approx(
        expected.probabilities, abs=1e-6
    )
    batch = classifier.predict(images[:4])
    # exactly equal: a result never depends on its batch-mates (dynamic int8 runs image by image)
    assert isinstance(batch, list) and len(batch) == 4 and batch[0] == expected


def test_runtime_equals_onnxruntime_fed_by_torchvision(classifier: Classifier, images: list) -> None:
    import onnxruntime as ort

    from medvit_edge.runtime.policy import softmax
    from medvit_edge.train.models import torchvision_transforms

    transform = torchvision_transforms(classifier.spec, train=False)
    session = ort.InferenceSession(str(classifier.path), providers=["CPUExecutionProvider"])
    pictures = [Image.open(p).convert("RGB") for p in images[::4]]
    tensors = [transform(i)[None].numpy() for i in pictures]
    logits = np.concatenate([session.run(None, {"pixel_values": t})[0] for t in tensors])
    np.testing.assert_allclose(classifier.logits(pictures), logits, atol=1e-5)
    reference = softmax(logits / classifier.policy.temperature)  # the file's calibration
    assert np.abs(classifier.predict_proba(pictures) - reference).max() <= 1e-6


def test_model_without_metadata_is_a_clear_error(tiny_export: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(tiny_export / "model.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelLoadError, match=r"bare.onnx: no medvit-edge metadata"):
        Classifier.load(bare)


def test_metadata_that_contradicts_the_graph_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(tiny_export / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "labels":
            prop.value = '["a", "b"]'
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    with pytest.raises(ModelLoadError, match="3 classes but metadata lists 2"):
        Classifier.load(wrong)


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    with pytest.raises(ModelLoadError, match=r"junk\.onnx: onnxruntime cannot load it"):
        Classifier.load(junk)
    with pytest.raises(ModelLoadError, match="not found"):
        Classifier.load(tmp_path / "missing.onnx")


def test_provider_choice() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError):
        choose_providers("tpu")


def test_one_classifier_shared_by_eight_threads(classifier: Classifier, images: list) -> None:
    """8 threads x 200 predictions each equal the sequential results, with no errors."""
    inputs = [np.asarray(Image.open(p)) for p in images[:25]]
    sequential = [classifier.predict_proba([x])[0] for x in inputs]
    errors: list[BaseException] = []
    mismatches = []

    def worker(offset: int) -> None:
        try:
            for i in range(200):
                k = (i + offset) % len(inputs)
                if not np.array_equal(classifier.predict_proba([inputs[k]])[0], sequential[k]):
                    mismatches.append((offset, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and mismatches == []

"""Raw-input twins (``export --raw-input``): preprocessing inside the graph, checked against the
numpy path on real and synthetic images, loaded by the runtime, infer and evaluate, and run from
Node.js with onnxruntime-node and no image code of ours."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medvit_edge import cli
from medvit_edge.errors import UserError
from medvit_edge.runtime.classifier import Classifier, ModelLoadError
from medvit_edge.runtime.images import ImageDecodeError, load_image
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.metadata import MetadataError, ModelMetadata
from medvit_edge.runtime.policy import softmax
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess

from .conftest import REPO, needs_export

pytestmark = [needs_export]

NODE_EXAMPLE = REPO / "examples" / "node"
PAIRS = {  # raw twin -> the numpy-path file it wraps
    "model.raw.onnx": "model.onnx",
    "model.fp16.raw.onnx": "model.fp16.onnx",
    "model.int8.raw.onnx": "model.int8.onnx",
}
SIZES = [(1, 1), (2, 3), (3, 2), (7, 5), (63, 64), (64, 63), (223, 224), (640, 480), (480, 640)]
SIZES += [(1280, 720), (1080, 1920), (1920, 1080)]  # (width, height)


def _graph_session(spec: PreprocessSpec):  # type: ignore[no-untyped-def]
    """The preprocessing graph alone: uint8 NHWC -> the model's float32 NCHW input."""
    import onnxruntime as ort

    from medvit_edge.export.raw import preprocessing_model

    model = preprocessing_model(spec)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _grey_levels(spec: PreprocessSpec, session, image: Image.Image) -> np.ndarray:  # type: ignore[no-untyped-def]
    """|graph - numpy path| per value, in 8-bit grey levels."""
    expected = preprocess(image, spec)
    got = session.run(None, {"image": np.asarray(image)[None]})[0][0]
    assert got.shape == expected.shape
    return np.abs(got - expected) * np.asarray(spec.std, np.float32)[:, None, None] * 255


def _test_images(width: int, height: int, rng: np.random.Generator) -> list[Image.Image]:
    """Noise (any misplaced pixel shows) and a smooth gradient, RGB."""
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.add.outer(np.arange(height) * 255 // max(height, 1), np.arange(width) * 255 // max(width, 1))
    gradient = np.repeat((ramp // 2).astype(np.uint8)[:, :, None], 3, axis=2)
    return [Image.fromarray(noise), Image.fromarray(gradient)]


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(size=64, resize_size=64),
        PreprocessSpec(size=224, resize_size=256, interpolation="bicubic", mean=(0.485, 0.456, 0.406)),
        PreprocessSpec(size=64, resize_size=48),  # smaller than the crop: zero padding
        PreprocessSpec(size=32, resize_mode="squash", std=(0.229, 0.224, 0.225)),
    ],
    ids=["shortest-edge", "bicubic-crop", "padded", "squash"],
)
def test_graph_preprocessing_matches_the_numpy_path(spec: PreprocessSpec, rng: np.random.Generator) -> None:
    """From 1x1 to 1920x1080, both orientations: within 2 grey levels, and a differing value is
    rare (a shifted crop or a wrong filter would move most of them; smooth gradients hit exact
    rounding ties more often than photographs)."""
    session = _graph_session(spec)
    for width, height in SIZES:
        for image in _test_images(width, height, rng):
            levels = _grey_levels(spec, session, image)
            assert levels.max() <= 2.01, (width, height, levels.max())
            assert (levels > 0.5).mean() < 0.1, (width, height, (levels > 0.5).mean())


def test_graph_normalisation_is_the_numpy_paths_bit_for_bit() -> None:
    """Without a resize (the image is the crop), every one of the 256 levels per channel gives
    the numpy path's float32 value exactly."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    pixels = np.dstack([levels, levels[::-1], levels.T])
    for spec in (
        PreprocessSpec(size=16, resize_size=16),
        PreprocessSpec(size=16, resize_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        PreprocessSpec(size=16, resize_size=16, rescale_factor=0.004, mean=(0.1, 0.2, 0.3)),
    ):
        got = _graph_session(spec).run(None, {"image": pixels[None]})[0][0]
        np.testing.assert_array_equal(got, preprocess(Image.fromarray(pixels), spec))


def test_graph_preprocessing_on_real_images(phantom_dir: Path) -> None:
    spec = PreprocessSpec(size=224, resize_size=224)
    session = _graph_session(spec)
    levels = np.concatenate(
        [_grey_levels(spec, session, load_image(p)).ravel() for p in sorted(phantom_dir.rglob("*.png"))[::6]]
    )
    assert levels.max() <= 2.01 and np.percentile(levels, 99) <= 1.01


def test_graph_preprocessing_on_busi(busi_images: list[Path]) -> None:
    spec = PreprocessSpec(size=224, resize_size=224)
    session = _graph_session(spec)
    images = [p for p in busi_images if "_mask" not in p.name][::40]
    levels = np.concatenate([_grey_levels(spec, session, load_image(p)).ravel() for p in images])
    assert levels.max() <= 2.01 and np.percentile(levels, 99) <= 1.01 and (levels > 0.5).mean() < 0.05


def test_filters_and_opsets_the_graph_cannot_follow_are_refused(tmp_path: Path) -> None:
    from medvit_edge.export import ExportConfig
    from medvit_edge.export.raw import check_spec

    for interpolation in ("lanczos", "box", "hamming", "nearest"):
        with pytest.raises(UserError, match=interpolation):
            check_spec(PreprocessSpec(interpolation=interpolation))
    with pytest.raises(UserError, match="opset 18"):
        ExportConfig(run_dir=tmp_path, raw_input=True, opset=17)
    assert ExportConfig(run_dir=tmp_path, raw_input=True, fp16=True).requested_variants() == [
        "fp32",
        "fp16",
        "fp32-raw",
        "fp16-raw",
    ]


def test_input_marker_in_the_metadata_is_checked() -> None:
    spec = PreprocessSpec()
    props = ModelMetadata(labels=("a", "b"), preprocess=spec, variant="fp32").to_props()
    assert props["input"] == "pixel-values-nchw"
    del props["input"]  # files exported before the marker existed
    assert ModelMetadata.from_props(props).input == "pixel-values-nchw"
    with pytest.raises(MetadataError, match="'input' must be one of"):
        ModelMetadata.from_props({**props, "input": "raw-float"})


# -- the exported twins -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every variant and its raw-input twin, through the CLI."""
    output = tmp_path_factory.mktemp("raw") / "onnx"
    command = ["export", str(tiny_run), "--output", str(output), "--fp16", "--int8", "--raw-input"]
    result = CliRunner().invoke(cli.main, [*command, "--allow-degraded"])
    assert result.exit_code == 0, result.output
    assert "model.int8.raw.onnx" in result.stdout
    return output


@pytest.fixture(scope="module")
def phantom_tests(phantom_dir: Path) -> list[Path]:
    return sorted((phantom_dir / "test").rglob("*.png"))


def test_raw_twins_are_validated_listed_and_stamped(raw_export: Path) -> None:
    import onnx

    from medvit_edge.files import sha256_file

    manifest = Manifest.read(raw_export)
    assert manifest is not None
    records = {record.file: record for record in manifest.variants}
    for raw, base in PAIRS.items():
        record = records[raw]
        assert record.variant == records[base].variant + "-raw"
        assert record.sha256 == sha256_file(raw_export / raw)
        assert record.validation.images == records[base].validation.images
        assert record.validation.max_abs_probability_diff is not None
        props = {
            p.key: p.value for p in onnx.load(str(raw_export / raw), load_external_data=False).metadata_props
        }
        base_props = {p.key: p.value for p in onnx.load(str(raw_export / base)).metadata_props}
        assert props.pop("input") == "raw-uint8-nhwc" and base_props.pop("input") == "pixel-values-nchw"
        assert props.pop("variant") == base_props.pop("variant") + "-raw"
        assert props == base_props  # labels, preprocessing, provenance, quantization settings
    fp32 = records["model.raw.onnx"]
    assert fp32.status == "passed", fp32.validation.failures
    assert fp32.validation.max_abs_probability_diff <= 0.02  # type: ignore[operator]
    assert fp32.validation.tolerance == {"min_agreement": 0.995, "max_abs_probability": 0.02}


def test_graph_signature_and_probabilities(raw_export: Path, phantom_tests: list[Path]) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(raw_export / "model.raw.onnx"), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(uint8)"
    assert isinstance(image.shape[1], str) and isinstance(image.shape[2], str) and image.shape[3] == 3
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits", "decision"]
    assert session.get_outputs()[2].type == "tensor(int64)"
    frame = np.asarray(load_image(phantom_tests[0]))
    probabilities, logits, decision = session.run(None, {"image": frame[None]})
    assert probabilities.shape == logits.shape == (1, 3) and decision.shape == (1,)
    policy = Classifier.load(raw_export / "model.raw.onnx", device="cpu").policy
    assert policy.temperature != 1.0  # calibrated: the graph's probabilities are not softmax(logits)
    np.testing.assert_array_equal(probabilities, policy.probabilities(logits))
    assert np.abs(probabilities - softmax(logits)).max() > 1e-4
    assert (
        decision.tolist()
        == policy.decision_indices(probabilities, ["benign", "malignant", "normal"]).tolist()
    )


@pytest.fixture(scope="module")
def raw_policy_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 and its raw twin with every part of a decision policy: temperature, an operating
    point and a refer rule."""
    output = tmp_path_factory.mktemp("raw_policy") / "onnx"
    policy = [
        "--operating-point",
        "malignant-sensitivity=0.9",
        "--refer-risk",
        "0.3",
        "--refer-confidence",
        "0",
    ]
    command = [
        "export",
        str(tiny_run),
        "--output",
        str(output),
        "--raw-input",
        *policy,
        "--golden-images",
        "0",
    ]
    result = CliRunner().invoke(cli.main, [*command, "--allow-degraded"])
    assert result.exit_code == 0, result.output
    return output


def test_the_graph_gives_the_runtimes_numbers_and_decisions_on_real_images(
    raw_policy_export: Path, busi_images: list[Path]
) -> None:
    """The four calls of a C++/C# integrator (load, input, run, read) give exactly what
    ``Classifier`` and ``infer`` report: calibrated probabilities and the policy's decision."""
    import onnxruntime as ort

    model = raw_policy_export / "model.raw.onnx"
    classifier = Classifier.load(model, device="cpu")
    policy = classifier.policy
    assert policy.temperature != 1.0 and policy.operating_points and policy.refer is not None
    images = busi_images[::25]  # original sizes, every class
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    found_p, found_d = [], []
    for path in images:
        frame = np.asarray(load_image(path))[None]  # decoded RGB, nothing else of ours
        probabilities, _, decision = session.run(None, {"image": frame})
        found_p.append(probabilities[0])
        found_d.append(int(decision[0]))
    expected = classifier.predict_proba(images)
    np.testing.assert_array_equal(np.stack(found_p), expected)
    names = ["refer" if d < 0 else classifier.labels[d] for d in found_d]
    assert names == classifier.decide(expected)
    assert len(set(names)) >= 2, names  # more than one branch of the policy was exercised


def test_classifier_runs_raw_files_like_their_numpy_twins(
    raw_export: Path, phantom_tests: list[Path]
) -> None:
    for raw, base in PAIRS.items():
        numpy_path = Classifier.load(raw_export / base, device="cpu").predict_proba(phantom_tests)
        classifier = Classifier.load(raw_export / raw, device="cpu")
        assert classifier.raw_input and classifier.variant.endswith("-raw")
        in_graph = classifier.predict_proba(phantom_tests)
        assert np.abs(in_graph - numpy_path).max() <= 0.02, raw
        # the label too, wherever the numpy path's top two are further apart than that allows
        top_two = np.sort(numpy_path, axis=1)[:, -2:]
        decisive = top_two[:, 1] - top_two[:, 0] > 0.04
        assert decisive.sum() >= 3  # the label check below is not vacuous (a tiny model has near-ties)
        differ = (in_graph.argmax(1) != numpy_path.argmax(1)) & decisive
        assert not differ.any(), (raw, in_graph[differ], numpy_path[differ])
    classifier = Classifier.load(raw_export / "model.raw.onnx", device="cpu")
    with pytest.raises(TypeError, match="run_raw"):
        classifier.run(np.zeros((1, 3, 64, 64), np.float32))
    grey = np.asarray(Image.open(phantom_tests[0]))  # HxW: repeated into three channels first
    assert grey.ndim == 2 and classifier.predict(grey) == classifier.predict(phantom_tests[0])
    assert classifier.predict([]) == []


def test_same_size_frames_run_together_with_the_same_results(
    raw_export: Path, phantom_tests: list[Path]
) -> None:
    classifier = Classifier.load(raw_export / "model.raw.onnx", device="cpu")
    frame = np.asarray(load_image(phantom_tests[0]))
    frames = [frame, frame[::-1].copy(), frame[:, ::-1].copy(), np.asarray(load_image(phantom_tests[1]))]
    together = classifier.run_raw(frames)
    one_by_one = np.concatenate([classifier.run_raw([f]) for f in frames])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        classifier.run_raw([frame.astype(np.float32)])


def test_infer_and_evaluate_accept_raw_files(raw_export: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate
    from medvit_edge.inference.command import InferConfig, infer

    folder = phantom_dir / "test"
    raw = infer(InferConfig(model=raw_export / "model.raw.onnx", inputs=[str(folder)], progress=False))
    numpy_path = infer(InferConfig(model=raw_export / "model.onnx", inputs=[str(folder)], progress=False))
    assert raw.failed_files == 0 and raw.files == numpy_path.files > 0
    assert [r.label for r in raw.rows] == [r.label for r in numpy_path.rows]
    assert {r.variant for r in raw.rows} == {"fp32-raw"}
    report = evaluate(
        EvaluateConfig(
            run_dir=raw_export.parent,
            data=phantom_dir / "split.csv",
            onnx_dir=raw_export,
            output=tmp_path / "evaluation",
            pytorch=False,
            plots=False,
            latency_runs=2,
            bootstrap_samples=20,
        )
    )
    rows = {row.variant: row for row in report.variants}
    assert {"fp32-raw", "fp16-raw", "int8-dynamic-raw"} <= set(rows)
    assert rows["fp32-raw"].top1_agreement == 1.0 and rows["fp32-raw"].accuracy == rows["fp32"].accuracy


def test_an_aspect_ratio_the_graph_cannot_hold_is_one_error_row(
    raw_export: Path, phantom_tests: list[Path], tmp_path: Path
) -> None:
    from medvit_edge.inference.command import InferConfig, infer

    sliver = tmp_path / "sliver.png"
    Image.fromarray(np.tile(np.arange(7000) % 251, (1, 1)).astype(np.uint8)).save(sliver)  # 7000x1
    classifier = Classifier.load(raw_export / "model.raw.onnx", device="cpu")
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        classifier.predict(sliver)
    summary = infer(
        InferConfig(
            model=raw_export / "model.raw.onnx", inputs=[str(sliver), str(phantom_tests[0])], progress=False
        )
    )
    assert (
        summary.failed_files == 1
        and "sliver.png" in summary.errors[0]
        and "aspect ratio" in summary.errors[0]
    )
    assert summary.rows[1].label


def test_a_raw_marker_on_a_float_graph_is_refused(raw_export: Path, tmp_path: Path) -> None:
    import onnx

    for source, key, value, message in (
        ("model.onnx", "input", "raw-uint8-nhwc", "metadata says raw-uint8-nhwc"),
        ("model.raw.onnx", "input", "pixel-values-nchw", "tensor\\(uint8\\)"),
    ):
        model = onnx.load(str(raw_export / source))
        next(p for p in model.metadata_props if p.key == key).value = value
        onnx.save(model, str(tmp_path / source))
        with pytest.raises(ModelLoadError, match=message):
            Classifier.load(tmp_path / source, device="cpu")


# -- a consumer in a second language ------------------------------------------------------------


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        return "run `npm ci --ignore-scripts` in examples/node first"
    return None


@pytest.mark.skipif(_node_ready() is not None, reason=_node_ready() or "")
def test_node_example_agrees_with_the_python_runtime(
    raw_export: Path, phantom_tests: list[Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    images = phantom_tests[::4] + _odd_pngs(tmp_path, phantom_tests[0])
    busi = REPO.parent / "shared" / "data" / "busi"
    images += sorted(busi.glob("*/*).png"))[::60] if busi.is_dir() else []
    model = raw_export / "model.int8.raw.onnx"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = subprocess.run(
        ["node", str(NODE_EXAMPLE / "index.js"), str(model), *map(str, images), str(broken)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "broken.png" in result.stderr, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == list(map(str, images))
    expected = Classifier.load(model, device="cpu").predict(images)
    for line, prediction in zip(lines, expected):
        assert line["label"] == prediction.label, line["path"]
        assert line["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6), line["path"]
        assert line["decision"] == prediction.decision, line["path"]  # the file's decision policy


def _odd_pngs(folder: Path, source: Path) -> list[Path]:
    """The decoding rules a Node.js integrator must follow: RGBA over black, 16-bit / 257."""
    grey = np.asarray(load_image(source))[:, :, 0]
    alpha = np.linspace(0, 255, grey.size).reshape(grey.shape).astype(np.uint8)
    rgba, deep = folder / "rgba.png", folder / "deep16.png"
    Image.fromarray(np.dstack([grey, grey[::-1], grey, alpha]), "RGBA").save(rgba)
    Image.fromarray(grey.astype(np.uint16) * 250 + 97).save(deep)  # not a multiple of 257
    assert Image.open(deep).mode.startswith("I")
    return [rgba, deep]

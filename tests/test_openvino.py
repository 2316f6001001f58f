"""OpenVINO IR variants: export --openvino (+ --int8), the runtime's OpenVINO backend, and
infer/info/check/evaluate on an ``.xml`` model. Skipped where OpenVINO/NNCF are not installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.errors import ModelLoadError
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.variants import VARIANTS, Tolerance

from .conftest import needs_export

HAS_OPENVINO = all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))
pytestmark = [
    needs_export,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_OPENVINO, reason="needs the [openvino] extra (openvino, nncf)"),
]
FP32_IR, INT8_IR = VARIANTS["openvino-fp32"].file_name, VARIANTS["openvino-int8"].file_name


@pytest.fixture(scope="module")
def ov_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom run exported with --openvino --int8 (kept when a variant fails, so the test
    that checks the statuses says which).

    int8 is judged on the tiny model's 24 validation images, some of them near-ties (top two
    logits 0.04 apart): one flipped label is 4.2%, beyond the 98% agreement that suits real
    validation sets. Any int8 file may flip one (measured: NNCF's and onnxruntime's, depending
    on the run), so here one flip is allowed and no more."""
    from medvit_edge.export import ExportConfig, export

    output = tmp_path_factory.mktemp("openvino") / "onnx"
    one_flip = Tolerance(min_agreement=0.95, max_accuracy_drop=0.05, max_recall_drop=0.15)
    cfg = ExportConfig(
        run_dir=tiny_run,
        output=output,
        int8=True,
        openvino=True,
        allow_degraded=True,
        tolerances={"openvino-int8": one_flip},
    )
    export(cfg)
    return output


@pytest.fixture(scope="module")
def test_images(phantom_dir: Path) -> list[Path]:
    return sorted((phantom_dir / "test").rglob("*.png"))


def test_export_writes_both_irs_validated_with_both_checksums(ov_export: Path) -> None:
    from medvit_edge.files import sha256_file

    manifest = Manifest.read(ov_export)
    assert manifest is not None
    for name in ("openvino-fp32", "openvino-int8"):
        record = next(r for r in manifest.variants if r.variant == name)
        assert record.status == "passed", (name, record.validation.failures)
        xml = ov_export / record.file
        (companion,) = record.companions
        assert companion.file == xml.with_suffix(".bin").name
        assert record.sha256 == sha256_file(xml)
        assert companion.sha256 == sha256_file(ov_export / companion.file)
        assert record.size_bytes == xml.stat().st_size + companion.size_bytes
    int8 = next(r for r in manifest.variants if r.variant == "openvino-int8")
    assert int8.validation.max_abs_logit_diff < 0.2  # measured up to 0.15 on tiny models
    assert int8.quantization["engine"] == "nncf"
    assert int8.quantization["transformer"] is True
    assert int8.quantization["calibration_images"] > 0
    # int8 weights: the quantized IR's weights are much smaller than fp32's
    fp32 = next(r for r in manifest.variants if r.variant == "openvino-fp32")
    assert int8.companions[0].size_bytes < 0.5 * fp32.companions[0].size_bytes


def test_metadata_round_trips_through_runtime_info(ov_export: Path) -> None:
    onnx = Classifier.load(ov_export / "model.onnx", device="cpu")
    for file_name, variant in ((FP32_IR, "openvino-fp32"), (INT8_IR, "openvino-int8")):
        ir = Classifier.load(ov_export / file_name, device="cpu")
        assert ir.variant == variant
        assert ir.labels == onnx.labels
        assert ir.spec == onnx.spec
        for key in ("source_sha256", "versions", "created", "model_name", "model_version", "notice"):
            assert getattr(ir.metadata, key) == getattr(onnx.metadata, key), key
    int8 = Classifier.load(ov_export / INT8_IR, device="cpu")
    assert int8.metadata.quantization["engine"] == "nncf"
    assert int8.metadata.quantization["inference_precision"] == "f32"


@pytest.mark.parametrize("file_name", [FP32_IR, INT8_IR])
def test_ir_predicts_like_onnx(ov_export: Path, test_images: list, file_name: str) -> None:
    """fp32: onnxruntime's numbers (f32 kernels). int8: probabilities within 0.1 (measured up to
    0.03 with the default settings; int8 gone wrong moves them by tenths), so the label must be
    the same wherever fp32's top two are more than 0.2 apart (not a near-tie)."""
    onnx = Classifier.load(ov_export / "model.onnx", device="cpu")
    ir = Classifier.load(ov_export / file_name, device="cpu", threads=2)
    expected, found = onnx.predict_proba(test_images), ir.predict_proba(test_images)
    if file_name == FP32_IR:
        assert np.abs(expected - found).max() < 1e-4
        assert (expected.argmax(axis=1) == found.argmax(axis=1)).all()
    else:
        assert np.abs(expected - found).max() < 0.1
        top_two = np.sort(expected, axis=1)[:, -2:]
        decisive = top_two[:, 1] - top_two[:, 0] > 0.2
        assert decisive.sum() >= 3  # a freshly trained tiny model: 7-20 of 24 measured
        assert (expected.argmax(axis=1) == found.argmax(axis=1))[decisive].all()
    assert ir.session.get_providers() == ["OpenVINO CPU"]


def test_one_classifier_is_thread_safe(ov_export: Path, test_images: list) -> None:
    ir = Classifier.load(ov_export / INT8_IR, device="cpu", threads=1)
    serial = [ir.predict_proba([path]) for path in test_images]
    results: dict[int, np.ndarray] = {}

    def worker(index: int) -> None:
        for _ in range(3):
            results[index] = ir.predict_proba([test_images[index]])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(test_images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_tampered_weights_are_refused(ov_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(ov_export, folder)
    weights = (folder / FP32_IR).with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        Classifier.load(folder / FP32_IR, device="cpu")
    assert Classifier.load(folder / FP32_IR, device="cpu", verify=False).variant == "openvino-fp32"
    weights.unlink()
    with pytest.raises(ModelLoadError, match="weights file"):
        Classifier.load(folder / FP32_IR, device="cpu", verify=False)


def test_manifest_without_the_weights_record_cannot_verify(ov_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(ov_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for record in manifest["variants"]:
        record.pop("companions", None)  # as an older manifest would be: still read
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Manifest.read(folder) is not None
    with pytest.raises(ModelLoadError, match="without its weights file"):
        Classifier.load(folder / INT8_IR, device="cpu")


def test_missing_openvino_says_how_to_install(ov_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ModelLoadError, match=r"pip install 'medvit-edge\[openvino\]'"):
        Classifier.load(ov_export / INT8_IR, device="cpu")
    result = CliRunner().invoke(cli.main, ["infer", str(ov_export / INT8_IR), str(ov_export)])
    assert result.exit_code == 2
    assert "medvit-edge[openvino]" in result.output


def test_infer_info_check_on_an_ir(ov_export: Path, test_images: list, tmp_path: Path) -> None:
    output = tmp_path / "preds.csv"
    result = CliRunner().invoke(
        cli.main, ["infer", str(ov_export / INT8_IR), *map(str, test_images[:6]), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    rows = output.read_text().splitlines()
    assert len(rows) == 7 and "openvino-int8" in rows[1]
    info = CliRunner().invoke(cli.main, ["info", "--json", str(ov_export / INT8_IR)])
    assert info.exit_code == 0, info.output
    model = json.loads(info.output)
    assert model["variant"] == "openvino-int8"
    assert model["manifest"]["status"] == "verified"
    manifest = Manifest.read(ov_export)
    assert manifest is not None
    record = manifest.entry(INT8_IR)
    assert record is not None and model["openvino"]["weights"]["sha256"] == record.companions[0].sha256
    folder = CliRunner().invoke(cli.main, ["info", str(ov_export)])
    assert folder.exit_code == 0 and INT8_IR in folder.output and FP32_IR in folder.output
    check = CliRunner().invoke(cli.main, ["check", str(ov_export)])
    assert check.exit_code == 0, check.output
    assert "openvino-int8" in check.output and "openvino-fp32" in check.output


def test_infer_run_folder_picks_a_file_this_machine_runs(
    ov_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's recommendation may be an IR; without OpenVINO an ONNX file is picked."""
    from medvit_edge.inference.command import resolve_model_path

    picked = resolve_model_path(ov_export)
    manifest = Manifest.read(ov_export)
    assert manifest is not None
    record = manifest.entry(picked.name)
    assert record is not None and record.status == "passed"
    Classifier.load(picked, device="cpu")
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert resolve_model_path(ov_export).suffix == ".onnx"


def test_evaluate_covers_the_ir_variants(ov_export: Path, tiny_run: Path, tmp_path: Path) -> None:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate

    report = evaluate(
        EvaluateConfig(
            run_dir=tiny_run,
            onnx_dir=ov_export,
            output=tmp_path / "evaluation",
            pytorch=False,
            latency_runs=2,
            bootstrap_samples=50,
            plots=False,
        )
    )
    names = [v.variant for v in report.variants]
    assert "openvino-fp32" in names and "openvino-int8" in names


def test_evaluate_skips_irs_where_openvino_is_missing(
    ov_export: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate

    monkeypatch.setitem(sys.modules, "openvino", None)
    cfg = EvaluateConfig(
        run_dir=tiny_run,
        onnx_dir=ov_export,
        output=tmp_path / "evaluation",
        pytorch=False,
        latency_runs=2,
        bootstrap_samples=50,
        plots=False,
    )
    names = [v.variant for v in evaluate(cfg).variants]
    assert "model.onnx" not in names and "fp32" in names
    assert not any(name.startswith("openvino") for name in names)


def test_guard_keeps_the_most_sensitive_layers_in_float(tiny_run: Path, tmp_path: Path) -> None:
    """A tolerance no int8 file can meet: the guard tries keeping 1, 2, 4 ... layers in float
    through NNCF's ignored scope, keeps the closest attempt, and the IR has those layers in float."""
    import openvino as ov

    from medvit_edge.export import ExportConfig, export

    strict = Tolerance(max_abs_logit=1e-9, min_agreement=1.0)
    cfg = ExportConfig(
        run_dir=tiny_run,
        output=tmp_path / "onnx",
        int8=True,
        openvino=True,
        allow_degraded=True,
        golden_images=0,
        tolerances={"openvino-int8": strict},
        calibration_size=8,  # every attempt calibrates anew; what is tested is which layers stay float
    )
    manifest = export(cfg).manifest
    record = manifest.entry(INT8_IR)
    assert record is not None and record.status == "failed" and record.guard is not None
    assert len(record.guard.tried) >= 2 and any(a.kept_float > 0 for a in record.guard.tried)
    kept = record.guard.excluded_nodes
    # the closest attempt is kept: on some freshly trained tiny models that is full int8 itself
    assert list(kept) == record.quantization["excluded_nodes"]
    model = ov.Core().read_model(str(tmp_path / "onnx" / INT8_IR))
    quantized = {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul"
        and any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())
    }
    assert quantized, "the other MatMuls are int8"
    assert not quantized & set(kept)


def test_quantizing_a_converted_model_twice_leaves_it_as_converted(ov_export: Path, tmp_path: Path) -> None:
    """The guard converts model.onnx once and quantizes a copy per attempt: an attempt that keeps
    layers in float must not leak into the next, which must equal a quantization of the file."""
    from medvit_edge.export.openvino import convert_onnx, openvino_to_int8
    from medvit_edge.export.openvino_config import OpenVinoInt8Config

    source, settings = ov_export / "model.onnx", OpenVinoInt8Config()
    calibration = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    converted = convert_onnx(source)
    names = [op.get_friendly_name() for op in converted.get_ordered_ops() if op.get_type_name() == "MatMul"]
    kept = openvino_to_int8(converted, tmp_path / "kept.xml", settings, calibration, names[:3])
    assert kept["excluded_nodes"] == names[:3]
    openvino_to_int8(converted, tmp_path / "again.xml", settings, calibration)
    openvino_to_int8(source, tmp_path / "file.xml", settings, calibration)
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "file.bin").read_bytes()
    assert (tmp_path / "kept.bin").read_bytes() != (tmp_path / "file.bin").read_bytes()


def test_export_without_openvino_is_one_line_exit_2(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # find_spec -> None: as if not installed
    result = CliRunner().invoke(cli.main, ["export", str(tiny_run), "--openvino"])
    assert result.exit_code == 2
    assert "nncf" in result.output and "pip install 'medvit-edge[openvino-export]'" in result.output


def test_damaged_or_foreign_irs_are_one_line_errors(ov_export: Path, tmp_path: Path) -> None:
    import openvino as ov

    (tmp_path / "junk.xml").write_bytes(b"\x00not xml" * 100)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    shutil.copy(ov_export / FP32_IR, tmp_path / "cut.xml")
    (tmp_path / "cut.bin").write_bytes((ov_export / FP32_IR).with_suffix(".bin").read_bytes()[:5000])
    ov.save_model(ov.convert_model(str(ov_export / "model.onnx")), str(tmp_path / "foreign.xml"))
    for name, reason in (
        ("junk", "OpenVINO cannot load it"),
        ("cut", "Incorrect weights"),
        ("foreign", "no medvit-edge metadata"),
    ):
        with pytest.raises(ModelLoadError, match=reason) as caught:
            Classifier.load(tmp_path / f"{name}.xml", device="cpu")
        assert "\n" not in str(caught.value) and "src/" not in str(caught.value)


def test_throughput_hint_gives_the_same_probabilities(ov_export: Path, test_images: list) -> None:
    """``load_classifier(hint="throughput")``: several streams for many callers, same numbers."""
    from medvit_edge.runtime.classifier import load_classifier

    latency = Classifier.load(ov_export / FP32_IR, device="cpu")
    throughput = load_classifier(ov_export / FP32_IR, hint="throughput")
    assert np.abs(latency.predict_proba(test_images) - throughput.predict_proba(test_images)).max() < 1e-5

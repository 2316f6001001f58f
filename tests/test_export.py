"""tiny ViT -> every variant -> validate -> reload through the runtime -> predict (phantom images;
the BUSI-only checks are marked)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvit_edge.runtime.classifier import Classifier, ModelLoadError
from medvit_edge.runtime.manifest import Manifest

from .conftest import needs_export

pytestmark = [needs_export]
VARIANTS = {"model.onnx": "fp32", "model.fp16.onnx": "fp16", "model.int8.onnx": "int8-dynamic"}


def _validation_images(run_dir: Path) -> int:
    with open(run_dir / "split.csv", newline="") as handle:
        return sum(row["split"] == "validation" for row in csv.DictReader(handle))


def test_every_variant_is_validated_and_listed(tiny_export: Path) -> None:
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    entries = {v["file"]: v for v in manifest["variants"]}
    assert set(entries) == set(VARIANTS)
    fp32 = entries["model.onnx"]["validation"]
    assert fp32["images"] == _validation_images(tiny_export.parent)
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert entries["model.onnx"]["status"] == "passed"
    for name, entry in entries.items():
        assert entry["variant"] == VARIANTS[name]
        assert entry["size_bytes"] == (tiny_export / name).stat().st_size
        assert "accuracy" in entry["validation"] and "recall" in entry["validation"]
    assert entries["model.int8.onnx"]["size_bytes"] < entries["model.onnx"]["size_bytes"]
    assert manifest["labels"] == ["benign", "malignant", "normal"]


def test_metadata_round_trips_and_runtime_predicts(tiny_export: Path, phantom_dir: Path) -> None:
    import onnx

    from medvit_edge.runtime.metadata import ModelMetadata

    for name, variant in VARIANTS.items():
        path = tiny_export / name
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        metadata = ModelMetadata.from_props(props)
        assert metadata.variant == variant and metadata.labels == ("benign", "malignant", "normal")
        assert metadata.preprocess.size == 64 and len(metadata.source_sha256) == 64
        classifier = Classifier.load(path, device="cpu")
        assert classifier.sha256 is not None  # verified against the manifest
        predictions = classifier.predict(sorted(phantom_dir.rglob("*.png"))[:5])
        assert [p.label in classifier.labels for p in predictions] == [True] * 5
        assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in predictions)


def test_fp16_keeps_float32_io_and_overflow_prone_ops(tiny_export: Path) -> None:
    import onnx

    model = onnx.load(str(tiny_export / "model.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    half = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) > 10
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name


def test_int8_quantizes_only_weight_matmuls(tiny_export: Path) -> None:
    import onnx

    ops = [n.op_type for n in onnx.load(str(tiny_export / "model.int8.onnx")).graph.node]
    record = Manifest.read(tiny_export).entry("model.int8.onnx")  # type: ignore[union-attr]
    assert record is not None
    kept_float = len(record.quantization.get("excluded_nodes", []))  # by the accuracy guard
    # 4 blocks x (q, k, v, out, fc1, fc2) weight MatMuls, less those the guard kept in float
    assert ops.count("MatMulInteger") >= 4 * 6 - kept_float
    assert ops.count("MatMul") >= 4 * 2 + kept_float  # attention's activation MatMuls stay float


def test_tampered_or_truncated_model_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "onnx"
    shutil.copytree(tiny_export, copy)
    model = copy / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        Classifier.load(model)
    truncated = copy / "model.onnx"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        Classifier.load(truncated)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="--verify needs a manifest"):
        Classifier.load(copy / "model.fp16.onnx", verify=True)
    with pytest.raises(ModelLoadError, match="cannot load"):
        Classifier.load(truncated)


def test_a_corrupted_variant_fails_validation(tiny_export: Path, tmp_path: Path) -> None:
    """Corrupt weights inside a valid ONNX file: the parity check must catch it."""
    import onnx
    from onnx import numpy_helper

    from medvit_edge.export.validate import compare
    from medvit_edge.runtime.variants import VARIANTS

    source = tiny_export / "model.onnx"
    model = onnx.load(str(source))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(biggest).copy()
    weights *= -3.0
    biggest.CopyFrom(numpy_helper.from_array(weights, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    pixels = np.random.default_rng(0).standard_normal((16, 3, 64, 64)).astype(np.float32)
    reference = Classifier.load(source, verify=False).run(pixels)
    candidate = Classifier.load(tampered, verify=False).run(pixels)
    result = compare(reference, candidate, None, ["a", "b", "c"], VARIANTS["fp32"].tolerance, ())
    assert not result.passed and "Δlogit" in result.failures[0]


def test_folder_loads_in_optimum_and_transformers_pipeline(tiny_export: Path, phantom_dir: Path) -> None:
    from optimum.onnxruntime import ORTModelForImageClassification
    from PIL import Image

    model = ORTModelForImageClassification.from_pretrained(tiny_export, file_name="model.int8.onnx")
    from transformers import AutoImageProcessor, pipeline

    processor = AutoImageProcessor.from_pretrained(tiny_export)
    classify = pipeline("image-classification", model=model, image_processor=processor)
    result = classify(Image.open(next(phantom_dir.rglob("*.png"))))
    assert {r["label"] for r in result} <= {"benign", "malignant", "normal"}


def plant_outlier_channel(run_dir: Path, destination: Path, layer: int, factor: float) -> str:
    """Copy a run with one activation outlier planted in block `layer`, without changing what the
    model computes: channel 0 of its second LayerNorm is scaled up by `factor` and the matching input
    row of the MLP's first weight scaled down. This is the outlier-feature pattern that breaks
    per-tensor int8 in real ViTs; only that one MatMul's input range grows, so it is the layer int8
    hurts most. Returns the ONNX name of that MatMul."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(destination / "model.safetensors")
    block = f"vit.encoder.layer.{layer}."
    weights[block + "layernorm_after.weight"][0] *= factor
    weights[block + "layernorm_after.bias"][0] *= factor
    weights[block + "intermediate.dense.weight"][:, 0] /= factor
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return f"/vit/encoder/layer.{layer}/intermediate/dense/MatMul"


@pytest.mark.busi
def test_int8_guard_keeps_the_planted_outlier_layer_in_float(tiny_busi_run: Path, tmp_path: Path) -> None:
    """Full int8 fails a tolerance that only the outlier layer breaks; the guard must find that
    layer first, keep it alone in float, pass, and report what it cost."""
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.runtime.manifest import to_json_dict
    from medvit_edge.runtime.variants import Tolerance

    def int8_entry(result) -> dict:
        return to_json_dict(next(v for v in result.manifest.variants if v.variant == "int8-dynamic"))

    run = tmp_path / "run"
    culprit = plant_outlier_channel(tiny_busi_run, run, layer=2, factor=300.0)
    common = dict(run_dir=run, int8=True, max_validation_images=32, allow_degraded=True)
    full = int8_entry(export(ExportConfig(output=tmp_path / "full", int8_guard_search=False, **common)))
    full_error = full["validation"]["max_abs_logit_diff"]
    tight = {"int8-dynamic": Tolerance(max_abs_logit=0.5 * full_error, min_agreement=0.0)}
    guarded = int8_entry(export(ExportConfig(output=tmp_path / "guarded", tolerances=tight, **common)))
    guard = guarded["guard"]
    assert full["quantization"]["excluded_nodes"] == []
    assert guard["full_int8"]["max_abs_logit_diff"] == pytest.approx(full_error)
    assert guarded["status"] == "passed"
    assert [t["kept_float"] for t in guard["tried"]] == [1]
    assert guard["excluded_nodes"] == guarded["quantization"]["excluded_nodes"] == [culprit]
    assert guarded["validation"]["max_abs_logit_diff"] <= 0.5 * full_error
    assert guard["size_bytes_cost"] > 0  # a float layer is bigger: the report says what it cost


@needs_export
def test_calibration_from_a_split_csv_takes_only_its_training_rows(phantom_dir: Path) -> None:
    """--calibration-data split.csv must never calibrate on the validation/test images."""
    from types import SimpleNamespace

    from medvit_edge.export.int8 import calibration_pixels
    from medvit_edge.runtime.preprocess import PreprocessSpec

    with open(phantom_dir / "split.csv", newline="") as handle:
        splits = [row["split"] for row in csv.DictReader(handle)]
    assert {"train", "test"} <= set(splits)
    cfg = SimpleNamespace(
        calibration_data=phantom_dir / "split.csv", calibration_size=10_000, run_dir=phantom_dir
    )
    exporter = SimpleNamespace(cfg=cfg, spec=PreprocessSpec(size=32))
    assert len(calibration_pixels(exporter)) == splits.count("train")  # type: ignore[arg-type]

"""Golden files: export writes real images with every variant's expected outputs; ``check``
re-runs them and exits 0 (agree), 1 (disagree beyond tolerance) or 2 (golden files unusable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medvit_edge import cli
from medvit_edge.deploy.golden import check
from medvit_edge.export.golden import phantom_frames
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.preprocess import preprocess_batch
from medvit_edge.runtime.variants import VARIANTS

pytestmark = pytest.mark.slow


def _index(folder: Path) -> dict:
    return json.loads((folder / "golden" / "golden.json").read_text())


def test_export_writes_golden_files_for_every_variant(tiny_export: Path) -> None:
    golden = tiny_export / "golden"
    index = _index(tiny_export)
    manifest = Manifest.read(tiny_export)
    assert manifest is not None and manifest.golden is not None
    assert manifest.golden.images == len(index["images"]) == 3
    assert set(index["variants"]) == {record.variant for record in manifest.variants}
    assert {e["file"] for e in index["variants"].values()} == {r.file for r in manifest.variants}
    # synthetic phantoms by default (no patient pixels), named by number, PNG == uint8 array
    assert index["source"] == manifest.golden.source == "phantom"
    assert [image["label"] for image in index["images"]] == [None, None, None]
    for image, phantom in zip(index["images"], phantom_frames()):
        np.testing.assert_array_equal(np.load(golden / image["array"]), phantom)
    assert "synthetic phantom images (no patient pixels)" in (tiny_export / "README.md").read_text()
    decoded = []
    for image in index["images"]:
        assert image["name"].startswith("image-")
        array = np.load(golden / image["array"])
        png = np.asarray(Image.open(golden / image["png"]))
        assert (
            array.dtype == np.uint8
            and array.shape == tuple(image["shape"])
            and array.shape[0] != array.shape[1]
        )
        np.testing.assert_array_equal(png, array)
        decoded.append(Image.fromarray(array))
    pixels = np.load(golden / "pixel_values.npy")
    spec = Classifier.load(tiny_export / "model.onnx").spec
    np.testing.assert_array_equal(pixels, preprocess_batch(decoded, spec))  # bit for bit
    for name, entry in index["variants"].items():
        classifier = Classifier.load(tiny_export / entry["file"])
        expected = np.asarray(entry["probabilities"], dtype=np.float32)
        np.testing.assert_array_equal(expected, classifier.predict_proba(decoded))
        assert entry["tolerance"] == VARIANTS[name].check_tolerance
        assert entry["sha256"] == classifier.sha256 and entry["input"] == classifier.metadata.input


def test_check_agrees_on_the_machine_that_exported(tiny_export: Path) -> None:
    result = CliRunner().invoke(cli.main, ["check", str(tiny_export)])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:4]
    assert all(" agree " in row for row in rows) and "3 of 3 variants agree" in result.stdout
    one = CliRunner().invoke(cli.main, ["check", "--json", str(tiny_export / "model.int8.onnx")])
    assert one.exit_code == 0
    report = json.loads(one.stdout)
    assert [v["variant"] for v in report["variants"]] == ["int8-dynamic"]
    assert report["variants"][0]["max_abs_diff"] == 0.0 and report["exit_code"] == 0


@pytest.mark.parametrize(("offset", "verdict"), [(1e-6, "agree"), (3e-3, "disagree")])
def test_a_runtime_that_computes_differently_is_caught(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch, offset: float, verdict: str
) -> None:
    """A runtime whose logits drift (as a saturating int8 kernel makes them): within the
    variant's tolerance it agrees, beyond it ``check`` says so and exits 1."""
    real_run = Classifier.run

    def drifting(self: Classifier, batch: np.ndarray) -> np.ndarray:
        logits = real_run(self, batch)
        logits[:, 0] += offset
        return logits

    monkeypatch.setattr(Classifier, "run", drifting)
    report = check(tiny_export, device="cpu")
    assert {v.variant: v.result for v in report.variants}["fp32"] == verdict
    assert report.exit_code == (0 if verdict == "agree" else 1)
    if verdict == "disagree":
        result = CliRunner().invoke(cli.main, ["check", str(tiny_export / "model.onnx")])
        assert result.exit_code == 1 and "fp32: end to end max |Δprobability|" in result.stdout


def _copy(tiny_export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_export, folder)
    return folder


def test_check_refuses_unusable_golden_files(tiny_export: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def exit_and_error(folder: Path) -> tuple[int, str]:
        result = runner.invoke(cli.main, ["check", str(folder)])
        return result.exit_code, result.stderr

    missing = _copy(tiny_export, tmp_path / "missing")
    shutil.rmtree(missing / "golden")
    code, error = exit_and_error(missing)
    assert code == 2 and "no golden files" in error
    damaged = _copy(tiny_export, tmp_path / "damaged")
    png = damaged / "golden" / "image-1.png"
    Image.fromarray(255 - np.asarray(Image.open(png))).save(png)
    code, error = exit_and_error(damaged)
    assert code == 2 and "image-1.png: checksum differs" in error
    edited = _copy(tiny_export, tmp_path / "edited")
    index = _index(edited)
    index["variants"]["fp32"]["probabilities"][0][0] += 0.5
    (edited / "golden" / "golden.json").write_text(json.dumps(index))
    code, error = exit_and_error(edited)
    assert code == 2 and "golden.json: checksum differs from manifest.json" in error
    other = _copy(tiny_export, tmp_path / "other")
    shutil.copyfile(other / "model.onnx", other / "renamed.onnx")
    result = runner.invoke(cli.main, ["check", str(other / "renamed.onnx")])
    assert result.exit_code == 2 and "has no expected outputs for it" in result.stderr


def test_check_skips_files_not_deployed(tiny_export: Path, tmp_path: Path) -> None:
    """A device that got only the int8 file (and the golden folder) checks what it has."""
    folder = _copy(tiny_export, tmp_path)
    (folder / "model.onnx").unlink()
    (folder / "model.fp16.onnx").unlink()
    report = check(folder, device="cpu")
    results = {v.variant: v.result for v in report.variants}
    assert results == {"fp32": "not present", "fp16": "not present", "int8-dynamic": "agree"}
    assert report.exit_code == 0
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(Exception, match="none of the files"):
        check(folder, device="cpu")


def test_real_golden_images_only_when_asked_for_and_the_card_says_so(tiny_run: Path, tmp_path: Path) -> None:
    from medvit_edge.export import ExportConfig, export

    output = tmp_path / "onnx"
    result = export(ExportConfig(run_dir=tiny_run, output=output, golden_images=2))
    assert result.manifest.golden is not None and result.manifest.golden.source == "validation"
    index = _index(output)
    assert index["source"] == "validation" and len(index["images"]) == 2
    assert [image["label"] for image in index["images"]] == ["benign", "malignant"]
    assert "REAL validation images, asked for with --golden-images" in (output / "README.md").read_text()


def test_an_unauthenticated_golden_json_cannot_loosen_its_tolerances(
    tiny_export: Path, tmp_path: Path
) -> None:
    """Every tolerance set to 10 and the probabilities moved: without a manifest that records
    golden.json's sha256, check must not call that "agree"."""
    runner = CliRunner()
    for name, edit_manifest in (("no-manifest", "delete"), ("old-manifest", "drop-golden")):
        folder = _copy(tiny_export, tmp_path / name)
        index = _index(folder)
        for entry in index["variants"].values():
            entry["tolerance"] = 10
            entry["probabilities"] = [[1 - p for p in row] for row in entry["probabilities"]]
        (folder / "golden" / "golden.json").write_text(json.dumps(index))
        manifest = folder / "manifest.json"
        if edit_manifest == "delete":
            manifest.unlink()
        else:
            data = json.loads(manifest.read_text())
            del data["golden"]
            manifest.write_text(json.dumps(data))
        result = runner.invoke(cli.main, ["check", str(folder)])
        assert result.exit_code == 2, result.output
        assert "is looser than its default" in result.stderr and "not trusted" in result.stderr
    honest = _copy(tiny_export, tmp_path / "honest")
    (honest / "manifest.json").unlink()  # the defaults still hold without a manifest
    assert runner.invoke(cli.main, ["check", str(honest)]).exit_code == 0


def test_export_with_no_golden_images_writes_none(tiny_run: Path, tmp_path: Path) -> None:
    from medvit_edge.export import ExportConfig, export

    result = export(ExportConfig(run_dir=tiny_run, output=tmp_path / "onnx", golden_images=0))
    assert result.manifest.golden is None and not (tmp_path / "onnx" / "golden").exists()
    data = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    del data["golden"]  # a manifest written before golden files existed still reads
    (tmp_path / "onnx" / "manifest.json").write_text(json.dumps(data))
    reread = Manifest.read(tmp_path / "onnx")
    assert reread is not None and reread.golden is None


def test_a_decision_that_flips_within_tolerance_is_caught(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probabilities within the fp32 tolerance can still cross a stored threshold: ``check``
    compares the decisions too, so 'the same decisions on every device' is what it verifies."""
    from medvit_edge.runtime.policy import DecisionPolicy, OperatingPoint

    golden = json.loads((tiny_export / "golden" / "golden.json").read_text())
    p0 = float(np.float32(golden["variants"]["fp32"]["probabilities"][0][0]))
    loaded = Classifier.load(tiny_export / "model.onnx", device="cpu")
    labels, temperature = loaded.labels, loaded.policy.temperature  # the golden ones are calibrated
    threshold = float(np.nextafter(np.float32(p0), np.float32(1)))  # just above image 0's p(class 0)
    point = OperatingPoint(labels[0], "sensitivity", 0.9, threshold, {"sensitivity": 1.0, "specificity": 0.5})
    monkeypatch.setattr(Classifier, "policy", property(lambda self: DecisionPolicy(temperature, (point,))))
    real_run = Classifier.run

    def drifting(self: Classifier, batch: np.ndarray) -> np.ndarray:
        logits = real_run(self, batch)
        logits[:, 0] += 1e-4  # p(class 0) moves by ~1e-5: inside fp32's 1e-4 tolerance
        return logits

    monkeypatch.setattr(Classifier, "run", drifting)
    fp32 = {v.variant: v for v in check(tiny_export, device="cpu").variants}["fp32"]
    assert fp32.max_abs_diff is not None and fp32.max_abs_diff < fp32.tolerance
    assert fp32.decision_changes >= 1 and fp32.result == "disagree"
    assert any("decision" in failure for failure in fp32.failures)

"""DICOM end to end: one reader for every command, DICOM class folders through train -> export ->
evaluate, identifiers in result rows, DICOM SR out, and the audit log of `infer`."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit_edge.inference.command import InferConfig, infer
from medvit_edge.io.labelled import LabelledSetError, read_labelled_set
from medvit_edge.io.reader import read_file, read_labelled_image
from medvit_edge.runtime.images import ImageDecodeError

from .conftest import _train_tiny, needs_export
from .hospital_dicom import PATIENT, write_clinical_us

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

UIDS = ["study_uid", "series_uid", "sop_uid"]


def _frames(paths: list[Path], size: tuple[int, int] = (96, 80)) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("L").resize(size)) for p in paths]


@pytest.fixture(scope="module")
def scans(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG, a single-frame DICOM, a 3-frame cine DICOM without a suffix, a DICOM with no pixels."""
    folder = tmp_path_factory.mktemp("scans")
    pngs = sorted((phantom_dir / "test").rglob("*.png"))[:3]
    shutil.copyfile(pngs[0], folder / "a.png")
    frames = _frames(pngs)
    write_clinical_us(folder / "still.dcm", frames[:1], photometric="MONOCHROME2")
    write_clinical_us(folder / "IM000002", frames, photometric="MONOCHROME2", instance_number=2)
    ds = pydicom.dcmread(folder / "still.dcm")
    del ds.PixelData
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)
    return folder


def test_one_reader_gives_frames_and_identifiers(scans: Path) -> None:
    still, cine, png = (
        read_file(scans / "still.dcm"),
        read_file(scans / "IM000002"),
        read_file(scans / "a.png"),
    )
    header = pydicom.dcmread(scans / "IM000002", stop_before_pixels=True)
    assert len(still.frames) == 1 and len(cine.frames) == 3 and len(png.frames) == 1
    assert cine.ids.columns() == {
        "study_uid": header.StudyInstanceUID,
        "series_uid": header.SeriesInstanceUID,
        "sop_uid": header.SOPInstanceUID,
    }
    assert png.ids.columns() == dict.fromkeys(UIDS, "")
    # a labelled multi-frame file stands for its middle frame unless a frame is named
    middle = np.asarray(read_labelled_image(scans / "IM000002"))
    assert np.array_equal(middle, np.asarray(cine.frames[1]))
    assert np.array_equal(np.asarray(read_labelled_image(scans / "IM000002", 2)), np.asarray(cine.frames[2]))
    with pytest.raises(ImageDecodeError, match="frame 3 asked for, but the file has 3 frame"):
        read_labelled_image(scans / "IM000002", 3)
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        read_labelled_image(scans / "nopixels.dcm")


def test_split_csv_frame_column(scans: Path, tmp_path: Path) -> None:
    table = tmp_path / "split.csv"
    cine, png = scans / "IM000002", scans / "a.png"
    table.write_text(f"path,label,frame\n{cine},benign,0\n{cine},benign,2\n{png},normal,\n")
    images = read_labelled_set(table)
    assert [i.frame for i in images] == [0, 2, None]
    table.write_text(f"path,label,frame\n{scans / 'IM000002'},benign,first\n")
    with pytest.raises(LabelledSetError, match="row 2: frame 'first' is not a frame number"):
        read_labelled_set(table)


@needs_export
def test_rows_carry_dicom_identifiers_and_the_model_sha256(
    scans: Path, tiny_export: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "alone"  # no manifest beside the model: its sha256 is still in every row
    alone.mkdir()
    shutil.copyfile(tiny_export / "model.onnx", alone / "model.onnx")
    sha = hashlib.sha256((alone / "model.onnx").read_bytes()).hexdigest()
    for suffix in (".csv", ".jsonl"):
        output = tmp_path / f"preds{suffix}"
        infer(InferConfig(model=alone / "model.onnx", inputs=[str(scans)], output=output, progress=False))
        if suffix == ".csv":
            with open(output, newline="") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = [json.loads(line) for line in output.read_text().splitlines()]
        by_name: dict[str, list[dict]] = {}
        for row in rows:
            by_name.setdefault(Path(row["path"]).name, []).append(row)
        assert {row["model_sha256"] for row in rows} == {sha}
        assert [int(r["frame"]) for r in by_name["IM000002"]] == [0, 1, 2]
        header = pydicom.dcmread(scans / "IM000002", stop_before_pixels=True)
        for row in by_name["IM000002"]:
            assert (row["study_uid"], row["series_uid"], row["sop_uid"]) == (
                header.StudyInstanceUID,
                header.SeriesInstanceUID,
                header.SOPInstanceUID,
            )
        assert all(by_name["a.png"][0][c] == "" for c in UIDS)
        failed = by_name["nopixels.dcm"][0]  # an error row still names the instance it is about
        assert "no pixel data" in failed["error"]
        assert failed["sop_uid"] == pydicom.dcmread(scans / "nopixels.dcm").SOPInstanceUID


def _texts(items) -> list[str]:
    """Every TEXT value in an SR content tree."""
    found = []
    for item in items:
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found += _texts(item.get("ContentSequence", []))
    return found


@needs_export
def test_dicom_out_writes_srs_that_reference_their_source(
    scans: Path, tiny_export: Path, tmp_path: Path
) -> None:
    out, audit = tmp_path / "sr", tmp_path / "audit.jsonl"
    summary = infer(
        InferConfig(
            model=tiny_export / "model.int8.onnx",
            inputs=[str(scans)],
            dicom_out=out,
            audit_log=audit,
            progress=False,
        )
    )
    assert len(summary.reports) == 2 and sorted(out.iterdir()) == sorted(summary.reports)
    sources = {
        pydicom.dcmread(scans / n, stop_before_pixels=True).SOPInstanceUID: n
        for n in ("still.dcm", "IM000002")
    }
    rows = {(Path(r.path).name, r.frame): r for r in summary.rows}
    for path in summary.reports:
        sr = hd.sr.srread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        ((study, series, sop, sop_class),) = sr.get_evidence()
        source = pydicom.dcmread(scans / sources[sop], stop_before_pixels=True)
        assert (study, series, sop_class) == (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
            source.SOPClassUID,
        )
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == PATIENT["PatientID"]
        assert sr.AccessionNumber == PATIENT["AccessionNumber"]
        groups = sr.content.get_image_measurement_groups()
        frames = 3 if sources[sop] == "IM000002" else 1
        assert len(groups) == frames
        for index, group in enumerate(groups):
            image = group.source_images[0]
            assert image.referenced_sop_instance_uid == sop
            assert image.referenced_frame_numbers == ([index + 1] if frames > 1 else None)
            row = rows[(sources[sop], index)]
            values = {m.name.meaning: m.value for m in group.get_measurements()}
            for label in summary.labels:
                assert values[f"Probability of {label}"] == pytest.approx(row.probabilities[label], abs=1e-6)
            finding, most_probable = group.get_qualitative_evaluations()  # finding: the policy's decision
            assert finding.name.meaning == "Finding" and finding.value.meaning == (row.decision or row.label)
            assert most_probable.name.meaning == "Most probable class"
            assert most_probable.value.meaning == row.label
        texts = _texts(sr.ContentSequence)
        assert f"model_sha256={rows[(sources[sop], 0)].model_sha256}" in texts
        assert (
            any("RESEARCH USE ONLY" in text for text in texts) and "RESEARCH USE ONLY" in sr.SeriesDescription
        )
    if shutil.which("dciodvfy"):  # Debian's dicom3tools: the IOD checker PACS vendors use
        for path in summary.reports:
            checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [
                line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")
            ]
            assert errors == [], errors
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(summary.rows)  # one line per row, error rows included
    for line, row in zip(lines, summary.rows):
        assert line["input"] == row.path and line["sop_uid"] == row.ids.sop_uid and line["source"] == "infer"
        assert line["model_sha256"] == row.model_sha256 and line["label"] == row.label
        assert line["input_sha256"] == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
        assert line["time"].endswith("Z") and line["host"] and line["software"]["medvit-edge"]


@needs_export
def test_cli_infer_refuses_an_unusable_audit_log_or_report_folder(
    scans: Path, tiny_export: Path, tmp_path: Path
) -> None:
    model = str(tiny_export / "model.onnx")
    base = [sys.executable, "-m", "medvit_edge.cli", "infer", model, str(scans / "a.png")]
    for extra, words in (
        (["--audit-log", str(tmp_path / "missing" / "audit.jsonl")], "--audit-log"),
        (["--dicom-out", str(tmp_path / "missing" / "sr")], "--dicom-out"),
    ):
        result = subprocess.run([*base, *extra], capture_output=True, text=True)
        assert result.returncode == 2 and words in result.stderr and result.stdout == "", result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def dicom_classes(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom images as a DICOM class folder: .dcm files, scanner names without a suffix,
    and one 3-frame cine loop per class."""
    root = tmp_path_factory.mktemp("dicom_classes")
    for label_dir in sorted((phantom_dir / "train").iterdir()):
        target = root / label_dir.name
        target.mkdir()
        pngs = sorted(label_dir.glob("*.png"))[:18]
        for index, png in enumerate(pngs[:-3]):
            name = f"IM{index:06d}" if index % 5 == 0 else f"{png.stem}.dcm"
            write_clinical_us(target / name, _frames([png]), photometric="MONOCHROME2")
        write_clinical_us(target / "cine.dcm", _frames(pngs[-3:]), photometric="MONOCHROME2")
    return root


@needs_export
@pytest.mark.slow
def test_dicom_class_folder_through_train_export_evaluate(dicom_classes: Path, tmp_path: Path) -> None:
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate
    from medvit_edge.export import ExportConfig, export

    files = sorted(p for p in dicom_classes.rglob("*") if p.is_file())
    run = _train_tiny(dicom_classes, tmp_path / "run", max_steps=6)
    report = json.loads((run / "data_report.json").read_text())
    assert report["unreadable_images"] == [] and report["warnings"] == []
    with open(run / "split.csv", newline="") as handle:
        split = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]) for r in split) == sorted(p.resolve() for p in files)
    # export: validation images from the DICOM folder itself, static int8 calibrated on the
    # run's (DICOM) training images
    result = export(
        ExportConfig(
            run_dir=run,
            data=dicom_classes,
            int8=True,
            int8_mode="static",
            calibration_size=16,
            allow_degraded=True,
        )
    )
    fp32 = result.manifest.variants[0]
    assert fp32.validation.images == len(files) and fp32.validation.top1_agreement == 1.0
    assert {v.variant for v in result.manifest.variants} >= {"fp32", "int8-static"}
    evaluation = evaluate(
        EvaluateConfig(run_dir=run, data=dicom_classes, bootstrap_samples=50, latency_runs=2, plots=False)
    )
    assert evaluation.images == len(files) and evaluation.skipped == []
    assert {v.variant for v in evaluation.variants} >= {"pytorch-fp32", "fp32", "int8-static"}
    test_split = evaluate(EvaluateConfig(run_dir=run, bootstrap_samples=50, latency_runs=2, plots=False))
    assert test_split.images == sum(1 for r in split if r["split"] == "test") and test_split.skipped == []


def test_csv_rows_naming_frames_are_samples_that_never_straddle_splits(
    phantom_dir: Path, tmp_path: Path
) -> None:
    from medvit_edge.train.config import TrainConfig
    from medvit_edge.train.prepare import prepare_data, write_split_csv

    rows = ["path,label,frame"]
    for label_dir in sorted((phantom_dir / "train").iterdir()):
        pngs = sorted(label_dir.glob("*.png"))
        for loop in range(4):  # four 3-frame cine loops per class, every frame a row
            cine = write_clinical_us(
                tmp_path / f"{label_dir.name}-{loop}.dcm",
                _frames(pngs[3 * loop : 3 * loop + 3]),
                photometric="MONOCHROME2",
            )
            rows += [f"{cine},{label_dir.name},{frame}" for frame in range(3)]
    (tmp_path / "frames.csv").write_text("\n".join(rows) + "\n")
    bundle = prepare_data(TrainConfig(data=str(tmp_path / "frames.csv"), seed=3))
    assert len(bundle.samples) == 36 and bundle.leakage["unreadable_images"] == []
    splits: dict[Path, set[str]] = {}
    for sample in bundle.samples:
        splits.setdefault(sample.path, set()).add(sample.split)
    assert all(len(found) == 1 for found in splits.values())  # a loop's frames stay on one side
    assert {s for found in splits.values() for s in found} == {"train", "validation", "test"}
    first = next(s for s in bundle.samples if s.frame == 2)
    assert np.array_equal(np.asarray(first.image()), np.asarray(read_file(first.path).frames[2]))
    write_split_csv(tmp_path / "split.csv", bundle)
    assert sorted(i.frame for i in read_labelled_set(tmp_path / "split.csv")) == sorted([0, 1, 2] * 12)

"""`infer` over folders with good, bad and DICOM inputs: every good row, one error per bad file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit_edge.files import atomic_writer
from medvit_edge.inference.command import InferConfig, infer

from .conftest import needs_export
from .dicom_files import write_us_dicom

pytestmark = [needs_export]


@pytest.fixture(scope="module")
def images(phantom_dir: Path) -> list[Path]:
    return sorted((phantom_dir / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def class_root(phantom_dir: Path) -> Path:
    """One sub-folder per class: benign/, malignant/, normal/."""
    return phantom_dir / "test"


def _bad_inputs(folder: Path, good: Path) -> dict[str, str]:
    """Broken files, each with a word its error must contain."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    jpeg = folder / "cut.jpg"
    Image.open(good).convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    (folder / "broken link.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return {
        "empty.png": "not a readable image",
        "text.png": "not a readable image",
        "truncated.png": "truncated.png",
        "cut.jpg": "cut.jpg",
        "broken link.png": "not found",
        "loop.png": "loop.png",
    }


def test_folder_with_good_and_bad_images(tiny_export: Path, images: list, tmp_path: Path) -> None:
    folder = tmp_path / "mixed (séance 1)"
    folder.mkdir()
    good = []
    for i, source in enumerate(images[:6]):
        target = folder / f"good {i} (ü).png"
        target.write_bytes(source.read_bytes())
        good.append(target)
    Image.open(images[7]).convert("L").save(folder / "grey.bmp")
    Image.fromarray(np.asarray(Image.open(images[8]).convert("L")).astype(np.uint16) * 257).save(
        folder / "deep.tif"
    )
    expectations = _bad_inputs(folder, images[0])
    output = tmp_path / "preds.csv"
    summary = infer(
        InferConfig(model=tiny_export / "model.onnx", inputs=[str(folder)], output=output, progress=False)
    )
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert summary.predictions == 8 and summary.failed_files == len(expectations) and summary.exit_code == 1
    for name in [g.name for g in good] + ["grey.bmp", "deep.tif"]:
        assert by_name[name]["error"] == "" and by_name[name]["label"] in ("benign", "malignant", "normal")
        assert abs(sum(float(by_name[name][c]) for c in ("benign", "malignant", "normal")) - 1) < 1e-4
    for name, word in expectations.items():
        assert word in by_name[name]["error"] and name in by_name[name]["error"], by_name[name]
        assert by_name[name]["label"] == ""
    assert len(rows) == 8 + len(expectations)


def test_class_folders_give_accuracy_and_jsonl(tiny_export: Path, class_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for label in ("benign", "malignant", "normal"):
        (folder / label).mkdir(parents=True)
        for source in sorted((class_root / label).glob("*.png"))[:4]:
            (folder / label / source.name).write_bytes(source.read_bytes())
    output = tmp_path / "preds.jsonl"
    summary = infer(
        InferConfig(
            model=tiny_export / "model.int8.onnx",
            inputs=[str(folder)],
            output=output,
            progress=False,
            batch_size=5,
        )
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 12 and {line["variant"] for line in lines} == {"int8-dynamic"}
    assert summary.metrics is not None and summary.metrics["n"] == 12
    truth = [Path(line["path"]).parent.name for line in lines]
    assert summary.metrics["accuracy"] == pytest.approx(
        np.mean([t == line["label"] for t, line in zip(truth, lines)])
    )


def test_globs_and_missing_paths(tiny_export: Path, class_root: Path, tmp_path: Path) -> None:
    summary = infer(
        InferConfig(
            model=tiny_export / "model.onnx",
            progress=False,
            inputs=[
                str(class_root / "normal" / "normal_000?.png"),
                str(tmp_path / "absent.png"),
                str(tmp_path / "*.nothing"),
            ],
        )
    )
    assert summary.predictions == 8  # normal_0000.png .. normal_0007.png
    assert summary.failed_files == 2 and any("no such file" in e for e in summary.errors)


def test_dicom_inputs(tiny_export: Path, images: list, tmp_path: Path) -> None:
    """Phantom scans wrapped as ultrasound DICOM (RGB, YBR_FULL, MONOCHROME2, multi-frame), and
    pydicom's own files."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    # a cine loop has one frame size: three scans brought to one size, kept as PNG for comparison
    frames = [np.asarray(Image.open(p).convert("RGB").resize((150, 120))) for p in images[:3]]
    pngs = [tmp_path / f"frame{k}.png" for k in range(3)]
    for frame, png_path in zip(frames, pngs):
        Image.fromarray(frame).save(png_path)
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_us_dicom(folder / "rgb.dcm", frames[:1])
    write_us_dicom(folder / "ybr.dcm", frames[:1], "YBR_FULL")
    write_us_dicom(folder / "mono.dcm", [f[:, :, 0] for f in frames[:1]], "MONOCHROME2")
    write_us_dicom(folder / "cine.dcm", frames)
    for name in ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "MR_small.dcm"):
        (folder / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    no_pixels = folder / "no_pixels.dcm"
    no_pixels.write_bytes(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    # 12-bit JPEG Extended: Pillow cannot decode it (JPEG-LS no longer serves: the [dicom]
    # extra's highdicom brings a JPEG-LS decoder)
    jpeg_ext = folder / "jpegext.dcm"
    jpeg_ext.write_bytes(Path(get_testdata_file("JPGExtended.dcm")).read_bytes())
    summary = infer(InferConfig(model=tiny_export / "model.onnx", inputs=[str(folder)], progress=False))
    rows: dict[str, list] = {}
    for row in summary.rows:
        rows.setdefault(Path(row.path).name, []).append(row)
    assert [r.frame for r in rows["cine.dcm"]] == [0, 1, 2]
    assert len(rows["examples_ybr_color.dcm"]) == 30
    png = infer(InferConfig(model=tiny_export / "model.onnx", inputs=[str(p) for p in pngs], progress=False))
    for k in range(3):
        assert rows["cine.dcm"][k].label == png.rows[k].label
        benign = png.rows[k].probabilities["benign"]
        assert rows["cine.dcm"][k].probabilities["benign"] == pytest.approx(benign, abs=1e-6)
    benign = png.rows[0].probabilities["benign"]
    assert rows["rgb.dcm"][0].probabilities["benign"] == pytest.approx(benign, abs=1e-6)
    assert rows["ybr.dcm"][0].probabilities["benign"] == pytest.approx(benign, abs=0.02)  # YBR rounding
    for name in ("mono.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "MR_small.dcm"):
        assert rows[name][0].error == "" and rows[name][0].label, name
    assert "no pixel data" in rows["no_pixels.dcm"][0].error
    assert "transfer syntax" in rows["jpegext.dcm"][0].error
    assert "JPEG Extended" in rows["jpegext.dcm"][0].error
    assert summary.failed_files == 2


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "preds.csv"
    target.write_text("old complete file\n")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write("half of a new fi")
        raise RuntimeError("killed")
    assert target.read_text() == "old complete file\n"
    assert list(tmp_path.iterdir()) == [target]


def test_killed_run_leaves_old_or_complete_output(tiny_export: Path, images: list, tmp_path: Path) -> None:
    """SIGKILL a real `infer` process mid-run (once its progress shows it working): the output is
    still the old, complete file."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for copy in range(8):  # distinct files (a file is read once however often it is named)
        for source in images:
            (folder / f"{copy}-{source.name}").write_bytes(source.read_bytes())
    output = tmp_path / "preds.csv"
    output.write_text("previous,results\n")
    command = [sys.executable, "-m", "medvit_edge.cli", "infer", str(tiny_export / "model.fp16.onnx")]
    command += [str(folder), "--output", str(output), "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # the first progress line: 10% of the files done
        if "files" in line:
            process.kill()
            break
    process.wait()
    assert process.returncode == -9, "the run finished before it could be killed; give it more input"
    assert output.read_text() == "previous,results\n"


def test_atomic_output_gets_ordinary_file_permissions(tmp_path: Path) -> None:
    fresh = tmp_path / "new.csv"
    with atomic_writer(fresh) as handle:
        handle.write("x\n")
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~old_umask
    existing = tmp_path / "shared.csv"
    existing.write_text("old\n")
    existing.chmod(0o640)
    with atomic_writer(existing) as handle:
        handle.write("new\n")
    assert existing.stat().st_mode & 0o777 == 0o640

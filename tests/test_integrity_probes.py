"""A hostile user's argument mistakes and interruptions: one line and exit 2 for a bad number,
130 for Ctrl-C, never a traceback or "some inputs failed"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli

from .conftest import REPO, needs_export


def _one_line_exit_2(arguments: list[str], words: str) -> None:
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.output


@needs_export
def test_numbers_that_cannot_work_are_refused_first(
    tiny_export: Path, tiny_run: Path, busi_images: list[Path], tmp_path: Path
) -> None:
    image = str(busi_images[0])
    _one_line_exit_2(
        ["infer", str(tiny_export), image, "--batch-size", "100000000"], "--batch-size must be at most 1024"
    )
    _one_line_exit_2(
        ["check", str(tiny_export), "--threads", "-3"], "--threads must be 0 (all cores) or more"
    )
    evaluate = ["evaluate", str(tiny_run), "--threads", "-2", "--output", str(tmp_path / "evaluation")]
    _one_line_exit_2(evaluate, "--threads must be at least 1")


@needs_export
def test_ctrl_c_exits_130_and_writes_nothing(tiny_export: Path, busi_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions.csv"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medvit_edge.cli",
            "infer",
            str(tiny_export),
            str(busi_dir),
            "--output",
            str(output),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    assert child.stderr is not None
    for line in child.stderr:  # the run is under way: files are being classified
        if "files" in line:
            break
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=300)
    assert child.returncode == 130, rest
    assert "Interrupted" in rest and "Traceback" not in rest and not output.exists()


def _hostile_folder(tiny_export: Path, target: Path, kind: str) -> Path:
    import shutil

    folder = target / kind
    shutil.copytree(tiny_export, folder)
    if kind == "deep-manifest":
        (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "fifo-manifest":
        (folder / "manifest.json").unlink()
        os.mkfifo(folder / "manifest.json")
    elif kind == "device-model":
        (folder / "model.onnx").unlink()
        (folder / "model.onnx").symlink_to("/dev/zero")
    elif kind == "fifo-model":
        (folder / "model.fp16.onnx").unlink()
        os.mkfifo(folder / "model.fp16.onnx")
    return folder


@needs_export
@pytest.mark.parametrize("kind", ["deep-manifest", "fifo-manifest", "device-model", "fifo-model"])
def test_check_info_and_benchmark_on_hostile_folders(kind: str, tiny_export: Path, tmp_path: Path) -> None:
    """A model folder whose manifest is nested 100,000 deep or a FIFO, or whose model file is a
    device or a FIFO: one line, never a traceback, never "agree" or a silent skip."""
    folder = _hostile_folder(tiny_export, tmp_path, kind)
    result = CliRunner().invoke(cli.main, ["check", str(folder)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    words = "nested too deeply" if kind == "deep-manifest" else "not a regular file"
    assert words in result.stderr
    result = CliRunner().invoke(cli.main, ["benchmark", str(folder), "--runs", "1", "--rounds", "1"])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert words in result.output
    if kind.endswith("-model"):
        name = "model.onnx" if kind == "device-model" else "model.fp16.onnx"
        result = CliRunner().invoke(cli.main, ["info", str(folder / name)])
        assert result.exit_code == 2 and words in result.stderr


@needs_export
def test_a_class_without_labelled_images_has_no_recall_to_report(
    tiny_export: Path, busi_dir: Path, tmp_path: Path
) -> None:
    images = (
        sorted((busi_dir / "benign").glob("*).png"))[:2] + sorted((busi_dir / "malignant").glob("*).png"))[:2]
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    command = ["infer", str(tiny_export), *map(str, images), "--labels", str(labels)]
    result = CliRunner().invoke(cli.main, [*command, "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    (line,) = [text for text in result.stderr.splitlines() if text.startswith("accuracy")]
    assert "normal n/a (no labelled images)" in line and "normal 0.000" not in line


def test_an_expected_bad_dicom_is_never_an_unexpected_error(tmp_path: Path) -> None:
    """A PALETTE COLOR instance without its palette is a bad input, said as such."""
    import numpy as np

    pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    from medvit_edge.inference.decoding import decode_safely
    from medvit_edge.io.inputs import InputFile
    from medvit_edge.runtime.preprocess import PreprocessSpec

    from .hospital_dicom import clinical_dataset

    ds = clinical_dataset(np.zeros((40, 50, 3), np.uint8), generate_uid(), generate_uid(), 1)
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "PALETTE COLOR", 1
    ds.PixelData = np.arange(2000, dtype=np.uint8).tobytes()
    path = tmp_path / "palette.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = decode_safely(InputFile(path), PreprocessSpec(size=32, resize_size=32), digest=True)
    assert result.error and "unexpected" not in result.error
    assert "PALETTE COLOR image without a usable palette" in result.error

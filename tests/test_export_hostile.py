"""Export of damaged or hostile run folders: one line naming the file and the problem (exit 2),
never a traceback; an export that stops leaves no model file behind; calibration errors name
the option that gives calibration images."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli

from .conftest import needs_export

pytestmark = [needs_export]


def _copy_run(tiny_run: Path, target: Path) -> Path:
    shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns("onnx", "checkpoints", "*.png"))
    return target


def _safetensors(path: Path) -> tuple[bytearray, dict, int]:
    data = bytearray(path.read_bytes())
    length = struct.unpack("<Q", data[:8])[0]
    return data, json.loads(data[8 : 8 + length]), length


def _break(kind: str, run: Path) -> None:
    weights, config, spec = run / "model.safetensors", run / "config.json", run / "preprocess.json"
    if kind == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif kind == "lying-header-length":
        data, _, _ = _safetensors(weights)
        data[:8] = struct.pack("<Q", 10**12)
        weights.write_bytes(bytes(data))
    elif kind == "lying-tensor-offsets":
        data, header, length = _safetensors(weights)
        header["classifier.bias"]["data_offsets"] = [0, 10**9]
        text = json.dumps(header).encode()
        weights.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data[8 + length :]))
    elif kind == "10000-labels":
        values = json.loads(config.read_text())
        values["id2label"] = {str(i): f"c{i}" for i in range(10000)}
        values["label2id"] = {f"c{i}": i for i in range(10000)}
        config.write_text(json.dumps(values))
    elif kind == "labels-not-the-weights":
        values = json.loads(config.read_text())
        values["id2label"] = {str(i): f"c{i}" for i in range(5)}
        values["label2id"] = {f"c{i}": i for i in range(5)}
        config.write_text(json.dumps(values))
    elif kind == "preprocess-size-100000":
        values = json.loads(spec.read_text())
        values["size"] = values["resize_size"] = 100000
        spec.write_text(json.dumps(values))
    elif kind == "deep-config":
        config.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "deep-preprocess":
        spec.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)


HOSTILE = {
    "truncated-weights": "model.safetensors: truncated or damaged safetensors file",
    "lying-header-length": "model.safetensors: truncated or damaged safetensors file",
    "lying-tensor-offsets": "tensor 'classifier.bias': its header entry does not fit the file",
    "10000-labels": "config.json: 10000 labels in 'id2label'",
    "labels-not-the-weights": "config.json: lists 5 labels, but the weights' classifier has 3 outputs",
    "preprocess-size-100000": "preprocess.json: unusable preprocessing (size must be a whole number",
    "deep-config": "config.json: nested too deeply",
    "deep-preprocess": "preprocess.json: nested too deeply",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_run_folder_is_one_line_and_exit_2(kind: str, tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    _break(kind, run)
    result = CliRunner().invoke(cli.main, ["export", str(run), "--golden-images", "0"])
    assert result.exit_code == 2, (result.output, result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert HOSTILE[kind] in line and "Traceback" not in result.output
    assert not (run / "onnx" / "model.onnx").exists()


def test_calibration_without_split_csv_names_calibration_data_and_leaves_no_model(
    tiny_run: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    """--data names validation images; calibration reads --calibration-data (or --data's train
    rows when it has some). A folder of class folders has no train rows: the error must say
    --calibration-data, and the model.onnx written before it must not stay behind."""
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / "split.csv").unlink()
    command = ["export", str(run), "--int8", "--int8-mode", "static", "--golden-images", "0"]
    result = CliRunner().invoke(cli.main, [*command, "--data", str(phantom_dir / "test")])
    assert result.exit_code == 2, result.output
    (line,) = [text for text in result.stderr.splitlines() if text.startswith("Error")]
    assert "Traceback" not in result.output
    assert "pass --calibration-data with labelled images" in line and "has no rows of split 'train'" in line
    assert not any((run / "onnx").glob("*.onnx")), sorted((run / "onnx").iterdir())


def test_calibration_takes_the_train_rows_of_data(tiny_run: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from medvit_edge.export.config import ExportConfig
    from medvit_edge.export.validate import choose_images

    run = _copy_run(tiny_run, tmp_path / "run")
    (run / "split.csv").unlink()
    split = phantom_dir / "split.csv"
    cfg = ExportConfig(run_dir=run, data=split, data_split="test")
    images = choose_images(cfg, "train", None, None, option="--calibration-data")
    assert images and {image.split for image in images} == {"train"}
    with pytest.raises(Exception, match="--calibration-data"):  # validated on train: never calibrated on it
        choose_images(
            ExportConfig(run_dir=run, data=split, data_split="train"),
            "train",
            None,
            None,
            "--calibration-data",
        )

"""Every command met with ordinary mistakes: one line naming the input and the cause, the
documented exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli

from .conftest import REPO, needs_export


def _bad_invocations(tiny_run: Path, phantom_dir: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, words the error line must hold); every one must exit 2."""
    empty = tmp / "empty"
    empty.mkdir()
    one_class = tmp / "one-class.csv"
    one_class.write_text(
        "path,label\n" + "".join(f"{p},benign\n" for p in sorted(phantom_dir.rglob("*.png"))[:4])
    )
    no_columns = tmp / "no-columns.csv"
    no_columns.write_text("file,class\na.png,benign\n")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model: [tiny\n")
    unknown = tmp / "unknown.json"
    unknown.write_text('{"epochz": 3}')
    wrong_labels = tmp / "wrong-labels.csv"
    wrong_labels.write_text(f"path,label\n{next(phantom_dir.rglob('*.png'))},cat\n")
    run, model = str(tiny_run), str(tiny_run / "onnx" / "model.onnx")
    return [
        (["train", "--data", str(tmp / "no" / "such" / "folder")], "no such file or folder"),
        (["train", "--model", "tiny", "--data", str(empty)], "no images found"),
        (["train", "--model", "tiny", "--data", str(one_class)], "only one class"),
        (["train", "--config", str(bad_yaml)], "not valid YAML"),
        (["train", "--config", str(unknown)], "unknown training settings"),
        (["train", "--model", "tiny", "--epochs", "-1"], "epochs and learning rate must be positive"),
        (["train", "--model", str(empty), "--data", str(phantom_dir / "split.csv")], "no config.json"),
        (["export", str(empty)], "no safetensors weights"),
        (["export", run, "--data", str(no_columns), "--output", str(tmp / "o1")], "'path' and 'label'"),
        (["export", run, "--max-images", "0", "--output", str(tmp / "o2")], "max_validation_images"),
        (
            ["export", run, "--data", str(phantom_dir / "split.csv"), "--data-split", "nope"],
            "no labelled images",
        ),
        (["evaluate", str(empty)], "no such folder"),
        (["evaluate", run, "--split", "nope", "--output", str(tmp / "e1")], "no images in split 'nope'"),
        (
            ["evaluate", run, "--data", str(wrong_labels), "--output", str(tmp / "e2")],
            "not among the model's",
        ),
        (["infer", str(tmp / "missing.onnx"), str(phantom_dir)], "model file not found"),
        (["infer", str(empty), str(phantom_dir)], "no usable model"),
        (["infer", model, str(phantom_dir), "--batch-size", "0"], "--batch-size must be at least 1"),
        (["infer", model, str(phantom_dir), "--output", str(tmp / "preds.xlsx")], "unknown output format"),
        (["infer", model, str(phantom_dir), "--output", str(empty)], "is a directory"),
        (["demo", "--data", str(empty), "--output", str(tmp / "d")], "no images found"),
    ]


@needs_export
def test_every_command_answers_a_mistake_in_one_line(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    for args, words in _bad_invocations(tiny_export.parent, phantom_dir, tmp_path):
        result = runner.invoke(cli.main, args)
        output = result.output
        assert result.exit_code == 2, (args, output)
        assert "Traceback" not in output and not isinstance(result.exception, Exception), (args, output)
        last = output.strip().splitlines()[-1]
        assert last.startswith("Error:") and words in last, (args, last)


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """Outside click's test runner too: the installed entry point, a real stderr."""
    command = [sys.executable, "-m", "medvit_edge.cli", "evaluate", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    debug = subprocess.run([*command[:3], "--debug", *command[3:]], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" in debug.stderr  # --debug keeps the traceback for bug reports


@pytest.mark.parametrize("offline", ["1", ""])
def test_the_default_train_fails_fast_offline(offline: str, tmp_path: Path) -> None:
    """The cookbook default needs the hub: without it, one line pointing at the offline presets."""
    env = {"HF_HUB_OFFLINE": offline, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "medvit_edge.cli", "train", "--output", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--model tiny|small" in result.stderr.strip().splitlines()[-1]

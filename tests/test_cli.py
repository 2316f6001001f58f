"""The CLI through click's CliRunner: help texts, exit codes, missing extras."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli

from .conftest import needs_export


@pytest.mark.parametrize("command", ["train", "export", "infer", "evaluate", "demo"])
def test_every_command_has_real_help(command: str) -> None:
    result = CliRunner().invoke(cli.main, [command, "--help"])
    assert result.exit_code == 0
    assert len(result.output.splitlines()) > 8 and "Usage: main " + command in result.output.replace(
        "medvit-edge", "main"
    )


def test_missing_extra_prints_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    result = CliRunner().invoke(cli.main, ["train", "--model", "tiny"])
    assert result.exit_code == 1
    assert "torch" in result.output and "pip install 'medvit-edge[train]'" in result.output


def test_runtime_without_onnxruntime_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    result = CliRunner().invoke(cli.main, ["infer", str(tmp_path / "m.onnx"), str(tmp_path)])
    assert result.exit_code == 1 and "medvit-edge[cpu]" in result.output


@needs_export
@pytest.mark.busi
def test_infer_exit_codes_and_stdout_csv(tiny_busi_export: Path, busi_images: list, tmp_path: Path) -> None:
    runner = CliRunner()
    good = [str(p) for p in busi_images[:3]]
    result = runner.invoke(cli.main, ["infer", str(tiny_busi_export / "model.onnx"), *good, "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("path,frame,label,benign,malignant,normal")
    assert len(result.stdout.splitlines()) == 4
    broken = tmp_path / "broken.png"
    broken.write_text("no")
    result = runner.invoke(
        cli.main, ["infer", str(tiny_busi_export / "model.onnx"), *good, str(broken), "--quiet"]
    )
    assert result.exit_code == 1 and "1 failed" in result.stderr and "broken.png" in result.stderr
    result = runner.invoke(cli.main, ["infer", str(tmp_path / "nope.onnx"), *good])
    assert result.exit_code == 2 and "model file not found" in result.stderr


@needs_export
@pytest.mark.busi
def test_export_and_evaluate_commands(tiny_busi_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "onnx"
    result = runner.invoke(
        cli.main,
        [
            "export",
            str(tiny_busi_run),
            "--output",
            str(output),
            "--int8",
            "--max-images",
            "32",
            "--allow-degraded",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx" in result.stdout and (output / "manifest.json").is_file()
    result = runner.invoke(
        cli.main,
        [
            "evaluate",
            str(tiny_busi_run),
            "--onnx-dir",
            str(output),
            "--output",
            str(tmp_path / "eval"),
            "--no-plots",
            "--no-pytorch",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| int8-dynamic |" in result.stdout and (tmp_path / "eval" / "report.md").is_file()

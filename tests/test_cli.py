"""The CLI through click's CliRunner: help texts, exit codes, missing extras."""

from __future__ import annotations

import importlib.util
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
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    result = CliRunner().invoke(cli.main, ["train", "--model", "tiny"])
    assert result.exit_code == 2
    assert "torch" in result.output and "pip install 'medvit-edge[train]'" in result.output


def test_runtime_without_onnxruntime_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    result = CliRunner().invoke(cli.main, ["infer", str(tmp_path / "m.onnx"), str(tmp_path)])
    assert result.exit_code == 2 and "medvit-edge[cpu]" in result.output


@needs_export
def test_infer_exit_codes_and_stdout_csv(tiny_export: Path, phantom_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    good = [str(p) for p in sorted(phantom_dir.rglob("*.png"))[:3]]
    result = runner.invoke(cli.main, ["infer", str(tiny_export / "model.onnx"), *good, "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("path,frame,label,decision,benign,malignant,normal")
    assert len(result.stdout.splitlines()) == 4
    broken = tmp_path / "broken.png"
    broken.write_text("no")
    result = runner.invoke(
        cli.main, ["infer", str(tiny_export / "model.onnx"), *good, str(broken), "--quiet"]
    )
    assert result.exit_code == 1 and "1 failed" in result.stderr and "broken.png" in result.stderr
    result = runner.invoke(cli.main, ["infer", str(tmp_path / "nope.onnx"), *good])
    assert result.exit_code == 2 and "model file not found" in result.stderr


@needs_export
def test_export_and_evaluate_commands(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "onnx"
    # --int8 is a flag: it no longer swallows the next argument as its mode
    result = runner.invoke(
        cli.main,
        [
            "export",
            "--int8",
            str(tiny_run),
            "--output",
            str(output),
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
            str(tiny_run),
            "--split",
            "val",  # the alias of split.csv's "validation"
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


@needs_export
def test_export_int8_mode_picks_the_variant(tiny_run: Path, tmp_path: Path) -> None:
    import json

    for args, variant in (
        (["--int8", "--int8-mode", "static"], "int8-static"),
        (["--int8", "--int8-mode", "dynamic"], "int8-dynamic"),
    ):
        output = tmp_path / variant / str(len(args))
        result = CliRunner().invoke(
            cli.main,
            [
                "export",
                str(tiny_run),
                *args,
                "--output",
                str(output),
                "--max-images",
                "8",
                "--allow-degraded",
            ],
        )
        assert result.exit_code == 0, result.output
        manifest = json.loads((output / "manifest.json").read_text())
        assert [v["variant"] for v in manifest["variants"]] == ["fp32", variant]


def test_click_choices_come_from_the_config_literals() -> None:
    from medvit_edge.export.config import CalibrationMethod, Int8Mode, TargetChoice
    from medvit_edge.options import choices
    from medvit_edge.train.config import Precision, ReportTo

    def option(command: str, name: str) -> list[str]:
        found = next(p for p in cli.main.commands[command].params if p.name == name)
        return list(found.type.choices)

    assert option("train", "precision") == choices(Precision)
    assert option("train", "report_to") == choices(ReportTo)
    assert option("export", "int8_mode") == choices(Int8Mode)
    assert option("export", "target") == choices(TargetChoice)
    assert option("export", "calibration_method") == choices(CalibrationMethod)


def test_a_literal_setting_from_a_config_file_is_validated(tmp_path: Path) -> None:
    """`precision: bf61` in a YAML file once trained silently in fp32."""
    pytest.importorskip("yaml")
    config = tmp_path / "recipe.yaml"
    config.write_text("model: tiny\nprecision: bf61\n")
    result = CliRunner().invoke(cli.main, ["train", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "precision: 'bf61' is not one of: auto, fp32, bf16, fp16" in result.output
    assert "Traceback" not in result.output

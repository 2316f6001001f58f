"""The whole pipeline end to end, offline: phantom data -> tiny ViT -> 3 variants -> infer -> report."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import needs_export

pytestmark = [needs_export, pytest.mark.slow]


def test_demo_learns_the_phantoms_and_writes_everything(tmp_path: Path) -> None:
    from medvit_edge.demo import DemoConfig, demo

    result = demo(DemoConfig(output=tmp_path / "demo", progress=False))
    assert result.infer_accuracy is not None and result.infer_accuracy >= 0.9
    rows = {row["variant"]: row for row in result.report.to_dict()["variants"]}
    assert set(rows) == {"pytorch-fp32", "fp32", "fp16", "int8-dynamic"}
    assert all(row["accuracy"] >= 0.9 for row in rows.values())
    assert rows["fp32"]["top1_agreement"] == 1.0 and rows["int8-dynamic"]["top1_agreement"] >= 0.98
    for path in (
        result.predictions,
        result.onnx_dir / "manifest.json",
        result.output / "evaluation" / "report.md",
        result.run_dir / "model.safetensors",
    ):
        assert path.is_file()
    assert len(result.predictions.read_text().splitlines()) == 1 + 3 * 40


@pytest.mark.busi
def test_demo_cli_on_a_real_image_folder(busi_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medvit_edge import cli

    folder = tmp_path / "busi"
    folder.mkdir()
    for label in ("benign", "malignant", "normal"):
        (folder / label).mkdir()
        for source in sorted((busi_dir / label).glob("*.png"))[:30]:
            (folder / label / source.name).symlink_to(source)
    result = CliRunner().invoke(
        cli.main,
        ["demo", "--data", str(folder), "--output", str(tmp_path / "out"), "--epochs", "1", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "| int8-dynamic |" in result.stdout and "everything is under" in result.stdout
    assert (tmp_path / "out" / "predictions.int8.csv").is_file()

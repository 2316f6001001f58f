"""`medvit-edge benchmark`: each model in fresh processes, interleaved rounds, the table and JSON,
accuracy against a labelled set, one failed model as a row, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.deploy.benchmark import BenchmarkConfig, benchmark, format_report
from medvit_edge.io.labelled import read_labelled_set
from medvit_edge.io.reader import read_labelled_image
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import Manifest
from tests.conftest import needs_export

pytestmark = needs_export
REPO = Path(__file__).resolve().parents[1]


def test_a_folder_means_every_variant_of_its_manifest(tiny_export: Path) -> None:
    report = benchmark(BenchmarkConfig([tiny_export.parent], batch=2, runs=3, rounds=2))
    manifest = Manifest.read(tiny_export)
    assert manifest is not None
    listed = [record.file for record in manifest.variants if (tiny_export / record.file).is_file()]
    assert [Path(row.model).name for row in report.rows] == listed
    variants = {record.file: record.variant for record in manifest.variants}
    for row in report.rows:
        assert row.ok, row.error
        assert row.variant == variants[Path(row.model).name]
        assert 0 < row.p50_ms <= row.p95_ms  # type: ignore[operator]
        assert row.images_per_s == pytest.approx(1000 / row.p50_ms)  # type: ignore[operator]
        assert row.load_s > 0 and row.peak_rss_mb > 30  # type: ignore[operator]  # a whole process
        assert row.accuracy is None  # synthetic frames: nothing to score
    assert report.rounds == 2 and "synthetic" in report.images


def test_accuracy_is_what_the_classifier_gets_on_the_labelled_images(
    tiny_export: Path, phantom_dir: Path
) -> None:
    model = tiny_export / "model.int8.onnx"
    images = read_labelled_set(phantom_dir / "split.csv", "test")
    classifier = Classifier.load(model, device="cpu")
    predicted = classifier.predict([read_labelled_image(i.path, i.frame) for i in images])
    expected = sum(p.label == i.label for p, i in zip(predicted, images))  # type: ignore[union-attr]
    for source in (phantom_dir / "split.csv", phantom_dir / "test"):  # a split CSV, class folders
        cfg = BenchmarkConfig([model], images=source, split="test", runs=2, rounds=1)
        (row,) = benchmark(cfg).rows
        assert (row.correct, row.labelled) == (expected, len(images)), source
        assert row.accuracy == pytest.approx(expected / len(images))


def test_table_and_json(tiny_export: Path) -> None:
    args = ["benchmark", str(tiny_export / "model.onnx"), "--runs", "2", "--rounds", "1", "--batch-size", "3"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[1]
    for column in ("model", "variant", "load s", "p50 ms/img", "p95 ms/img", "img/s", "peak RSS MB"):
        assert column in header
    assert "batch 3" in result.stdout.splitlines()[0]
    data = json.loads(CliRunner().invoke(cli.main, [*args, "--json"]).stdout)  # progress: stderr
    (row,) = data["rows"]
    assert row["variant"] == "fp32" and row["p50_ms"] > 0 and data["batch"] == 3


def test_one_failed_model_in_a_list_is_a_row_not_an_abort(tiny_export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    missing = tmp_path / "missing.onnx"
    good = tiny_export / "model.onnx"
    report = benchmark(BenchmarkConfig([good, broken, missing], runs=2, rounds=2))
    assert [row.ok for row in report.rows] == [True, False, False]
    assert "broken.onnx" in report.rows[1].error and "missing.onnx" in report.rows[2].error
    lines = format_report(report)
    assert any(line.startswith("broken.onnx") and "error:" in line for line in lines)
    result = CliRunner().invoke(
        cli.main, ["benchmark", str(good), str(broken), "--runs", "2", "--rounds", "1"]
    )
    assert result.exit_code == 1 and "fp32" in result.output and "error:" in result.output


@pytest.mark.parametrize("name, content", [("missing.onnx", None), ("broken.onnx", b"garbage")])
def test_one_model_that_cannot_run_is_one_line_and_exit_2(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli.main, ["benchmark", str(path), "--runs", "1", "--rounds", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error:") and name in line


def test_bad_arguments_and_images_exit_2(tiny_export: Path, tmp_path: Path) -> None:
    model = str(tiny_export / "model.onnx")
    for args in (["--batch", "0"], ["--runs", "0"], ["--images", str(tmp_path)]):
        result = CliRunner().invoke(cli.main, ["benchmark", model, *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().splitlines()[-1].startswith("Error:")


def test_the_worker_runs_without_torch(tiny_export: Path) -> None:
    """Runtime only: a deployment has no torch, and the measurement must not pull it in."""
    code = (
        "import sys, json; from medvit_edge.deploy.benchmark import measure_one; "
        f"r = measure_one(dict(model={str(tiny_export / 'model.int8.onnx')!r}, batch=1, threads=1, runs=1, "
        "device='cpu', images=None, accuracy=False)); "
        "print(json.dumps([r['p50_ms'] > 0, 'torch' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, False], done.stderr

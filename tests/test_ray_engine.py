"""``infer --engine ray`` on a local Ray instance (2 CPUs): the same rows as plain ``infer``, row
for row, over a folder of good and bad files; Parquet file and partitioned-folder outputs."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medvit_edge.errors import UserError
from medvit_edge.inference.command import InferConfig, format_predictions, infer

from .conftest import needs_export
from .dicom_files import write_us_dicom

ray = pytest.importorskip("ray", reason="needs the [ray] extra")
pytestmark = [needs_export, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray() -> object:
    """One local Ray for the module (infer_on_ray reuses a running Ray and leaves it running).
    ray.init installs its own SIGTERM handler in this process: the old one comes back after."""
    import logging
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="module")
def archive(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders of phantoms (ground truth for accuracy), then bad files of every kind, a
    cine DICOM with a blank frame, names that are not UTF-8 or look like formulas, and files a
    folder walk skips."""
    root = tmp_path_factory.mktemp("archive")
    shutil.copytree(phantom_dir / "test", root / "scans")
    good = sorted((root / "scans").rglob("*.png"))[0]
    bad = root / "scans" / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("this is not an image")
    (bad / "truncated.png").write_bytes(good.read_bytes()[:300])
    Image.new("RGB", (80, 60), (7, 7, 7)).save(bad / "blank.png")
    (bad / "broken link.png").symlink_to(bad / "nowhere.png")
    (bad / ".hidden.png").write_bytes(good.read_bytes())
    (bad / "lesion_mask.png").write_bytes(good.read_bytes())
    shutil.copy(good, os.fsdecode(bytes(bad) + b"/caf\xe9.png"))
    shutil.copy(good, bad / "=HYPERLINK(1).png")
    if _has_pydicom():
        frame = np.asarray(Image.open(good).convert("RGB"))
        write_us_dicom(root / "scans" / "cine.dcm", [frame, np.zeros_like(frame), frame[::-1]])
    return root


def _has_pydicom() -> bool:
    import importlib.util

    return importlib.util.find_spec("pydicom") is not None


def _config(model: Path, archive: Path, output: Path | None) -> InferConfig:
    # the folder, plus a path that does not exist: an error row of its own
    inputs = [str(archive / "scans"), str(archive / "missing.png")]
    return InferConfig(model=model, inputs=inputs, output=output, progress=False)


@pytest.fixture(scope="module")
def plain(tiny_export: Path, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    output = tmp_path_factory.mktemp("plain") / "plain.csv"
    return infer(_config(tiny_export, archive, output))


def test_ray_equals_plain_infer_row_for_row(
    local_ray: object, plain: object, tiny_export: Path, archive: Path, tmp_path: Path
) -> None:
    from medvit_edge.inference.ray_engine import infer_on_ray

    output = tmp_path / "ray.csv"
    summary = infer_on_ray(_config(tiny_export, archive, output), workers=2)
    assert len(plain.rows) >= 35 and plain.failed_files >= 7  # the fixture really mixes good and bad
    assert summary.rows == plain.rows
    assert output.read_bytes() == plain.output.read_bytes()
    for field in ("labels", "files", "failed_files", "predictions", "errors", "skipped", "metrics"):
        assert getattr(summary, field) == getattr(plain, field), field
    assert summary.exit_code == plain.exit_code == 1
    if _has_pydicom():  # the blank frame is that frame's error row; the others are classified
        cine = [row for row in summary.rows if row.path.endswith("cine.dcm")]
        assert [bool(row.error) for row in cine] == [False, True, False]


def test_parquet_file_holds_the_jsonl_values(
    local_ray: object, plain: object, tiny_export: Path, archive: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from medvit_edge.inference.ray_engine import infer_on_ray

    output = tmp_path / "preds.parquet"
    summary = infer_on_ray(_config(tiny_export, archive, output), workers=1)
    assert summary.output == output and summary.rows == plain.rows
    table = pq.read_table(output)
    assert table.schema.field("frame").type == "int64"
    assert all(table.schema.field(label).type == "double" for label in plain.labels)
    assert table.to_pylist() == _jsonl_records(plain)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def _jsonl_records(summary: object) -> list[dict]:
    """What the JSONL output holds, with "" frames (file-level error rows) as nulls."""
    import io

    buffer = io.StringIO()
    format_predictions(buffer, summary.rows, summary.labels, jsonl=True)
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [{k: (None if k == "frame" and v == "" else v) for k, v in r.items()} for r in records]


def test_partitioned_folder_with_success_marker(
    local_ray: object,
    plain: object,
    tiny_export: Path,
    archive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow.parquet as pq

    from medvit_edge.inference import parquet_out
    from medvit_edge.inference.ray_engine import infer_on_ray

    monkeypatch.setattr(parquet_out, "ROWS_PER_PART", 10)  # several parts from a small folder
    output = tmp_path / "predictions"
    summary = infer_on_ray(_config(tiny_export, archive, output), workers=2)
    assert summary.rows == []  # rows went to the parts, not into memory
    for field in ("files", "failed_files", "errors", "predictions", "metrics", "skipped"):
        assert getattr(summary, field) == getattr(plain, field), field
    parts = sorted(output.glob("part-*.parquet"))
    assert len(parts) == -(-len(plain.rows) // 10)
    marker = json.loads((output / "_SUCCESS").read_text())
    assert marker["rows"] == len(plain.rows) and marker["parts"] == len(parts)
    rows = [row for part in parts for row in pq.read_table(part).to_pylist()]
    assert rows == _jsonl_records(plain)
    assert pq.read_table(output).num_rows == len(plain.rows)  # readers skip _SUCCESS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions"]


def test_a_failed_folder_write_leaves_nothing(
    local_ray: object, tiny_export: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit_edge.inference import parquet_out
    from medvit_edge.inference.ray_engine import infer_on_ray

    write_part = parquet_out.PartitionedParquet._write_part

    def disk_full_at_the_second_part(self: parquet_out.PartitionedParquet, rows: list) -> None:
        if self.parts:
            raise OSError(28, "No space left on device")
        write_part(self, rows)

    monkeypatch.setattr(parquet_out, "ROWS_PER_PART", 10)
    monkeypatch.setattr(parquet_out.PartitionedParquet, "_write_part", disk_full_at_the_second_part)
    with pytest.raises(UserError, match="No space left"):
        infer_on_ray(_config(tiny_export, archive, tmp_path / "predictions"), workers=1)
    assert list(tmp_path.iterdir()) == []


def _no_cluster(address: object) -> None:
    pytest.fail("Ray was started")


def test_outputs_refused_before_any_work(
    tiny_export: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit_edge.inference import ray_engine
    from medvit_edge.inference.ray_engine import infer_on_ray

    monkeypatch.setattr(ray_engine, "_ray_session", _no_cluster)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_bytes(b"x")
    refused = {
        tmp_path / "full": "not an empty folder",
        tmp_path / "preds.xlsx": "unknown output format",
        tmp_path / "nowhere" / "preds.csv": "does not exist",
    }
    for output, message in refused.items():
        with pytest.raises(UserError, match=message):
            infer_on_ray(_config(tiny_export, archive, output))
    with pytest.raises(UserError, match="--workers"):
        infer_on_ray(_config(tiny_export, archive, None), workers=0)
    with pytest.raises(UserError, match="--audit-log"):
        infer_on_ray(replace(_config(tiny_export, archive, None), audit_log=tmp_path / "audit.jsonl"))


def test_no_input_needs_no_cluster(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit_edge.inference import ray_engine

    monkeypatch.setattr(ray_engine, "_ray_session", _no_cluster)
    (tmp_path / "empty").mkdir()
    cfg = InferConfig(model=tiny_export, inputs=[str(tmp_path / "empty")], progress=False)
    summary = ray_engine.infer_on_ray(cfg)
    assert (summary.files, summary.rows, summary.exit_code) == (0, [], 1)


def test_worker_plan() -> None:
    from medvit_edge.inference.ray_engine import plan_workers

    cfg = InferConfig(model=Path("m.onnx"), inputs=[])
    two = plan_workers({"CPU": 2.0}, cfg, 2, 40, 32)
    assert (two.workers, two.cpus, two.gpus, two.threads, two.files_per_task) == (2, 1.0, 0.0, 1, 5)
    node = plan_workers({"CPU": 64.0}, cfg, None, 10**6, 32)
    assert (node.workers, node.cpus, node.threads, node.files_per_task) == (16, 4.0, 4, 32)
    assert plan_workers({"CPU": 8.0}, replace(cfg, threads=2), 1, 10, 32).threads == 2
    gpus = plan_workers({"CPU": 32.0, "GPU": 4.0}, replace(cfg, device="cuda"), None, 100, 32)
    assert (gpus.workers, gpus.cpus, gpus.gpus) == (4, 8.0, 1.0)
    with pytest.raises(UserError, match="no GPU"):
        plan_workers({"CPU": 8.0}, replace(cfg, device="cuda"), None, 10, 32)


def test_cli_engine_ray(
    local_ray: object, plain: object, tiny_export: Path, archive: Path, tmp_path: Path
) -> None:
    from medvit_edge.cli import main

    runner = CliRunner()
    output = tmp_path / "cli.csv"
    inputs = [str(archive / "scans"), str(archive / "missing.png")]
    args = ["infer", str(tiny_export), *inputs, "--engine", "ray", "--workers", "2", "--output", str(output)]
    result = runner.invoke(main, [*args, "--quiet"])
    assert result.exit_code == 1, result.output  # some inputs failed, as with plain infer
    assert output.read_bytes() == plain.output.read_bytes()
    assert f"{plain.predictions} predictions" in result.stderr
    local_only = runner.invoke(main, ["infer", str(tiny_export), *inputs, "--workers", "2"])
    assert local_only.exit_code == 2 and "--engine ray" in local_only.stderr
    parquet_output = ["--output", str(tmp_path / "p.parquet")]
    parquet = runner.invoke(main, ["infer", str(tiny_export), *inputs, *parquet_output])
    assert parquet.exit_code == 2 and "unknown output format" in parquet.stderr


def test_sigterm_stops_a_ray_run_cleanly(tiny_export: Path, archive: Path, tmp_path: Path) -> None:
    """The CLI's contract holds on Ray too: exit 143, no partial output, Ray stopped (it sets its
    own SIGTERM handler when it starts; ours is put back)."""
    import signal
    import subprocess
    import sys

    output = tmp_path / "predictions"
    command = [sys.executable, "-m", "medvit_edge.cli", "infer", str(tiny_export), str(archive / "scans")]
    command += ["--engine", "ray", "--workers", "1", "--output", str(output), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # the plan is logged once Ray is up, before the actors start
        seen.append(line)
        if "Ray worker" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 143, "".join(seen) + rest
    assert "stopped by SIGTERM" in rest
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [], rest  # neither the folder nor its .partial-* draft

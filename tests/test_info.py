"""``medvit-edge info``: every file export writes describes itself, without torch or onnx."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.deploy.info import read_header
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.metadata import RESEARCH_NOTICE

from .conftest import HAS_EXPORT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every variant and its raw-input twin: all the kinds of file export writes."""
    if not HAS_EXPORT:
        pytest.skip("needs the [export] extra")
    from medvit_edge.export import ExportConfig, export

    output = tmp_path_factory.mktemp("raw") / "onnx"
    export(
        ExportConfig(
            run_dir=tiny_run, output=output, fp16=True, int8=True, raw_input=True, allow_degraded=True
        )
    )
    return output


def _info(*args: str) -> dict:
    result = CliRunner().invoke(cli.main, ["info", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_describes_every_file_export_writes(raw_export: Path) -> None:
    import onnx

    manifest = Manifest.read(raw_export)
    assert manifest is not None
    data = _info(str(raw_export))
    assert {Path(m["file"]).name for m in data["models"]} == {r.file for r in manifest.variants}
    for model in data["models"]:
        record = manifest.entry(Path(model["file"]).name)
        proto = onnx.load(model["file"], load_external_data=False)
        assert model["variant"] == record.variant and model["labels"] == ["benign", "malignant", "normal"]
        failures = list(record.validation.failures)  # what the manifest says, passed or not
        assert model["manifest"] == {"status": "verified", "validation": record.status, "failures": failures}
        assert model["sha256"] == record.sha256 and model["source_sha256"] == manifest.source_sha256
        assert [i["name"] for i in model["inputs"]] == [i.name for i in proto.graph.input]
        assert [o["name"] for o in model["outputs"]] == [o.name for o in proto.graph.output]
        expected_input = "tensor(uint8)" if record.variant.endswith("-raw") else "tensor(float)"
        assert model["inputs"][0]["type"] == expected_input
        assert model["input_kind"] == (
            "raw-uint8-nhwc" if record.variant.endswith("-raw") else "pixel-values-nchw"
        )
        assert model["onnx"]["opset"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
        assert model["onnx"]["ir_version"] == proto.ir_version and model["onnx"]["model_version"] == 1
        assert model["onnx"]["producer"] == proto.producer_name
        assert RESEARCH_NOTICE in model["onnx"]["doc_string"]
        assert model["preprocess"] == manifest.preprocess and model["versions"] == manifest.versions
        assert model["model_name"] == "run" and model["model_version"] == "1"
        assert "Research use only" in model["intended_use"] and model["license"] == "other"
        assert model["golden"]["images"] == 3 and model["golden"]["variants"] == [record.variant]
        if record.variant.startswith("int8"):
            assert model["quantization"]["target"] == "portable"
            assert model["quantization"]["weight_bits"] == 7
            assert model["quantization"]["on_this_cpu"].endswith("gives the validated results")
        else:
            assert model["quantization"] is None


def test_info_table_for_people(tiny_export: Path) -> None:
    result = CliRunner().invoke(cli.main, ["info", str(tiny_export / "model.int8.onnx")])
    assert result.exit_code == 0
    text = result.stdout
    for expected in (
        "model.int8.onnx  (",
        "variant            int8-dynamic",
        "labels             benign, malignant, normal",
        "pixel_values  tensor(float)  [batch_size, 3, 64, 64]",
        "target portable (7-bit weights: right on every CPU, no saturation)",
        "manifest: verified, validation",
        "notice             Research use only.",
        "ONNX               opset ai.onnx ",
    ):
        assert expected in text, expected


def test_header_is_read_without_onnx(tiny_export: Path) -> None:
    import onnx

    for path in sorted(tiny_export.glob("*.onnx")):
        proto = onnx.load(str(path), load_external_data=False)
        header = read_header(path)
        assert header["ir_version"] == proto.ir_version
        assert header["producer_version"] == proto.producer_version
        assert header["model_version"] == proto.model_version
        assert header["opset"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    code = (
        "import sys; sys.modules.update(onnx=None, torch=None, transformers=None); "
        "from medvit_edge.cli import main; main(['info', '--json', sys.argv[1]])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_export / "model.onnx")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["onnx"]["opset"]


def test_info_reports_rather_than_refuses(tiny_export: Path, tmp_path: Path) -> None:
    """A file changed after export: info still describes it and says the checksum differs. A
    foreign ONNX file: its metadata problem is reported. Not a model at all: exit 2, one line."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_export, folder)
    proto = onnx.load(str(folder / "model.onnx"))
    proto.doc_string = "edited"
    onnx.save(proto, str(folder / "model.onnx"))
    assert _info(str(folder / "model.onnx"))["manifest"]["status"] == "mismatch"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    data = _info(str(foreign))
    assert "no medvit-edge metadata" in data["metadata_error"] and data["onnx"]["opset"] == {"ai.onnx": 17}
    assert data["manifest"] == {"status": "no manifest"}
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    result = CliRunner().invoke(cli.main, ["info", str(junk)])
    assert (
        result.exit_code == 2 and result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1
    )


def test_check_runs_every_file_export_writes(raw_export: Path) -> None:
    result = CliRunner().invoke(cli.main, ["check", "--json", str(raw_export)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["variants"]) == 6 and all(v["result"] == "agree" for v in report["variants"])
    raw = [v for v in report["variants"] if v["variant"].endswith("-raw")]
    assert len(raw) == 3 and all(v["max_abs_diff_tensor"] is None for v in raw)  # no tensor input

"""An int8 file that is right on every CPU it may meet: 7-bit weights by default (``portable``),
8-bit only for a named target, the target in the metadata, and a warning at load on a CPU
outside it."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.runtime import int8_target
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.int8_target import detect_target, host_kind, target_warning

from .conftest import HAS_EXPORT, needs_export

X86_NO_VNNI = {"avx2", "fma", "avx512f"}  # Skylake-X: AVX-512 without VNNI still saturates
X86_VNNI = {"avx2", "avx512f", "avx512_vnni"}


@pytest.mark.parametrize(
    ("flags", "machine", "kind", "auto"),
    [
        (X86_NO_VNNI, "x86_64", "x86", "avx2"),
        (X86_VNNI, "x86_64", "x86-vnni", "avx512_vnni"),
        ({"avx2", "avx_vnni"}, "x86_64", "x86-vnni", "avx512_vnni"),  # Alder Lake's AVX-VNNI
        ({"asimd", "asimddp"}, "aarch64", "arm64", "arm64"),
        (set(), "AMD64", "unknown", "avx2"),  # no /proc/cpuinfo (Windows): the safe choice
    ],
)
def test_host_kind_and_auto_target(flags: set[str], machine: str, kind: str, auto: str) -> None:
    assert host_kind(flags, machine) == kind and detect_target(flags, machine) == auto


@needs_export
def test_portable_is_the_default_and_has_7_bit_weights() -> None:
    from medvit_edge.export import ExportConfig
    from medvit_edge.export.config import Int8Config

    assert ExportConfig(run_dir=Path("run")).target == "portable"
    bits = {t: Int8Config.for_target(t).to_dict()["weight_bits"] for t in int8_target.TARGETS}
    assert bits == {"portable": 7, "avx2": 7, "avx512_vnni": 8, "arm64": 8}
    assert Int8Config.for_target("portable").reduce_range is True
    assert Int8Config.for_target("auto").target == detect_target()  # "this CPU", as before


@pytest.mark.parametrize(
    ("quantization", "flags", "machine", "warns"),
    [
        ({"target": "avx512_vnni", "weight_bits": 8}, X86_NO_VNNI, "x86_64", True),
        ({"target": "arm64", "weight_bits": 8}, X86_NO_VNNI, "x86_64", True),
        ({"target": "avx512_vnni", "reduce_range": False}, X86_NO_VNNI, "x86_64", True),  # older file
        ({"target": "avx512_vnni", "weight_bits": 8}, X86_VNNI, "x86_64", False),
        ({"target": "avx512_vnni", "weight_bits": 8}, {"asimd"}, "aarch64", False),
        ({"target": "portable", "weight_bits": 7}, X86_NO_VNNI, "x86_64", False),
        ({"target": "avx2", "reduce_range": True}, X86_NO_VNNI, "x86_64", False),
        ({}, X86_NO_VNNI, "x86_64", False),  # a float file
        ({"target": "avx512_vnni", "weight_bits": 8}, set(), "x86_64", False),  # cannot tell
    ],
)
def test_warning_only_where_results_may_differ(
    quantization: dict, flags: set[str], machine: str, warns: bool
) -> None:
    message = target_warning(quantization, flags, machine)
    assert (message is not None) == warns
    if message:
        assert "no VNNI" in message and "--target portable" in message and "\n" not in message


@pytest.fixture(scope="module")
def vnni_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's int8 file with all 8 bits, for x86 with VNNI."""
    if not HAS_EXPORT:
        pytest.skip("needs the [export] extra")
    from medvit_edge.export import ExportConfig, export

    output = tmp_path_factory.mktemp("vnni") / "onnx"
    export(
        ExportConfig(run_dir=tiny_run, output=output, int8=True, target="avx512_vnni", allow_degraded=True)
    )
    return output


def _pretend_cpu(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(int8_target, "cpu_flags", lambda: flags)
    monkeypatch.setattr(int8_target.platform, "machine", lambda: "x86_64")


class _Records(logging.Handler):
    """The int8 target's log records, whatever the CLI or pytest did to the loggers above it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow
def test_the_target_is_recorded_and_checked_at_load(
    vnni_export: Path, tiny_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eight = Classifier.load(vnni_export / "model.int8.onnx").metadata.quantization
    seven = Classifier.load(tiny_export / "model.int8.onnx").metadata.quantization
    assert (eight["target"], eight["weight_bits"], eight["reduce_range"]) == ("avx512_vnni", 8, False)
    assert (seven["target"], seven["weight_bits"], seven["reduce_range"]) == ("portable", 7, True)
    logger, captured = logging.getLogger("medvit_edge.runtime.int8_target"), _Records()
    monkeypatch.setattr(logger, "handlers", [captured])
    monkeypatch.setattr(logger, "level", logging.WARNING)
    _pretend_cpu(monkeypatch, X86_NO_VNNI)
    Classifier.load(tiny_export / "model.int8.onnx")
    Classifier.load(tiny_export / "model.onnx")
    assert captured.records == []
    Classifier.load(vnni_export / "model.int8.onnx")
    assert len(captured.records) == 1
    assert "model.int8.onnx: int8 target avx512_vnni" in captured.records[0].getMessage()
    _pretend_cpu(monkeypatch, X86_VNNI)
    Classifier.load(vnni_export / "model.int8.onnx")
    assert len(captured.records) == 1


@pytest.mark.slow
def test_infer_prints_one_warning_line(
    vnni_export: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend_cpu(monkeypatch, X86_NO_VNNI)
    image = next((phantom_dir / "test").rglob("*.png"))
    result = CliRunner().invoke(cli.main, ["infer", str(vnni_export / "model.int8.onnx"), str(image)])
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "no VNNI" in line]
    assert len(warnings) == 1 and "re-export with --target portable" in warnings[0]


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64" or host_kind() != "x86-vnni",
    reason="needs qemu-x86_64 (user mode) on an x86 host with VNNI",
)
def test_on_a_cpu_without_vnni_only_the_portable_file_stays_right(
    vnni_export: Path, tiny_export: Path
) -> None:
    """The real thing: `check` under an emulated Haswell (AVX2, no VNNI), where onnxruntime's
    u8 x s8 kernel is vpmaddubsw. The 8-bit file's golden outputs (made here, with VNNI) are not
    reproduced; the portable file's are."""

    def emulated_check(folder: Path) -> dict:
        command = [QEMU, "-cpu", "Haswell", sys.executable, "-m", "medvit_edge.cli", "check", "--json"]
        done = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=600)
        return {"exit": done.returncode, **json.loads(done.stdout)}

    eight = emulated_check(vnni_export)
    results = {v["variant"]: v for v in eight["variants"]}
    assert eight["exit"] == 1 and results["int8-dynamic"]["result"] == "disagree"
    assert results["fp32"]["result"] == "agree"
    portable = emulated_check(tiny_export)
    assert portable["exit"] == 0 and all(v["result"] == "agree" for v in portable["variants"])
    # what is left for 7 bits is float rounding, far below the saturation of 8 bits
    drift = {v["variant"]: v for v in portable["variants"]}["int8-dynamic"]["max_abs_diff"]
    assert drift < results["int8-dynamic"]["max_abs_diff"] / 4

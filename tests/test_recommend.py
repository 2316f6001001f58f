"""Pick the fastest: export times every passed variant and recommends one, `info` shows it, `infer
RUN_DIR` runs it where the ISA matches; the machine line names the ISA."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli, system
from medvit_edge.inference.command import resolve_model_path
from medvit_edge.runtime import recommend
from medvit_edge.runtime.manifest import Manifest, Recommendation, Validation, VariantRecord
from medvit_edge.runtime.variants import DEPLOY_PREFERENCE, VARIANTS
from tests.conftest import needs_export


@needs_export
def test_export_times_each_passed_variant_and_recommends_the_fastest_eligible(tiny_export: Path) -> None:
    manifest = Manifest.read(tiny_export)
    assert manifest is not None and manifest.recommended is not None
    for record in manifest.variants:
        assert (record.latency_ms is not None) == (record.status == "passed"), record.file
    eligible = [record for record in manifest.variants if recommend.eligible(record)]
    fastest = min(eligible, key=lambda record: record.latency_ms)  # type: ignore[arg-type, return-value]
    chosen = manifest.recommended
    assert (chosen.file, chosen.variant, chosen.latency_ms) == (
        fastest.file,
        fastest.variant,
        fastest.latency_ms,
    )
    assert chosen.isa == tuple(system.cpu_isa()) and chosen.machine == system.machine_line()
    assert chosen.runs == recommend.LATENCY_RUNS


def _record(variant: str, status: str = "passed", accuracy: float | None = 0.9) -> VariantRecord:
    row = VARIANTS[variant]
    validation = Validation(8, 0.0, 1.0, 0, row.tolerance.to_dict(), accuracy=accuracy)
    return VariantRecord(row.file_name, variant, status, "0" * 64, 1, 0.0, validation)  # type: ignore[arg-type]


def test_a_lower_precision_variant_is_preferred_only_when_its_accuracy_guard_passed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    times = {"model.onnx": 30.0, "model.fp16.onnx": 40.0, "model.int8.onnx": 10.0, "model.int8.raw.onnx": 5.0}
    monkeypatch.setattr(recommend, "measure_ms", lambda path, runs: times[path.name])
    guarded = [_record("fp32"), _record("fp16"), _record("int8-dynamic"), _record("int8-dynamic-raw")]
    measured, chosen = recommend.recommend(tmp_path, guarded)
    assert chosen is not None and chosen.variant == "int8-dynamic"  # the raw twin is faster, never picked
    assert [record.latency_ms for record in measured] == [30.0, 40.0, 10.0, 5.0]
    unguarded = [_record("fp32"), _record("int8-dynamic", accuracy=None)]  # unlabelled validation
    assert recommend.recommend(tmp_path, unguarded)[1].variant == "fp32"  # type: ignore[union-attr]
    failed = [_record("fp32"), _record("int8-dynamic", status="failed")]
    measured, chosen = recommend.recommend(tmp_path, failed)
    assert chosen.variant == "fp32" and measured[1].latency_ms is None  # type: ignore[union-attr]
    assert recommend.recommend(tmp_path, [_record("fp32", status="failed")])[1] is None
    tools = [name for name, row in VARIANTS.items() if not row.deployable]  # explain: a tool
    for name in tools:
        times[VARIANTS[name].file_name] = 1.0
        picked = recommend.recommend(tmp_path, [_record("fp32"), _record(name)])[1]
        assert picked.variant == "fp32", name  # type: ignore[union-attr]


def _copy(folder: Path, target: Path, recommended: Recommendation | None) -> Path:
    shutil.copytree(folder, target)
    manifest = Manifest.read(target)
    assert manifest is not None
    dataclasses.replace(manifest, recommended=recommended).write(target)
    return target


@needs_export
def test_infer_runs_the_recommended_file_only_where_the_isa_matches(
    tiny_export: Path, tmp_path: Path
) -> None:
    preferred = resolve_model_path(_copy(tiny_export, tmp_path / "none", None)).name  # DEPLOY_PREFERENCE
    manifest = Manifest.read(tiny_export)
    assert manifest is not None
    # plant a recommendation that DEPLOY_PREFERENCE alone would not pick
    other = next(r for r in manifest.variants if r.status == "passed" and r.file != preferred)
    isa = tuple(system.cpu_isa())
    planted = Recommendation(other.variant, other.file, 1.0, system.machine_line(), isa, 5)
    here = _copy(tiny_export, tmp_path / "here", planted)
    assert resolve_model_path(here) == here / other.file
    elsewhere = _copy(tiny_export, tmp_path / "other", dataclasses.replace(planted, isa=("AMX", "AVX-512")))
    assert resolve_model_path(elsewhere) == elsewhere / preferred
    gone = _copy(tiny_export, tmp_path / "gone", planted)
    (gone / other.file).unlink()
    assert resolve_model_path(gone) == gone / preferred


@needs_export
def test_a_recommended_file_whose_runtime_is_not_installed_is_passed_over(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenVINO IR recommended at export, deployed with the runtime-only install (no openvino)."""
    preferred = resolve_model_path(_copy(tiny_export, tmp_path / "none", None))
    isa = tuple(system.cpu_isa())
    planted = Recommendation("openvino-int8", "model.openvino-int8.xml", 1.0, "", isa, 5)
    folder = _copy(tiny_export, tmp_path / "ir", planted)
    manifest = Manifest.read(folder)
    record = dataclasses.replace(manifest.variants[0], file=planted.file, variant=planted.variant)  # type: ignore[union-attr]
    dataclasses.replace(manifest, variants=(*manifest.variants, record)).write(folder)  # type: ignore[union-attr]
    (folder / planted.file).write_text("<net/>")
    find_spec = recommend.importlib.util.find_spec
    for installed, expected in ((True, planted.file), (False, preferred.name)):

        def fake(name: str, spec: object = object() if installed else None) -> object:
            return spec if name == "openvino" else find_spec(name)

        monkeypatch.setattr(recommend.importlib.util, "find_spec", fake)
        assert resolve_model_path(folder) == folder / expected, installed


@needs_export
def test_a_manifest_from_before_the_recommendation_still_reads(tiny_export: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    data = json.loads((old / "manifest.json").read_text())
    data.pop("recommended")
    for entry in data["variants"]:
        entry.pop("latency_ms")
    (old / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.read(old)
    assert manifest is not None and manifest.recommended is None
    passed = {entry.file for entry in manifest.variants if entry.status == "passed"}
    # the preference order, among files that passed (a freshly trained tiny int8 may fail)
    first = next(VARIANTS[v].file_name for v in DEPLOY_PREFERENCE if VARIANTS[v].file_name in passed)
    assert resolve_model_path(old) == old / first
    result = CliRunner().invoke(cli.main, ["info", str(old / "model.onnx")])
    assert result.exit_code == 0 and "speed" not in result.output


@needs_export
def test_info_shows_the_recommendation(tiny_export: Path) -> None:
    manifest = Manifest.read(tiny_export)
    assert manifest is not None and manifest.recommended is not None
    result = CliRunner().invoke(cli.main, ["info", str(tiny_export)])
    assert result.exit_code == 0, result.output
    assert result.output.count("RECOMMENDED") == 1
    data = json.loads(CliRunner().invoke(cli.main, ["info", str(tiny_export), "--json"]).output)
    flagged = [m["file"] for m in data["models"] if (m["speed"] or {}).get("recommended")]
    assert [Path(f).name for f in flagged] == [manifest.recommended.file]


CPUINFO = {
    # Sapphire Rapids (AMX), Ice Lake server (AVX-512 VNNI, no AMX), Haswell (AVX2 only), Zen 4
    "amx": "avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8",
    "vnni": "avx2 fma avx512f avx512_vnni",
    "avx2": "sse4_2 avx avx2 fma",
    "zen4": "avx2 fma avx512f avx512_vnni avx512_bf16",
}


@pytest.mark.parametrize(
    "kind, isa",
    [
        ("amx", ["AMX", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "BF16", "FMA"]),
        ("vnni", ["AVX-512", "AVX-512 VNNI", "FMA"]),
        ("avx2", ["AVX2", "FMA"]),
        ("zen4", ["AVX-512", "AVX-512 VNNI", "BF16", "FMA"]),
    ],
)
def test_the_machine_line_names_the_isa(monkeypatch: pytest.MonkeyPatch, kind: str, isa: list[str]) -> None:
    monkeypatch.setattr(system, "_cpuinfo", lambda: f"model name\t: Test CPU\nflags\t\t: {CPUINFO[kind]}\n")
    assert system.cpu_isa() == isa
    assert system.machine_line().startswith(f"Test CPU ({', '.join(isa)})")

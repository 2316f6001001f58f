"""Governance metadata: model name, version, intended use, contraindications, notice and licence
from the run's model card, in every file (ONNX model_version and doc_string too), and the
exported folder's own model card."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.runtime.metadata import GOVERNANCE_KEYS, RESEARCH_NOTICE, ModelMetadata
from medvit_edge.runtime.preprocess import PreprocessSpec

from .conftest import needs_export


def _session_meta(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()


def test_metadata_round_trip_and_old_files() -> None:
    metadata = ModelMetadata(
        labels=("a", "b"),
        preprocess=PreprocessSpec(size=32, resize_size=32),
        variant="fp32",
        model_name="busi-vitl",
        model_version="4",
        intended_use="research: triage\nof ultrasound",
        contraindications="diagnosis",
        notice=RESEARCH_NOTICE,
        license="apache-2.0",
    )
    props = metadata.to_props()
    assert {key: props[key] for key in GOVERNANCE_KEYS} == {
        "model_name": "busi-vitl",
        "model_version": "4",
        "intended_use": "research: triage\nof ultrasound",
        "contraindications": "diagnosis",
        "notice": RESEARCH_NOTICE,
        "license": "apache-2.0",
    }
    assert ModelMetadata.from_props(props) == metadata
    old = {key: value for key, value in props.items() if key not in GOVERNANCE_KEYS}
    assert all(getattr(ModelMetadata.from_props(old), key) == "" for key in GOVERNANCE_KEYS)


@pytest.mark.slow
def test_every_file_carries_the_card(tiny_run: Path, tiny_export: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(tiny_run / "README.md").data
    for path in sorted(tiny_export.glob("*.onnx")):
        meta = _session_meta(path)
        props = meta.custom_metadata_map
        assert props["model_name"] == card.model_name == tiny_run.name
        assert props["intended_use"] == card.intended_use
        assert props["contraindications"] == card.contraindications
        assert props["license"] == card.license and props["notice"] == RESEARCH_NOTICE
        assert props["model_version"] == "1" and meta.version == 1  # ONNX model_version
        for text in (tiny_run.name, RESEARCH_NOTICE, card.intended_use, "benign, malignant, normal"):
            assert text in meta.description  # ONNX doc_string


@pytest.mark.slow
def test_the_exported_folder_has_its_own_model_card(tiny_export: Path) -> None:
    from huggingface_hub import ModelCard

    from medvit_edge.runtime.manifest import Manifest

    card = ModelCard.load(tiny_export / "README.md")
    manifest = Manifest.read(tiny_export)
    assert manifest is not None
    assert card.data.model_name == "run" and str(card.data.model_version) == "1"
    assert "Research use only" in card.data.intended_use and card.data.library_name == "onnx"
    assert RESEARCH_NOTICE in card.text and "## Contraindications" in card.text
    for record in manifest.variants:  # every file, with its checksum and where it runs
        assert f"`{record.file}`" in card.text and record.sha256 in card.text
    assert (
        "target portable (7-bit weights: right on every CPU" in card.text and "medvit-edge check" in card.text
    )


@needs_export
def test_governance_from_the_card_or_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medvit_edge.export.card import NOT_STATED, read_governance

    bare = read_governance(tmp_path)  # no card: says nothing was stated, still research only
    assert bare.model_name == tmp_path.name and bare.model_version == "1"
    assert bare.intended_use == NOT_STATED and "do not use for diagnosis" in bare.contraindications
    assert bare.notice == RESEARCH_NOTICE and bare.card == ""
    (tmp_path / "README.md").write_text(
        "---\nmodel_name: busi-vitl\nmodel_version: 7\nlicense: apache-2.0\n"
        "intended_use: triage research\ncontraindications: diagnosis\n---\n# card\n"
    )
    carded = read_governance(tmp_path)
    assert (carded.model_name, carded.model_version, carded.license) == ("busi-vitl", "7", "apache-2.0")
    assert (carded.intended_use, carded.contraindications) == ("triage research", "diagnosis")
    assert read_governance(tmp_path, model_version=9).model_version == "9"  # --model-version wins
    (tmp_path / "README.md").write_text("---\nmodel_name: [unclosed\n---\n")
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(logging.getLogger("medvit_edge.export.card"), "handlers", [handler])
    broken = read_governance(tmp_path)  # an unreadable card: a warning, and the defaults
    assert broken.intended_use == NOT_STATED and "unreadable model card" in warnings[0]


@pytest.mark.slow
def test_model_version_option(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "onnx"))
    result = CliRunner().invoke(
        cli.main, ["export", str(run), "--model-version", "12", "--golden-images", "1", "--allow-degraded"]
    )
    assert result.exit_code == 0, result.output
    meta = _session_meta(run / "onnx" / "model.onnx")
    assert meta.version == 12 and meta.custom_metadata_map["model_version"] == "12"
    assert "v12" in (run / "onnx" / "README.md").read_text()
    bad = CliRunner().invoke(cli.main, ["export", str(run), "--model-version", "0"])
    assert bad.exit_code == 2

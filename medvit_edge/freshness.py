"""Stale exports: a model file made from other weights than its run folder holds now.

Every exported file carries ``source_sha256``, the sha256 of the weights it came from. After a
retrain into the same run folder the ONNX files still describe the old model; anything that
runs them (infer, evaluate, check, benchmark, info) refuses them here with the fix, instead
of reporting the old model's results as the new one's. The run folder is the one that holds
the export folder (``RUN/onnx/model.onnx``) or the file itself; a deployed folder with no
weights beside it is never refused (there is nothing to compare with).
"""

from __future__ import annotations

import json
from pathlib import Path

from medvit_edge.checkpoint import weights_file, weights_sha256
from medvit_edge.errors import ModelLoadError, printable


class StaleExportError(ModelLoadError):
    """The model file was exported from other weights than the run folder's (exit 2)."""


def run_folder_of(model: Path) -> Path | None:
    """The run folder whose weights ``model`` was exported from, when it is beside it."""
    for folder in (model.parent.parent, model.parent):
        if weights_file(folder) is not None:
            return folder
    return None


def refuse_stale(model: Path, source_sha256: str) -> None:
    """Raise ``StaleExportError`` when ``model`` says it came from weights other than those of its
    run folder. Nothing to compare (no ``source_sha256``, no weights beside it): no check."""
    run = run_folder_of(model) if source_sha256 else None
    current = weights_sha256(run) if run is not None else None
    if run is None or current is None or current == source_sha256:
        return
    weights = weights_file(run)
    raise StaleExportError(
        f"{printable(model)}: stale export: made from other weights than {printable(weights)} "
        f"holds now (retrained since?); run `medvit-edge export {printable(run)}` again"
    )


def refuse_stale_file(model: Path) -> None:
    """``refuse_stale`` for a file not loaded yet: its ``source_sha256`` read from its ONNX
    metadata (the protobuf header, without onnxruntime) or, for an OpenVINO IR, its manifest."""
    if run_folder_of(model) is None:
        return  # the common deployed case: nothing read at all
    refuse_stale(model, _source_sha256(model))


def _source_sha256(model: Path) -> str:
    if model.suffix.lower() == ".onnx":
        from medvit_edge.info import metadata_props

        return metadata_props(model).get("source_sha256", "")
    try:
        data = json.loads((model.parent / "manifest.json").read_text(encoding="utf-8"))
        return str(data.get("source_sha256") or "") if isinstance(data, dict) else ""
    except (OSError, ValueError):
        return ""  # the loader reports an unreadable manifest

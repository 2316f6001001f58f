"""Stale exports: a model file made from other weights than its run folder holds now.

Every exported file carries ``source_sha256``, the sha256 of the weights it came from. After a
retrain into the same run folder the ONNX files still describe the old model; anything that
runs them (infer, evaluate, check, benchmark, info) refuses them here with the fix, instead
of reporting the old model's results as the new one's. The run folder is the one that holds
the export folder (``RUN/onnx/model.onnx``) or the file itself; a deployed folder with no
weights beside it is never refused (there is nothing to compare with).
"""

from __future__ import annotations

import os
from pathlib import Path

from medvit_edge.errors import ModelLoadError, printable
from medvit_edge.files import atomic_writer, sha256_file

DIGEST_SUFFIX = ".sha256"  # beside the weights, in `sha256sum -c` format
_digests: dict[tuple[str, int, int, int], str] = {}  # this process's hashes, by file identity


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


def weights_file(folder: Path) -> Path | None:
    """The run's weights: the first ``*.safetensors`` (what export hashes into ``source_sha256``)."""
    try:
        found = sorted(folder.glob("*.safetensors"))
    except OSError:
        return None
    return found[0] if found and found[0].is_file() else None


def weights_sha256(folder: Path) -> str | None:
    """The sha256 of the folder's weights (None without any), cheaply: from the digest file that
    training writes beside them (``model.safetensors.sha256``) while it is newer than the weights'
    last change, else hashed (and the digest rewritten, when the folder is writable).

    The weights' ctime is what a retrain, a copy over them or a rename changes and no user can
    set back, so a digest written after it still describes the file."""
    weights = weights_file(folder)
    if weights is None:
        return None
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_ino, stat.st_size, stat.st_ctime_ns)
    if key in _digests:
        return _digests[key]
    digest_path = weights.with_name(weights.name + DIGEST_SUFFIX)
    digest = _read_digest(digest_path, weights.name, stat.st_ctime_ns)
    if digest is None:
        digest = sha256_file(weights)
        write_weights_digest(weights, digest)
    _digests[key] = digest
    return digest


def write_weights_digest(weights: Path, digest: str | None = None) -> None:
    """``model.safetensors.sha256`` beside the weights (best effort: a read-only run folder is
    hashed again on each use)."""
    digest = digest or sha256_file(weights)
    try:
        with atomic_writer(weights.with_name(weights.name + DIGEST_SUFFIX)) as handle:
            handle.write(f"{digest}  {weights.name}\n")
    except OSError:
        pass


def _read_digest(path: Path, name: str, changed_ns: int) -> str | None:
    try:
        # strictly newer: a coarse clock can give a rewrite the digest's own timestamp
        if os.stat(path).st_mtime_ns <= changed_ns:
            return None  # the weights changed after the digest was written
        digest, _, listed = path.read_text(encoding="utf-8").strip().partition("  ")
    except (OSError, UnicodeDecodeError):
        return None
    ok = listed == name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    return digest if ok else None

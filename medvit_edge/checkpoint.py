"""A saved HF model folder (``save_pretrained`` + our ``preprocess.json``): the hand-over between
training and export. Both stages depend on this core module, not on each other."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medvit_edge.files import atomic_writer, sha256_file, write_json_atomic
from medvit_edge.preprocess import PreprocessSpec

PREPROCESS_FILE = "preprocess.json"
PROCESSOR_FILE = "preprocessor_config.json"
DIGEST_SUFFIX = ".sha256"  # beside the weights, in `sha256sum -c` format

_digests: dict[tuple[str, int, int, int], str] = {}  # this process's hashes, by file identity


def load_spec(name: str | Path, processor_class: Any = None) -> PreprocessSpec:
    """Our own ``preprocess.json`` if the folder has one, else the checkpoint's image processor
    (a hub id or a folder; needs transformers)."""
    local = Path(name)
    if (local / PREPROCESS_FILE).is_file():
        return PreprocessSpec.from_json((local / PREPROCESS_FILE).read_text(encoding="utf-8"))
    if processor_class is None:
        from transformers import AutoImageProcessor as processor_class
    processor = processor_class.from_pretrained(str(name))
    return PreprocessSpec.from_hf_processor_config(processor.to_dict())


def save_model(model: Any, spec: PreprocessSpec, folder: Path) -> None:
    """``save_pretrained`` (safetensors) + an image processor for HF users + our spec."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    weights = weights_file(folder)
    if weights is not None:  # what consumers of an export compare its source_sha256 with
        write_weights_digest(weights)
    save_processor_config(spec, folder)
    (folder / PREPROCESS_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")


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
        if os.stat(path).st_mtime_ns < changed_ns:
            return None  # the weights changed after the digest was written
        digest, _, listed = path.read_text(encoding="utf-8").strip().partition("  ")
    except (OSError, UnicodeDecodeError):
        return None
    ok = listed == name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    return digest if ok else None


def holds_model(folder: Path) -> bool:
    """A trained model (weights) or a training run's checkpoints are in the folder."""
    checkpoints = folder / "checkpoints"
    return weights_file(folder) is not None or (
        checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    )


def free_run_folder(folder: Path) -> Path:
    """``folder`` itself when it holds no model, else the first of ``folder-2``, ``folder-3``, ...
    that holds none (a new run never lands on an old one)."""
    candidate, number = folder, 1
    while holds_model(candidate):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


def save_processor_config(spec: PreprocessSpec, folder: Path) -> Path:
    """``preprocessor_config.json``: the transformers image processor that does what ``spec`` does
    (resize + centre crop, ``PreprocessSpec.to_hf_processor_config``), for ``AutoImageProcessor``,
    Optimum and ``pipeline``. Written as JSON: no transformers import, the class fills defaults."""
    path = folder / PROCESSOR_FILE
    write_json_atomic(path, spec.to_hf_processor_config())
    return path

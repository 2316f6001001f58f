"""A saved HF model folder (``save_pretrained`` + our ``preprocess.json``): the hand-over between
training and export. Both stages depend on this core module, not on each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medvit_edge.files import write_json_atomic
from medvit_edge.runtime.freshness import weights_file, write_weights_digest
from medvit_edge.runtime.preprocess import PreprocessSpec

PREPROCESS_FILE = "preprocess.json"
PROCESSOR_FILE = "preprocessor_config.json"


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

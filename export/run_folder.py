"""The run folder ``export`` reads, checked before any work: a damaged or hostile folder (a
truncated or lying safetensors header, thousands of labels, an absurd preprocessing size, a
config.json nested beyond reason) is one line naming the file and the problem (exit 2), never a
traceback from transformers, safetensors or json.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError
from medvit_edge.io.checkpoint import PREPROCESS_FILE, load_spec
from medvit_edge.runtime.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MAX_JSON_BYTES = 16 << 20  # a model config is kilobytes
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit for its JSON header
MAX_CLASSES = 1000  # labels become output columns; more is a damaged or hostile config
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
_ITEM_BYTES |= {"BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class RunFolderError(UserError):
    """The run folder cannot be exported as it is (exit 2, one line)."""


def check_run_folder(run_dir: Path) -> tuple[list[Path], int]:
    """(the safetensors files, the number of classes) once config.json and the weights' headers
    are sound and agree; ``RunFolderError`` otherwise."""
    weights = sorted(run_dir.glob("*.safetensors"))
    if not weights:
        raise RunFolderError(f"{run_dir}: no safetensors weights (only safetensors are loaded)")
    config = read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict):
        raise RunFolderError(f"{run_dir / CONFIG_FILE}: not a JSON object")
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not 2 <= len(id2label) <= MAX_CLASSES:
        count = len(id2label) if isinstance(id2label, dict) else "no"
        raise RunFolderError(
            f"{run_dir / CONFIG_FILE}: {count} labels in 'id2label'; a classifier needs 2 to {MAX_CLASSES}"
        )
    shapes: dict[str, list[int]] = {}
    for path in weights:
        shapes.update(safetensors_shapes(path))
    head = shapes.get("classifier.weight")
    if head is not None and (len(head) != 2 or head[0] != len(id2label)):
        raise RunFolderError(
            f"{run_dir / CONFIG_FILE}: lists {len(id2label)} labels, but the weights' classifier has "
            f"{head[0] if head else 0} outputs"
        )
    return weights, len(id2label)


def read_json(path: Path) -> Any:
    """A JSON file of reasonable size and depth, or a ``RunFolderError`` naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise RunFolderError(f"{path}: {size} bytes, more than a model file's {MAX_JSON_BYTES}")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunFolderError(f"{path}: missing; is this a trained run folder?") from exc
    except RecursionError as exc:
        raise RunFolderError(f"{path}: nested too deeply to be a model file") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{path}: not readable JSON ({_first_line(exc)})") from exc


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape, after checking the header against the file: its length, its JSON,
    and each tensor's byte range (inside the data, the size its dtype and shape need)."""
    try:
        with open(path, "rb") as handle:
            size = path.stat().st_size
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise RunFolderError(
                    f"{path}: truncated or damaged safetensors file (header length {length})"
                )
            header = json.loads(handle.read(length).decode("utf-8"))
    except RunFolderError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise RunFolderError(f"{path}: unreadable safetensors header ({_first_line(exc)})") from exc
    if not isinstance(header, dict):
        raise RunFolderError(f"{path}: the safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    return {
        name: _tensor_shape(path, name, entry, data_bytes)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _tensor_shape(path: Path, name: str, entry: Any, data_bytes: int) -> list[int]:
    bad = RunFolderError(
        f"{path}: tensor {name!r}: its header entry does not fit the file (truncated or forged)"
    )
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEM_BYTES:
        raise bad
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * _ITEM_BYTES[entry["dtype"]]:
        raise bad
    return shape


def load_model(run_dir: Path) -> Any:
    """``from_pretrained`` (safetensors only), with any failure one ``RunFolderError``."""
    from transformers import AutoModelForImageClassification

    try:
        return AutoModelForImageClassification.from_pretrained(run_dir, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise RunFolderError(f"{run_dir}: cannot load the model ({_first_line(exc)})") from exc
    except Exception as exc:  # safetensors' own error type is not importable everywhere
        raise RunFolderError(
            f"{run_dir}: cannot load the model ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def load_run_spec(run_dir: Path) -> PreprocessSpec:
    """The run's preprocessing (``preprocess.json`` or its image processor), checked."""
    where = run_dir / PREPROCESS_FILE
    if where.is_file():
        read_json(where)  # size and depth first
    try:
        return load_spec(run_dir)
    except RunFolderError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        name = where if where.is_file() else run_dir
        raise RunFolderError(f"{name}: unusable preprocessing ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def model_files(output: Path) -> dict[str, tuple[int, int, int]]:
    """The model files (every variant's name, an IR's weights) in the output folder now, by
    (inode, size, mtime): what an export that stops must leave as it found it."""
    from medvit_edge.runtime.variants import file_names

    found = {}
    for name in _model_names(file_names()):
        try:
            info = (output / name).stat()
        except OSError:
            continue
        found[name] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def remove_unvalidated(output: Path, before: dict[str, tuple[int, int, int]]) -> None:
    """Remove the model files an export that stopped wrote or changed."""
    now = model_files(output)
    for name, identity in now.items():
        if before.get(name) != identity:
            (output / name).unlink(missing_ok=True)
            logger.warning("removed %s: written by an export that did not finish", output / name)


def _model_names(names: list[str]) -> list[str]:
    return [*names, *(name[: -len(".xml")] + ".bin" for name in names if name.endswith(".xml"))]

"""Checksums, atomic writes and the manifest that sits beside exported models."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success.

    A crash or kill mid-write leaves either the old file or the complete new one, never half.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        newline = "" if "b" not in mode else None
        encoding = "utf-8" if "b" not in mode else None
        with os.fdopen(fd, mode, newline=newline, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes 0600 files; give the result the mode an ordinary new file would get
        os.chmod(temp_name, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        current = os.umask(0o022)
        os.umask(current)
    return current


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_writer(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{manifest_path}: unreadable manifest ({exc})") from exc


def manifest_entry(model_path: Path) -> dict[str, Any] | None:
    """The manifest's record of this file, if a manifest beside it lists it."""
    manifest = read_manifest(model_path.parent)
    if manifest is None:
        return None
    for entry in manifest.get("variants", []):
        if entry.get("file") == model_path.name:
            return entry
    return None

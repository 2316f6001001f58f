"""Checksums, atomic writes and the writable-folder check.

``atomic_writer`` leaves either the old file or the complete new one, never half, and removes
its temporary file on any exception. A signal that kills the process skips that clean-up, so
commands that write results run inside ``exit_on_signals``: SIGTERM and SIGHUP then raise
``Terminated`` (a ``SystemExit``) in the main thread and the clean-up runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medvit_edge.errors import UserError


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return sha256_handle(handle)


def sha256_handle(handle: IO[bytes], chunk_size: int = 1 << 20) -> str:
    """The sha256 of what is left to read from an open binary file, read in chunks."""
    digest = hashlib.sha256()
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


def check_writable_folder(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only sure test that results can be written
    there (``os.access`` is wrong on read-only mounts, ACLs and for root). A ``UserError`` naming
    ``what`` (the option and its value) otherwise, before any work is done."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medvit-edge.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from exc


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        current = os.umask(0o022)
        os.umask(current)
    return current


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_writer(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived; the exit status is 128 + the signal number, as a shell reports."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Terminated`` in the main thread while the block runs, so
    ``finally`` blocks and ``atomic_writer``'s clean-up run: a stopped run leaves no temporary
    file. A second signal during that clean-up is ignored, so it cannot cut the clean-up short.
    Outside the main thread (which alone may set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated(signum)

    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, handler) for signum in wanted}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

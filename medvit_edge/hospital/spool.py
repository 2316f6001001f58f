"""The DICOM node's durable spool: what was acknowledged stays on disk until it is delivered or
visibly parked, across crashes, power cuts and restarts.

Layout (one node per spool, enforced by an exclusive lock)::

    SPOOL/lock            held (flock) by the running node; holds its pid
    SPOOL/tmp/            writes in progress; emptied at start (a partial write is never used)
    SPOOL/incoming/       acknowledged instances waiting to be classified
    SPOOL/outbox/pacs/    SRs waiting for the destination (re-sent at start and periodically)
    SPOOL/outbox/folder/  SRs waiting to be copied to --dicom-out
    SPOOL/failed/         parked: NAME.dcm and NAME.reason.txt (why), for a person to look at

**Durable** means: the file's bytes and its folder entry are fsync'd before the call returns.
Every file enters its folder by ``rename`` from ``tmp/`` (same filesystem), so a folder only
ever lists complete files. The quota counts every byte under the spool; a write that would pass
it raises ``SpoolFull`` before anything is written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from medvit_edge.errors import UserError

TARGETS = ("pacs", "folder")
_FOLDERS = ("tmp", "incoming", "failed", *(f"outbox/{target}" for target in TARGETS))


class SpoolFull(OSError):
    """The spool's quota (or its disk) has no room for this file."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def default_spool(ae_title: str) -> Path:
    """A folder that survives restarts: ``$XDG_STATE_HOME/medvit-edge/spool/AE_TITLE``
    (``~/.local/state`` when unset). Never a temporary folder."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "medvit-edge" / "spool" / ae_title


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Open with ``Spool.open``; ``close`` releases the lock. Thread-safe."""

    def __init__(self, root: Path, quota: int, lock_fd: int):
        self.root, self.quota, self._lock_fd = root, quota, lock_fd
        self._mutex = threading.Lock()
        self._names = iter(range(1 << 62))
        self.used = sum(path.stat().st_size for path in self._files())

    @classmethod
    def open(cls, root: Path, quota: int) -> Spool:
        """Create the layout, take the lock (``UserError`` when another node holds it) and
        remove what a killed run left half-written in ``tmp/``."""
        try:
            for name in _FOLDERS:
                (root / name).mkdir(parents=True, exist_ok=True)
            fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UserError(f"--spool {root}: cannot use it ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"--spool {root}: another node (pid {holder}) is using this spool; two nodes cannot share one"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for leftover in (root / "tmp").iterdir():
            leftover.unlink(missing_ok=True)
        return cls(root, quota, fd)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def _files(self) -> Iterator[Path]:
        for name in _FOLDERS:
            yield from (path for path in (self.root / name).iterdir() if path.is_file())

    def write(self, folder: str, name: str, data: bytes) -> Path:
        """``folder/name`` with ``data``, durably; replaces a file of that name (a resend of the
        same SR). ``SpoolFull`` when the quota has no room; nothing is left behind on error."""
        target = self.root / folder / name
        with self._mutex:
            replaced = target.stat().st_size if target.exists() else 0
            if self.used - replaced + len(data) > self.quota:
                raise SpoolFull(f"spool {self.root} is full ({self.used} of {self.quota} bytes)")
            self.used += len(data)
            temp = self.root / "tmp" / f"{os.getpid()}-{next(self._names)}"
        try:
            _write_synced(temp, data)
            os.replace(temp, target)
            fsync_folder(target.parent)
        except OSError:
            temp.unlink(missing_ok=True)
            with self._mutex:
                self.used -= len(data)
            raise
        with self._mutex:
            self.used -= replaced
        return target

    def accept(self, data: bytes) -> Path:
        """An acknowledged instance: ``incoming/<n>.dcm``, on disk (file and entry) on return."""
        name = f"{time_name()}-{next(self._names)}.dcm"
        return self.write("incoming", name, data)

    def incoming(self) -> list[Path]:
        return sorted((self.root / "incoming").glob("*.dcm"))

    def outbox(self, target: str) -> list[Path]:
        return sorted((self.root / "outbox" / target).glob("*.dcm"))

    def remove(self, path: Path) -> None:
        """Delivered: the file goes, and its folder entry with it (fsync'd)."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        fsync_folder(path.parent)
        with self._mutex:
            self.used -= size

    def park(self, path: Path, reason: str) -> Path:
        """Move ``path`` to ``failed/`` with ``NAME.reason.txt`` beside it; the reason first, so a
        crash between the two leaves the file where it was (it is tried again)."""
        kind = path.parent.name  # incoming, pacs or folder: says what failed
        stem = f"{kind}-{path.stem}" if kind != "incoming" else path.stem
        note = (reason.rstrip("\n") + "\n").encode("utf-8", "replace")
        with self._mutex:
            self.used += len(note)
        temp = self.root / "tmp" / f"{os.getpid()}-{next(self._names)}"
        _write_synced(temp, note)
        os.replace(temp, self.root / "failed" / f"{stem}.reason.txt")
        target = self.root / "failed" / f"{stem}.dcm"
        os.replace(path, target)
        fsync_folder(target.parent)
        fsync_folder(path.parent)
        return target

    def failed(self) -> list[Path]:
        return sorted((self.root / "failed").glob("*.dcm"))


def time_name() -> str:
    """Names that sort in arrival order across restarts."""
    import time

    return f"{time.time_ns():020d}"


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)

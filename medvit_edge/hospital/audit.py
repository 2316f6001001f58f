"""The audit trail: one JSON line per prediction, append-only, each line on disk before it counts.

    with AuditLog.open("audit.jsonl") as audit:
        seq = audit.submit(record)   # returns at once while the buffer has room
        audit.wait(seq)              # returns once line ``seq`` (and every line before it) is durable
        audit.log(record)            # submit + wait: "acknowledged" = this call returned

**Acknowledged** means durable: a line counts as written only once ``write()`` returned for it
*and* ``fsync()`` of the file returned after that; ``wait``/``log`` return, and ``on_durable``
is called with the highest such sequence number, only then. A process killed at any moment
(SIGKILL included) therefore leaves every acknowledged line in the file; lines submitted but not
yet acknowledged may or may not be there. ``infer`` releases nothing (output file, SRs) until all
its lines are acknowledged; the DICOM node acknowledges a received instance's lines before it
sends the report.

**Never blocking prediction on a slow disk**: a writer thread does the ``write()`` + ``fsync()``
(several pending lines share one ``fsync``), so ``submit`` returns at once while fewer than
``capacity`` lines wait in the buffer. When the buffer is full, ``submit`` **waits for room**
(back-pressure) rather than dropping a line: an audit trail with holes is worse than a slower
prediction. How often that happened is counted in ``waits`` and logged once.

**Failure**: when the file cannot be written (disk full, removed volume), or the writer thread
meets any other exception (a bug, a failing ``on_durable`` callback), the failure is recorded,
every waiter wakes, and every later ``submit``, ``wait``, ``log`` and ``close`` raises
``AuditError`` (exit 2 for a command), so nothing is released unaudited and nothing waits
forever. ``close`` may be called any number of times, from any thread: the first one writes what
is pending and closes the file, the others wait for it and give the same outcome.

**The file** must be a regular file or not exist yet: a symbolic link (it could point anywhere)
and a FIFO, device or socket (opening a FIFO would block before the first prediction) are refused
with one line, before any work.

**Format** (one object per line, UTF-8): ``time`` (UTC, ISO 8601), ``source`` (``infer``,
``node``, or the embedding program's name), ``input`` (a path, or the SOPInstanceUID of an
instance received over the network), ``frame``, ``study_uid``, ``series_uid``, ``sop_uid``,
``input_sha256`` (of the very bytes that were decoded and classified: each input is read once),
``model`` (the model file's path, absolute), ``model_name`` and ``model_version`` (the governance
name and whole-number version the file's metadata carries, ``""`` for a file exported without
them), ``model_sha256`` (always: the runtime hashes the file it loads), ``variant``,
``exported`` (export time), ``label``, ``probabilities``, ``decision``, ``error``, ``software``
(package versions) and ``host``. The file is opened ``O_APPEND`` and never
rewritten; a line cut short by a machine crash (never by a killed process, whose ``write()``
completes) is ended with a newline on the next open, so later lines stay parseable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.system import software_versions

logger = logging.getLogger(__name__)

# Lines waiting for the disk before ``submit`` waits for room.
CAPACITY = 1024
SOFTWARE = ("medvit-edge", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "pydicom", "highdicom")


class AuditError(UserError):
    """The audit log cannot be written: the message names the file and the cause (exit 2)."""


@dataclass(frozen=True)
class ModelIdentity:
    """What made a prediction: in every audit line and every DICOM report."""

    name: str  # e.g. "busi-vitl/model.int8.onnx": the run folder and the file
    version: str  # the governance version (a whole number as text), "unversioned" when absent
    sha256: str
    variant: str
    path: str = ""  # the model file, absolute
    exported: str = ""  # export time, ISO 8601 UTC
    model_name: str = ""  # the governance name (model card)
    governance_version: str = ""  # the metadata's model_version as stored ("" when absent)

    @classmethod
    def of(cls, classifier: Any) -> ModelIdentity:
        """From a loaded ``Classifier`` (its sha256 is always set: the runtime hashes the file)."""
        path = Path(os.path.abspath(classifier.path))  # "onnx/x.onnx" keeps its folders
        name = f"{path.parent.parent.name}/{path.name}" if path.parent.name == "onnx" else path.name
        metadata = classifier.metadata
        governed = str(getattr(metadata, "model_version", "") or "")
        return cls(
            name=name,
            version=governed or "unversioned",
            sha256=classifier.sha256,
            variant=classifier.variant,
            path=str(path),
            exported=str(getattr(metadata, "created", "") or ""),
            model_name=str(getattr(metadata, "model_name", "") or ""),
            governance_version=governed,
        )


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prediction_record(
    row: PredictionRow, labels: list[str], model: ModelIdentity, source: str
) -> dict[str, Any]:
    """One audit line for one prediction row or error row."""
    probabilities = {label: row.probabilities.get(label) for label in labels} if row.ok else None
    return {
        "time": utc_now(),
        "source": source,
        "input": row.path or row.ids.sop_uid,
        "frame": "" if row.frame is None else row.frame,
        **row.ids.columns(),
        "input_sha256": row.input_sha256,
        "model": model.path or model.name,
        "model_name": model.model_name,
        "model_version": model.governance_version,
        "model_sha256": model.sha256,
        "variant": model.variant,
        "exported": model.exported,
        "label": row.label,
        "probabilities": probabilities,
        "decision": row.decision or None,
        "error": row.error,
        "software": _SOFTWARE,
        "host": _HOST,
    }


_SOFTWARE = software_versions(SOFTWARE)
_HOST = socket.gethostname()


class AuditLog:
    """Append-only JSONL with a bounded buffer and a writer thread (see the module docstring)."""

    def __init__(self, path: Path, capacity: int = CAPACITY, on_durable: Callable[[int], None] | None = None):
        self.path, self.capacity, self.on_durable = Path(path), max(capacity, 1), on_durable
        self.waits = 0  # times submit found the buffer full
        self._fd: int | None = _open_append(self.path)
        self._pending: deque[tuple[int, bytes]] = deque()
        self._submitted = self._durable = 0
        self._error: str | None = None
        self._closing = False
        self._lock = threading.Condition()
        self._close_lock = threading.Lock()  # one close at a time; later ones find it done
        self._thread = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: Path, **options: Any) -> AuditLog:
        """An ``AuditError`` (exit 2, one line) when the file cannot be opened for appending."""
        try:
            return cls(path, **options)
        except OSError as exc:
            raise AuditError(
                f"--audit-log {path}: cannot open it for appending ({exc.strerror or exc})"
            ) from exc

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def durable(self) -> int:
        """The sequence number of the last line known to be on disk (0: none yet)."""
        return self._durable

    def submit(self, record: dict[str, Any]) -> int:
        """Queue one line; returns its sequence number (1, 2, ...). Waits only while the buffer
        is full; raises ``AuditError`` once writing has failed or after ``close``."""
        line = _encode(record, self.path)
        with self._lock:
            if len(self._pending) >= self.capacity and not self._error:
                self.waits += 1
                if self.waits == 1:
                    logger.warning(
                        "audit log %s: the disk is slower than the predictions; waiting", self.path
                    )
            while len(self._pending) >= self.capacity and not self._error and not self._closing:
                self._lock.wait()
            self._raise_if_failed()
            if self._closing:
                raise AuditError(f"audit log {self.path}: already closed")
            self._submitted += 1
            self._pending.append((self._submitted, line))
            self._lock.notify_all()
            return self._submitted

    def wait(self, seq: int, timeout: float | None = None) -> bool:
        """Until line ``seq`` is durable (True) or ``timeout`` seconds passed (False); raises
        ``AuditError`` once writing has failed, or when the log closed without writing it."""
        with self._lock:
            self._lock.wait_for(lambda: self._settled(seq), timeout)
            if self._durable >= seq:
                return True
            self._raise_if_failed()
            if self._stopped:
                raise AuditError(f"audit log {self.path}: closed before line {seq} was written")
            return False

    def _settled(self, seq: int) -> bool:
        return self._durable >= seq or self._error is not None or self._stopped

    @property
    def _stopped(self) -> bool:
        """The writer is gone (closed, or died): nothing more will become durable."""
        return self._closing and not self._thread.is_alive()

    def log(self, record: dict[str, Any]) -> int:
        """Submit and wait until the line is durable: acknowledged when this returns."""
        seq = self.submit(record)
        self.wait(seq)
        return seq

    def close(self) -> None:
        """Write what is pending, stop the writer and close the file; raises ``AuditError`` when
        pending lines could not be written. Idempotent and safe from several threads."""
        with self._close_lock:
            with self._lock:
                self._closing = True
                self._lock.notify_all()
            self._thread.join()
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:  # NFS reports a failed write-back here
                    self._fail(f"closing it: {exc.strerror or exc}")
            with self._lock:
                self._lock.notify_all()  # waiters of lines that will never be written
                self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise AuditError(
                f"audit log {self.path}: cannot write it ({self._error}); nothing more is released"
            )

    def _fail(self, error: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
            self._lock.notify_all()
        logger.error("audit log %s: cannot write it (%s)", self.path, error)

    def _write_loop(self) -> None:
        """Any exception here is recorded and wakes every waiter: a dead writer must never leave
        ``wait``/``log``/``submit`` blocked, nor ``close`` returning as if all was written."""
        try:
            self._write_batches()
        except BaseException as exc:  # recorded, then every caller raises it
            self._fail(_reason(exc))
        finally:
            with self._lock:
                if self._pending and self._error is None:  # cannot happen; never drop silently
                    self._error = f"{len(self._pending)} line(s) left unwritten"
                self._lock.notify_all()

    def _write_batches(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._pending) or self._closing)
                if not self._pending:
                    return  # closing, and everything is written
                batch = list(self._pending)
                self._pending.clear()
                self._lock.notify_all()  # room in the buffer
            _write_all(self._fd, b"".join(line for _, line in batch))
            os.fsync(self._fd)  # type: ignore[arg-type]
            with self._lock:
                self._durable = batch[-1][0]
                self._lock.notify_all()
            if self.on_durable is not None:
                self.on_durable(self._durable)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


def _encode(record: dict[str, Any], path: Path) -> bytes:
    """One JSON line; a record that is not plain JSON (NaN, an object) is an ``AuditError``."""
    try:
        return (json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit log {path}: a line cannot be written as JSON ({exc})") from exc


def _open_append(path: Path) -> int:
    """Open for appending (created 0640 when new, its folder entry made durable too); a torn
    last line left by a machine crash is ended first. A symbolic link, FIFO, device or socket is
    an ``AuditError``: never followed, never blocked on."""
    created = not os.path.lexists(path)
    # read-write for the torn-line check; non-blocking so that a FIFO cannot hang the open
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o640)
    except OSError:
        _refuse_kind(path)
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(f"--audit-log {path}: is not a regular file (a device, pipe or socket)")
        os.set_blocking(fd, True)
        size = os.fstat(fd).st_size
        if size and _last_byte(fd, size) != b"\n":
            _write_all(fd, b"\n")
        os.fsync(fd)
        if created:
            _fsync_folder(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_audit_path(path: Path, output: Path | None = None) -> None:
    """Before any work: refuse an ``--audit-log`` that is a link, a directory, a FIFO or device,
    in a folder that does not exist, or the same file as ``output`` (the predictions would
    replace the audit history)."""
    _refuse_kind(path)
    if not path.parent.is_dir():
        raise AuditError(f"--audit-log {path}: folder {path.parent} does not exist")
    if output is not None and _same_path(path, output):
        raise AuditError(
            f"--audit-log {path}: is also the --output file; writing the predictions there would "
            "replace the audit history. Choose two files."
        )


def _same_path(first: Path, second: Path) -> bool:
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    return os.path.realpath(first) == os.path.realpath(second)


def _refuse_kind(path: Path) -> None:
    """The one-line reason a path that could not be opened is refused, when it is its kind."""
    if path.is_symlink():
        raise AuditError(f"--audit-log {path}: is a symbolic link; name a regular file")
    if path.is_dir():
        raise AuditError(f"--audit-log {path}: is a directory; name a file in it")
    if path.exists() and not path.is_file():
        raise AuditError(f"--audit-log {path}: is not a regular file (a device, pipe or socket)")


def _last_byte(fd: int, size: int) -> bytes:
    return os.pread(fd, 1, size - 1)


def _write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every system can open a folder; the file itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def audit_rows(
    log: AuditLog, rows: list[PredictionRow], labels: list[str], model: ModelIdentity, source: str
) -> None:
    """One line per row; returns once every line is acknowledged (``AuditError`` otherwise)."""
    last = 0
    for row in rows:
        last = log.submit(prediction_record(row, labels, model, source))
    if last:
        log.wait(last)

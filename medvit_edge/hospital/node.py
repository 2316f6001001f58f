"""``medvit-edge serve-dicom``: a DICOM node that classifies the ultrasound images sent to it.

A Storage SCP (pynetdicom) accepts C-STORE requests for every storage SOP class, in any
transfer syntax. For each instance received:

1. the handler writes the bytes as received to the **spool** (``SPOOL/incoming``, fsync'd) and
   puts it on a **bounded queue**; only then does it answer Success. When the queue stays full
   for ``accept_timeout`` seconds it answers ``0xA700`` (Refused: out of resources) and deletes
   the file, so the sender knows to retry: an instance is either acknowledged and spooled, or
   refused, never silently dropped;
2. one worker thread classifies the queued instances in order, through ``infer``'s own row
   builder (the same reader, preprocessing and model path as ``medvit-edge infer``); an instance
   whose Modality is not among ``modalities`` (default ``US``), that has no pixel data, that
   cannot be decoded, or whose SOP class is not an image is logged (a warning naming its SOP
   Instance UID, the calling AE and the cause) and audited, and the node goes on: **a bad
   instance never stops it**;
3. with an audit log, every prediction's line is acknowledged (on disk) before anything leaves;
4. the DICOM SR (``medvit_edge.hospital.dicom_sr``) is written to ``dicom_out`` when set, and sent to the
   **destination** AE (C-STORE SCU, one association kept open and re-opened when the peer closed
   it) when set; a send that still fails after ``send_retries`` tries leaves the SR in
   ``SPOOL/unsent`` and is logged as an error;
5. the spooled instance is deleted.

Instances left in ``SPOOL/incoming`` by a node that was killed are queued again at the next
start (with ``--spool DIR``; the default spool is a temporary folder removed at exit).

**Graceful shutdown** (SIGTERM or SIGINT, or ``stop()``): no new association is accepted;
associations in progress get ``grace`` seconds to finish (then are aborted: their unanswered
instances were not acknowledged); every queued instance is classified and its SR sent; then the
audit log is closed. ``NodeStats`` counts what happened.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError
from medvit_edge.hospital.audit import AuditError, AuditLog, ModelIdentity, prediction_record
from medvit_edge.inference.engine import EngineOptions, classify_files, resolve_model_path
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile
from medvit_edge.io.reader import DicomIds
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.images import ImageDecodeError
from medvit_edge.runtime.variants import Device

logger = logging.getLogger(__name__)

NODE_HINT = "serve-dicom needs pynetdicom and highdicom: pip install 'medvit-edge[dicom]'"
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000
_STOP = None


@dataclass
class NodeConfig:
    model: Path  # a model file, a run folder or its onnx/ folder (as infer)
    ae_title: str = "MEDVIT"
    port: int = 11112  # 0: any free port (tests)
    host: str = "0.0.0.0"
    destination: str | None = None  # "AE@host:port": where the SRs go (C-STORE)
    dicom_out: Path | None = None  # also keep each SR here
    audit_log: Path | None = None
    spool: Path | None = None  # default: a temporary folder, removed at exit
    queue_size: int = 64
    accept_timeout: float = 10.0  # how long a C-STORE waits for room in a full queue
    modalities: tuple[str, ...] = ("US",)
    allowed_aes: tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    send_retries: int = 3
    grace: float = 30.0  # seconds associations in progress get at shutdown
    device: Device = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@host:port`` (e.g. ``PACS@10.0.0.5:104``)."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title and host and port.isdigit()) or not 0 < int(port) < 65536:
            raise UserError(f"--destination {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
        if len(ae_title) > 16:
            raise UserError(f"--destination {text!r}: an AE title has at most 16 characters")
        return cls(ae_title, host, int(port))


@dataclass
class NodeStats:
    received: int = 0  # acknowledged and spooled
    refused: int = 0  # answered 0xA700: the queue stayed full
    reported: int = 0  # classified, SR made
    failed: int = 0  # logged and audited, no SR
    sent: int = 0
    unsent: int = 0  # SR kept in SPOOL/unsent
    failures: list[str] = field(default_factory=list)  # the last errors, for the log and tests


@dataclass(frozen=True)
class _Received:
    path: Path
    sop_uid: str
    calling_ae: str


class DicomNode:
    """The node; ``start()`` returns at once, ``stop()`` shuts it down gracefully."""

    def __init__(self, cfg: NodeConfig, classifier: Classifier | None = None):
        _require_dicom_network()
        if cfg.queue_size < 1:
            raise UserError(f"--queue-size must be at least 1, got {cfg.queue_size}")
        self.cfg = cfg
        self.destination = Destination.parse(cfg.destination) if cfg.destination else None
        if cfg.dicom_out is not None:
            from medvit_edge.hospital.dicom_sr import check_report_folder

            check_report_folder(cfg.dicom_out)
        self.classifier = classifier or Classifier.load(
            resolve_model_path(cfg.model, cfg.device), device=cfg.device, threads=cfg.threads
        )
        self.model = ModelIdentity.of(self.classifier)
        self.stats = NodeStats()
        self.audit = AuditLog.open(cfg.audit_log) if cfg.audit_log else None
        self._own_spool = cfg.spool is None
        self.spool = Path(tempfile.mkdtemp(prefix="medvit-spool-")) if cfg.spool is None else cfg.spool
        for sub in ("incoming", "unsent"):
            (self.spool / sub).mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[_Received | None] = queue.Queue(maxsize=cfg.queue_size)
        self._engine = EngineOptions(decode_workers=1, progress=False)
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._sender = _Sender(cfg.ae_title, self.destination, cfg.send_retries) if self.destination else None
        self._worker = threading.Thread(target=self._work, name="node-worker", daemon=True)
        self._server: Any = None
        self.port = cfg.port
        self.broken: str | None = None  # why the node refuses new instances (the audit log failed)

    def start(self) -> int:
        """Re-queue what a previous run left in the spool, start the worker and listen;
        returns the port listened on."""
        from pynetdicom import AE, evt

        leftovers = sorted((self.spool / "incoming").glob("*.dcm"))
        self._worker.start()
        for path in leftovers:
            self._queue.put(_Received(path, "", "(spooled by an earlier run)"))
        if leftovers:
            logger.info("re-queued %d instances left in %s", len(leftovers), self.spool / "incoming")
        ae = AE(ae_title=self.cfg.ae_title)
        _support_storage(ae)
        if self.cfg.allowed_aes:
            ae.require_calling_aet = list(self.cfg.allowed_aes)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        logger.info(
            "%s listening on %s:%d (model %s)", self.cfg.ae_title, self.cfg.host, self.port, self.model.name
        )
        return self.port

    def stop(self) -> NodeStats:
        """No new associations; let those in progress finish (``grace``); classify and send
        everything queued; close the audit log."""
        if self._server is not None:
            self._server.shutdown()
            deadline = time.monotonic() + self.cfg.grace
            while self._server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for association in self._server.active_associations:
                association.abort()
            self._server = None
        if self._worker.is_alive():
            self._queue.put(_STOP)
            self._worker.join()
        if self._sender is not None:
            self._sender.close()
        if self.audit is not None:
            self.audit.close()
        if self._own_spool:
            shutil.rmtree(self.spool, ignore_errors=True)
        logger.info("stopped: %s", _describe(self.stats))
        return self.stats

    def _on_store(self, event: Any) -> int:
        """Spool and queue; Success only once the instance is on disk and queued."""
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.broken:
            logger.error("instance %s from %s: refused, %s", sop_uid, calling, self.broken)
            return OUT_OF_RESOURCES
        path = self.spool / "incoming" / f"{time.time_ns()}-{next(self._names)}.dcm"
        try:
            _write_durably(path, event.encoded_dataset())
        except OSError as exc:
            logger.error("instance %s from %s: cannot spool it (%s); refused", sop_uid, calling, exc)
            return OUT_OF_RESOURCES
        try:
            self._queue.put(_Received(path, sop_uid, calling), timeout=self.cfg.accept_timeout)
        except queue.Full:
            path.unlink(missing_ok=True)
            with self._lock:
                self.stats.refused += 1
            logger.warning(
                "instance %s from %s: queue full; refused (the sender may retry)", sop_uid, calling
            )
            return OUT_OF_RESOURCES
        with self._lock:
            self.stats.received += 1
        return SUCCESS

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._process(item)
            except AuditError as exc:  # nothing leaves unaudited: refuse what comes next
                self.broken = str(exc)
                self._failed(item, str(exc), audited=True)
            except Exception as exc:  # a bug on one instance must never stop the node
                logger.exception("instance %s: unexpected %s", item.sop_uid, type(exc).__name__)
                self._failed(item, f"unexpected {type(exc).__name__}: {exc}")
            finally:
                item.path.unlink(missing_ok=True)

    def _process(self, item: _Received) -> None:
        from medvit_edge.io.dicom import read_dicom_header

        try:
            header = read_dicom_header(item.path)
        except ImageDecodeError as exc:
            self._failed(item, str(exc).replace(str(item.path), "instance"))
            return
        modality = str(header.get("Modality", "") or "")
        if self.cfg.modalities and modality not in self.cfg.modalities:
            shown = modality or "none"
            self._failed(
                item,
                f"Modality {shown} is not one this node classifies ({', '.join(self.cfg.modalities)})",
            )
            return
        rows, _ = classify_files([InputFile(item.path)], self.classifier, self._engine, digest=True)
        for row in rows:
            row.path = ""  # the spool file means nothing outside: the SOP Instance UID names it
            row.error = row.error.replace(str(item.path), "instance")
        self._audit(rows)
        if not any(row.ok for row in rows):
            self._failed(item, rows[0].error if rows else "no frame", rows[0] if rows else None, audited=True)
            return
        self._report(item, header, rows)

    def _report(self, item: _Received, header: Any, rows: list[PredictionRow]) -> None:
        from medvit_edge.hospital.dicom_sr import ReportError, build_report, frame_results, write_report

        try:
            sr = build_report(
                header, frame_results(rows, self.classifier.labels), self.classifier.labels, self.model
            )
        except (ReportError, ValueError, TypeError, AttributeError) as exc:
            self._failed(item, f"no report: {exc}", rows[0], audited=True)
            return
        if self.cfg.dicom_out is not None:
            write_report(sr, self.cfg.dicom_out)
        sent = self._send(sr)
        labels = ", ".join(f"frame {r.frame}: {r.label}" for r in rows if r.ok)
        with self._lock:
            self.stats.reported += 1
        logger.info(
            "instance %s from %s: %s -> SR %s%s",
            rows[0].ids.sop_uid,
            item.calling_ae,
            labels,
            sr.SOPInstanceUID,
            sent,
        )

    def _send(self, sr: Any) -> str:
        if self._sender is None:
            return ""
        try:
            self._sender.send(sr)
        except ConnectionError as exc:
            from medvit_edge.hospital.dicom_sr import write_report

            kept = write_report(sr, self.spool / "unsent")
            with self._lock:
                self.stats.unsent += 1
            logger.error("SR %s not sent (%s); kept in %s", sr.SOPInstanceUID, exc, kept)
            return " (not sent)"
        with self._lock:
            self.stats.sent += 1
        return f" sent to {self._sender.destination.ae_title}"

    def _audit(self, rows: list[PredictionRow]) -> None:
        if self.audit is None or not rows:
            return
        last = 0
        for row in rows:
            last = self.audit.submit(prediction_record(row, self.classifier.labels, self.model, "node"))
        self.audit.wait(last)  # AuditError: the worker logs it per instance; nothing is sent

    def _failed(
        self, item: _Received, error: str, row: PredictionRow | None = None, audited: bool = False
    ) -> None:
        sop_uid = (row.ids.sop_uid if row is not None else "") or item.sop_uid
        message = f"instance {sop_uid or '(unknown)'} from {item.calling_ae}: {error}"
        if not audited and self.audit is not None and not self.broken:
            record = PredictionRow(path="", error=error, ids=DicomIds(sop_uid=sop_uid))
            try:
                self.audit.log(prediction_record(record, self.classifier.labels, self.model, "node"))
            except AuditError as exc:
                self.broken = str(exc)
        with self._lock:
            self.stats.failed += 1
            self.stats.failures = [*self.stats.failures[-99:], message]
        logger.warning("%s", message)


class _Sender:
    """C-STORE SCU to the destination: one association, re-opened when the peer closed it."""

    def __init__(self, ae_title: str, destination: Destination, retries: int):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

        self.destination, self.retries = destination, max(retries, 1)
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(
            ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.association: Any = None

    def send(self, dataset: Any) -> None:
        """``ConnectionError`` when every try failed."""
        problem = "no try"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(0.5 * 2**attempt, 5.0))
            if self.association is None or not self.association.is_established:
                target = self.destination
                self.association = self.ae.associate(target.host, target.port, ae_title=target.ae_title)
                if not self.association.is_established:
                    problem = f"cannot associate with {target.ae_title}@{target.host}:{target.port}"
                    continue
            status = self.association.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is not None and (code == SUCCESS or 0xB000 <= code <= 0xBFFF):  # success or warning
                return
            problem = "no answer" if code is None else f"status 0x{code:04X}"
            if code is None:
                self.association.abort()
        raise ConnectionError(f"{problem} after {self.retries} tries")

    def close(self) -> None:
        if self.association is not None and self.association.is_established:
            self.association.release()


def _require_dicom_network() -> None:
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise UserError(NODE_HINT) from exc


def _support_storage(ae: Any) -> None:
    """Every storage SOP class, every transfer syntax pynetdicom knows: what cannot be decoded
    is reported per instance, not refused at association time."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(stats: NodeStats) -> str:
    return (
        f"{stats.received} received, {stats.reported} reported, {stats.failed} failed, "
        f"{stats.refused} refused, {stats.sent} SRs sent, {stats.unsent} unsent"
    )


def serve(cfg: NodeConfig) -> NodeStats:
    """Run the node until SIGTERM or SIGINT, then stop it gracefully (``DicomNode.stop``)."""
    node = DicomNode(cfg)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        node.start()
        while not stop.wait(0.5):
            pass
        logger.info("stopping: finishing the instances received")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stats = node.stop()
    return stats

"""``medvit-edge serve-dicom``: a DICOM node that classifies the ultrasound images sent to it.

**Acknowledged = delivered or visibly parked.** For each C-STORE:

1. the instance is written to the durable spool (``medvit_edge.hospital.spool``: ``SPOOL/incoming``,
   file and folder entry fsync'd, entered by rename so a partial write is never classified)
   and queued; only then does the node answer Success. A spool over its quota, a full disk, a
   queue that stays full for ``accept_timeout`` seconds or a node in trouble (below) answer
   ``0xA700`` (Refused: out of resources): the sender keeps the instance and retries;
2. one worker classifies the queued instances in order through ``infer``'s row builder; the
   audit lines are on disk before anything leaves;
3. an instance that can never be classified (not a classified Modality, no pixel data,
   undecodable, no UIDs to reference) goes to ``SPOOL/failed/`` with ``NAME.reason.txt`` and an
   audit line; **a bad instance never stops the node**;
4. the SR (``medvit_edge.hospital.dicom_sr``, its UID derived from the source SOP Instance UID and the
   model) goes to ``SPOOL/outbox``; then the instance leaves ``incoming``. The delivery thread
   (``medvit_edge.hospital.node_sender``) sends it to the destination and copies it to ``--dicom-out``,
   retrying with backoff and re-sending at every start and every ``resend_interval`` seconds.

A **transient** failure (the audit log or the spool cannot be written, any ``OSError``) keeps
the instance in ``incoming`` and retries it with backoff; while it lasts the node answers new
C-STOREs with ``0xA700``. An unexpected error on one instance is retried twice, then parked.
At start, what ``incoming`` holds is classified again and the outbox is re-sent. A crash
between two steps repeats the step: the same SR UID replaces, never duplicates.

**Secure by default**: see ``medvit_edge.hospital.node_network`` (127.0.0.1 unless ``--host``, calling AE
allow-list required unless ``allow_any_ae``, called AE checked, peer allow-list, TLS, timeouts,
maximum PDU, associations and instance size). C-ECHO (Verification) is answered.

**Graceful shutdown** (SIGTERM/SIGINT or ``stop()``): no new association; those in progress get
``grace`` seconds; the queue is classified; one last delivery pass; the audit log is closed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError, printable
from medvit_edge.hospital.audit import AuditError, AuditLog, ModelIdentity, prediction_record
from medvit_edge.hospital.node_config import NodeConfig
from medvit_edge.hospital.node_network import (
    Limits,
    client_tls,
    make_ae,
    parse_peers,
    server_tls,
    start_server,
)
from medvit_edge.hospital.node_sender import Delivery, Destination, _Sender
from medvit_edge.hospital.spool import Spool, SpoolFull, default_spool
from medvit_edge.inference.engine import EngineOptions, classify_files, resolve_model_path
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile
from medvit_edge.io.reader import DicomIds
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.images import ImageDecodeError

logger = logging.getLogger(__name__)

NODE_HINT = "serve-dicom needs pynetdicom and highdicom: pip install 'medvit-edge[dicom]'"
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000
_STOP = None
_BUG_TRIES = 3

__all__ = ["Destination", "DicomNode", "NodeConfig", "NodeStats", "serve"]


@dataclass
class NodeStats:
    received: int = 0  # acknowledged and spooled
    refused: int = 0  # answered 0xA700
    reported: int = 0  # classified, SR in the outbox
    failed: int = 0  # parked in SPOOL/failed
    retried: int = 0  # transient failures retried
    sent: int = 0
    unsent: int = 0  # SRs still in the outbox at stop (re-sent at the next start)
    failures: list[str] = field(default_factory=list)  # the last errors, for the log and tests


@dataclass(frozen=True)
class _Received:
    path: Path
    sop_uid: str
    calling_ae: str


class _Transient(Exception):
    """Retry later: nothing about the instance is wrong."""


class DicomNode:
    """The node; ``start()`` returns at once, ``stop()`` shuts it down gracefully."""

    def __init__(self, cfg: NodeConfig, classifier: Classifier | None = None):
        _require_dicom_network()
        cfg.validate()
        self.cfg = cfg
        self.destination = Destination.parse(cfg.destination) if cfg.destination else None
        self._peers = parse_peers(cfg.allowed_peers)
        self._tls = server_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        if cfg.dicom_out is not None:
            from medvit_edge.hospital.dicom_sr import check_report_folder

            check_report_folder(cfg.dicom_out)
        self.classifier = classifier or Classifier.load(
            resolve_model_path(cfg.model, cfg.device), device=cfg.device, threads=cfg.threads
        )
        self.model = ModelIdentity.of(self.classifier)
        self.spool_dir = cfg.spool or default_spool(cfg.ae_title)
        self.spool = Spool.open(self.spool_dir, cfg.spool_quota_mb << 20)
        try:
            self.audit = AuditLog.open(cfg.audit_log) if cfg.audit_log else None
        except BaseException:
            self.spool.close()
            raise
        self.stats = NodeStats()
        self._queue: queue.Queue[_Received | None] = queue.Queue(maxsize=cfg.queue_size)
        self._engine = EngineOptions(decode_workers=1, progress=False)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        sender = None
        if self.destination is not None:
            tls = client_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
            sender = _Sender(cfg.ae_title, self.destination, (cfg.acse_timeout, cfg.dimse_timeout), tls)
        self.delivery = Delivery(self.spool, sender, cfg.dicom_out, cfg.resend_interval, cfg.max_backoff)
        self._worker = threading.Thread(target=self._work, name="node-worker", daemon=True)
        self._server: Any = None
        self.port = cfg.port
        self.broken: str | None = None  # why the node refuses new instances for now

    def limits(self) -> Limits:
        c = self.cfg
        return Limits(
            c.acse_timeout, c.dimse_timeout, c.network_timeout, c.max_pdu, c.max_associations,
            c.max_pending, c.max_instance_mb << 20,
        )  # fmt: skip

    def start(self) -> int:
        """Classify what an earlier run left, re-send its outbox, listen; returns the port."""
        from pynetdicom import evt

        self._worker.start()
        self.delivery.start()
        ae = make_ae(self.cfg.ae_title, self.limits())
        _support_storage(ae, self.cfg.sop_classes)
        if self.cfg.allowed_aes:
            ae.require_calling_aet = list(self.cfg.allowed_aes)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, _on_echo)]
        self._server = start_server(
            ae, self.cfg.host, self.cfg.port, self._tls, self._peers, self.limits(), handlers
        )
        self.port = self._server.server_address[1]
        logger.info(
            "%s listening on %s:%d%s (model %s, spool %s)",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            " with TLS" if self._tls else "",
            self.model.name,
            self.spool_dir,
        )
        return self.port

    def stop(self) -> NodeStats:
        """No new associations; let those in progress finish (``grace``); classify everything
        queued; one last delivery pass; close the audit log and release the spool."""
        if self._server is not None:
            self._server.shutdown()
            self._server.close_pending()
            deadline = time.monotonic() + self.cfg.grace
            # only real associations get the grace period: an idle connection has nothing to finish
            while time.monotonic() < deadline and any(
                a.is_established for a in self._server.active_associations
            ):
                time.sleep(0.05)
            for association in self._server.active_associations:
                association.abort()
            self._server = None
        self._stopping.set()
        while self._worker.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.2)
                break
            except queue.Full:  # a worker that stopped early takes nothing more
                continue
        self._worker.join()
        self.delivery.stop(flush=True)
        if self.audit is not None:
            with contextlib.suppress(AuditError):
                self.audit.close()
        self.stats.sent = self.delivery.stats.sent
        self.stats.failed += self.delivery.stats.parked
        self.stats.unsent = len(self.spool.outbox("pacs")) + len(self.spool.outbox("folder"))
        self.spool.close()
        logger.info("stopped: %s", _describe(self.stats))
        return self.stats

    def _on_store(self, event: Any) -> int:
        """Spool and queue; Success only once the instance is on disk and queued."""
        sop_uid = printable(event.request.AffectedSOPInstanceUID or "")
        calling = printable(str(event.assoc.requestor.ae_title).strip())
        refusal = self.broken
        if refusal is None:
            data = event.encoded_dataset()
            try:
                path = self.spool.accept(data)
            except SpoolFull as exc:
                refusal = str(exc)
            except OSError as exc:
                refusal = f"cannot spool it ({exc.strerror or exc})"
        if refusal is None:
            try:
                self._queue.put(_Received(path, sop_uid, calling), timeout=self.cfg.accept_timeout)
            except queue.Full:
                self.spool.remove(path)
                refusal = "queue full"
        with self._lock:
            if refusal is None:
                self.stats.received += 1
                return SUCCESS
            self.stats.refused += 1
        logger.warning("instance %s from %s: refused (%s); the sender may retry", sop_uid, calling, refusal)
        return OUT_OF_RESOURCES

    def _work(self) -> None:
        leftovers = self.spool.incoming()
        if leftovers:
            logger.info("classifying %d instances left in %s", len(leftovers), self.spool_dir / "incoming")
        for path in leftovers:
            if not self._handle(_Received(path, "", "(spooled by an earlier run)")):
                break
        while (item := self._queue.get()) is not _STOP:
            if not self._handle(item):
                break  # stopping during a transient failure: the rest stays in incoming

    def _handle(self, item: _Received) -> bool:
        """Process ``item`` until it is reported or parked; False when the node stops first."""
        tries, bugs = 0, 0
        while True:
            try:
                self._process(item)
                if self.broken is not None:
                    logger.warning("recovered from: %s", self.broken)
                    self.broken = None
                return True
            except (_Transient, OSError, AuditError) as exc:
                tries += 1
                self._trouble(item, exc, tries)
            except Exception as exc:  # a bug on one instance must never stop the node
                bugs += 1
                logger.exception("instance %s: unexpected %s", item.sop_uid, type(exc).__name__)
                if bugs >= _BUG_TRIES:
                    self._park(item, f"unexpected {type(exc).__name__}: {exc}", audited=False)
                    return True
            if self._stopping.wait(min(0.5 * 2**tries, self.cfg.max_backoff)):
                logger.error("instance %s kept in %s for the next start", item.sop_uid, item.path)
                return False

    def _trouble(self, item: _Received, exc: BaseException, tries: int) -> None:
        reason = printable(exc)
        if self.broken is None:
            logger.error("transient failure (%s): new instances are refused until it clears", reason)
        self.broken = reason
        with self._lock:
            self.stats.retried += 1
        if isinstance(exc, AuditError) and self.cfg.audit_log is not None:
            with contextlib.suppress(Exception):
                if self.audit is not None:
                    self.audit.close()
            self.audit = None
            with contextlib.suppress(AuditError, OSError):
                self.audit = AuditLog.open(self.cfg.audit_log)
        logger.debug("instance %s: try %d failed: %s", item.sop_uid, tries, reason)

    def _process(self, item: _Received) -> None:
        from medvit_edge.io.dicom import read_dicom_header

        if not item.path.exists():
            return  # a retry after the instance was already reported
        try:
            header = read_dicom_header(item.path)
        except ImageDecodeError as exc:
            self._park(item, str(exc).replace(str(item.path), "instance"))
            return
        item = _Received(
            item.path, printable(header.get("SOPInstanceUID", "") or item.sop_uid), item.calling_ae
        )
        modality = str(header.get("Modality", "") or "")
        if self.cfg.modalities and modality not in self.cfg.modalities:
            classified = ", ".join(self.cfg.modalities)
            self._park(
                item,
                f"Modality {printable(modality) or 'none'} is not one this node classifies ({classified})",
            )
            return
        rows, _ = classify_files([InputFile(item.path)], self.classifier, self._engine, digest=True)
        for row in rows:
            row.path = ""  # the spool file means nothing outside: the SOP Instance UID names it
            row.error = row.error.replace(str(item.path), "instance")
        self._audit(rows)
        if not any(row.ok for row in rows):
            self._park(item, rows[0].error if rows else "no frame", audited=True)
            return
        self._report(item, header, rows)

    def _report(self, item: _Received, header: Any, rows: list[PredictionRow]) -> None:
        from medvit_edge.hospital.dicom_sr import ReportError, build_report, encode_report, frame_results

        try:
            sr = build_report(
                header,
                frame_results(rows, self.classifier.labels),
                self.classifier.labels,
                self.model,
                uid_root=self.cfg.uid_root,
            )
            data = encode_report(sr)
        except (ReportError, ValueError, TypeError, AttributeError) as exc:
            self._park(item, f"no report: {exc}", audited=True)
            return
        name = f"{sr.SOPInstanceUID}.dcm"
        if self.destination is not None:
            self.spool.write("outbox/pacs", name, data)
        if self.cfg.dicom_out is not None:
            self.spool.write("outbox/folder", name, data)
        self.spool.remove(item.path)
        self.delivery.notify()
        with self._lock:
            self.stats.reported += 1
        labels = ", ".join(f"frame {r.frame}: {r.decision or r.label}" for r in rows if r.ok)
        logger.info(
            "instance %s from %s: %s -> SR %s", item.sop_uid, item.calling_ae, labels, sr.SOPInstanceUID
        )

    def _audit(self, rows: list[PredictionRow]) -> None:
        if self.cfg.audit_log is None or not rows:
            return
        if self.audit is None:
            raise _Transient(f"the audit log {self.cfg.audit_log} cannot be opened")
        last = 0
        for row in rows:
            last = self.audit.submit(prediction_record(row, self.classifier.labels, self.model, "node"))
        self.audit.wait(last)

    def _park(self, item: _Received, error: str, audited: bool = False) -> None:
        """The instance goes to ``failed/`` with its reason, after its audit line is on disk."""
        error = printable(error)
        message = f"instance {item.sop_uid or '(unknown)'} from {item.calling_ae}: {error}"
        if not audited and self.cfg.audit_log is not None:
            record = PredictionRow(path="", error=error, ids=DicomIds(sop_uid=item.sop_uid))
            if self.audit is None:
                raise _Transient(f"the audit log {self.cfg.audit_log} cannot be opened")
            self.audit.log(prediction_record(record, self.classifier.labels, self.model, "node"))
        parked = self.spool.park(item.path, message)
        with self._lock:
            self.stats.failed += 1
            self.stats.failures = [*self.stats.failures[-99:], message]
        logger.warning("%s (parked as %s)", message, parked.name)


def _on_echo(event: Any) -> int:
    logger.info("C-ECHO from %s", printable(str(event.assoc.requestor.ae_title).strip()))
    return SUCCESS


def _require_dicom_network() -> None:
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as exc:
        raise UserError(NODE_HINT) from exc


def _support_storage(ae: Any, sop_classes: tuple[str, ...]) -> None:
    """The image SOP classes the node classifies, in every transfer syntax pynetdicom knows
    (what cannot be decoded is parked per instance), and Verification (C-ECHO)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    for uid in sop_classes:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)


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

"""The DICOM node's outbox delivery: every SR in ``SPOOL/outbox`` reaches its target or is
visibly parked.

A delivery thread sends ``outbox/pacs`` to the destination AE (C-STORE SCU, one association
kept open) and copies ``outbox/folder`` to ``--dicom-out``. It runs at start (what an earlier
run left), whenever the worker adds an SR, and every ``resend_interval`` seconds. A transient
failure (no association, no answer, a disk error, status 0xA7xx "out of resources") keeps the SR
in the outbox and waits 1, 2, 4 ... up to ``max_backoff`` seconds before the next try; a PACS
that refuses an SR with a failure status moves it to ``SPOOL/failed/`` with the status as the
reason. The SR file is removed from the outbox only after the PACS answered Success (or a
warning) or the copy is on disk, so a crash at any point leads to a resend, which the PACS
takes as a replacement: the SR's SOP Instance UID is derived from the source and the model.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit_edge.errors import printable
from medvit_edge.files import atomic_writer
from medvit_edge.hospital.spool import Spool

logger = logging.getLogger(__name__)
SUCCESS = 0x0000


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@host:port`` (e.g. ``PACS@10.0.0.5:104``)."""
        from medvit_edge.errors import UserError
        from medvit_edge.hospital.node_network import check_ae_title

        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title and host and port.isdigit()) or not 0 < int(port) < 65536:
            raise UserError(f"--destination {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(check_ae_title("--destination", ae_title), host, int(port))


@dataclass
class DeliveryStats:
    sent: int = 0
    copied: int = 0
    parked: int = 0  # refused by the PACS: in failed/
    problems: list[str] = field(default_factory=list)


class Delivery:
    def __init__(
        self,
        spool: Spool,
        sender: _Sender | None,
        dicom_out: Path | None,
        resend_interval: float,
        max_backoff: float,
    ):
        self.spool, self.sender, self.dicom_out = spool, sender, dicom_out
        self.resend_interval, self.max_backoff = resend_interval, max_backoff
        self.stats = DeliveryStats()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._backoff = {"pacs": 0.0, "folder": 0.0}
        self._thread = threading.Thread(target=self._run, name="node-delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, flush: bool) -> None:
        """One last pass (``flush``), then stop; what is left stays in the outbox."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if flush:
            self._deliver_all(last=True)
        if self.sender is not None:
            self.sender.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._deliver_all()
            self._wake.wait(wait)
            self._wake.clear()

    def _deliver_all(self, last: bool = False) -> float:
        """Deliver what waits; returns how long to wait before the next pass."""
        waits = [self.resend_interval]
        for target, ready in (("pacs", self.sender is not None), ("folder", self.dicom_out is not None)):
            if not ready:
                continue
            for path in self.spool.outbox(target):
                if self._stop.is_set() and not last:
                    return 0.0
                if not self._deliver(target, path):
                    step = self._backoff[target]
                    self._backoff[target] = min(max(step * 2, 1.0), self.max_backoff)
                    waits.append(self._backoff[target])
                    break
                self._backoff[target] = 0.0
        return min(waits)

    def _deliver(self, target: str, path: Path) -> bool:
        """True when delivered or parked; False on a transient failure (kept, retried)."""
        try:
            if target == "folder":
                assert self.dicom_out is not None
                with atomic_writer(self.dicom_out / path.name, "wb") as handle, open(path, "rb") as src:
                    shutil.copyfileobj(src, handle)
                self.stats.copied += 1
            else:
                assert self.sender is not None
                refused = self.sender.send(path)
                if refused:
                    self.spool.park(path, f"the destination refused the SR: {refused}")
                    self.stats.parked += 1
                    logger.error(
                        "SR %s refused by the destination (%s); parked in failed/", path.stem, refused
                    )
                    return True
                self.stats.sent += 1
        except (ConnectionError, OSError) as exc:
            if self._backoff[target] == 0.0:  # once per outage, not once per try
                logger.error(
                    "SR %s not %s (%s); kept in %s and retried",
                    path.stem,
                    "sent" if target == "pacs" else f"copied to {self.dicom_out}",
                    printable(exc),
                    path.parent,
                )
            self.stats.problems = [*self.stats.problems[-99:], f"{path.stem}: {exc}"]
            return False
        self.spool.remove(path)
        return True


class _Sender:
    """C-STORE SCU to the destination: one association, re-opened when the peer closed it."""

    def __init__(
        self,
        ae_title: str,
        destination: Destination,
        timeouts: tuple[float, float],
        tls: ssl.SSLContext | None,
    ):
        """``timeouts``: (connect and ACSE, DIMSE and network), in seconds."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

        self.destination, self.tls = destination, tls
        self.ae = AE(ae_title=ae_title)
        self.ae.connection_timeout = self.ae.acse_timeout = timeouts[0]
        self.ae.dimse_timeout = self.ae.network_timeout = timeouts[1]
        self.ae.add_requested_context(
            ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.association: Any = None

    def send(self, path: Path) -> str:
        """ "" when the PACS stored it; the refusal (a failure status) otherwise.
        ``ConnectionError`` on a transient failure."""
        import pydicom

        dataset = pydicom.dcmread(path)
        target = self.destination
        if self.association is None or not self.association.is_established:
            tls_args = (self.tls, target.host) if self.tls is not None else None
            self.association = self.ae.associate(
                target.host, target.port, ae_title=target.ae_title, tls_args=tls_args
            )
            if not self.association.is_established:
                raise ConnectionError(f"cannot associate with {target.ae_title}@{target.host}:{target.port}")
        status = self.association.send_c_store(dataset)
        code = getattr(status, "Status", None)
        if code is None:
            self.association.abort()
            raise ConnectionError(f"no answer from {target.ae_title}")
        if code == SUCCESS or 0xB000 <= code <= 0xBFFF:  # success, or stored with a warning
            return ""
        if 0xA700 <= code <= 0xA7FF:
            raise ConnectionError(f"{target.ae_title} is out of resources (status 0x{code:04X})")
        return f"status 0x{code:04X}"

    def close(self) -> None:
        if self.association is not None and self.association.is_established:
            self.association.release()

"""The DICOM node's settings, with safe defaults, and their validation (one line, exit 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medvit_edge.errors import UserError
from medvit_edge.runtime.variants import Device

# What the node accepts: the ultrasound image classes and the secondary-capture classes an
# ultrasound workstation exports. Anything else is refused at association time.
IMAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
)
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass
class NodeConfig:
    model: Path  # a model file, a run folder or its onnx/ folder (as infer)
    ae_title: str = "MEDVIT"
    port: int = 11112  # 0: any free port (tests)
    host: str = "127.0.0.1"  # this machine only, unless told otherwise
    destination: str | None = None  # "AE@host:port": where the SRs go (C-STORE)
    dicom_out: Path | None = None  # also keep each SR here
    audit_log: Path | None = None
    spool: Path | None = None  # default: medvit_edge.hospital.spool.default_spool (durable)
    spool_quota_mb: int = 4096  # a spool this full refuses new instances (0xA700)
    queue_size: int = 64
    accept_timeout: float = 10.0  # how long a C-STORE waits for room in a full queue
    modalities: tuple[str, ...] = ("US",)
    allowed_aes: tuple[str, ...] = ()  # calling AE titles accepted
    allow_any_ae: bool = False  # needed to start without allowed_aes
    allowed_peers: tuple[str, ...] = ()  # addresses or networks; empty: any
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # peers must present a certificate signed by this CA
    acse_timeout: float = 10.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 65536
    max_associations: int = 8
    max_pending: int = 16  # connections without an association request yet
    max_instance_mb: int = 256
    resend_interval: float = 60.0  # the outbox is re-sent at least this often
    max_backoff: float = 60.0
    sop_classes: tuple[str, ...] = IMAGE_SOP_CLASSES
    uid_root: str | None = None  # the organisation's UID root for the SRs
    grace: float = 30.0  # seconds associations in progress get at shutdown
    device: Device = "auto"
    threads: int | None = None

    def validate(self) -> None:
        """``UserError`` naming the option for any setting that cannot work."""
        from medvit_edge.hospital.node_network import check_ae_title, parse_peers

        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: a TCP port is 0 to 65535")
        self.ae_title = check_ae_title("--ae-title", self.ae_title)
        self.allowed_aes = tuple(check_ae_title("--allow-ae", ae) for ae in self.allowed_aes)
        if not self.allowed_aes and not self.allow_any_ae:
            raise UserError(
                "serve-dicom needs --allow-ae TITLE (the scanners that may send) or, "
                "explicitly, --allow-any-ae"
            )
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")
        for name in ("queue_size", "max_pdu", "max_associations", "max_pending", "max_instance_mb"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("acse_timeout", "dimse_timeout", "network_timeout", "resend_interval", "max_backoff"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.spool_quota_mb < 1:
            raise UserError(f"--spool-quota-mb {self.spool_quota_mb}: must be at least 1")
        if self.max_pdu < 4096:
            raise UserError(f"--max-pdu {self.max_pdu}: at least 4096 bytes")
        parse_peers(self.allowed_peers)
        if self.uid_root is not None:
            self.uid_root = check_uid_root(self.uid_root)


def check_uid_root(root: str) -> str:
    """An organisation's UID root: dotted numbers without leading zeros, room for a suffix."""
    text = root.rstrip(".")
    if not _UID_ROOT.match(text) or len(text) > 40:
        raise UserError(
            f"--uid-root {root!r}: expected dotted numbers without leading zeros (e.g. 1.2.826.0.1.3680043), "
            "at most 40 characters"
        )
    return text + "."

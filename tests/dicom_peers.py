"""The DICOM node's peers on the loopback interface, played by pynetdicom: the modality that
sends, the PACS that receives the SRs, and the instances a hospital (or a hostile peer) sends."""

from __future__ import annotations

import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .hospital_dicom import clinical_dataset, malformed


class Pacs:
    """A Storage SCP on 127.0.0.1 that keeps every dataset it receives (``port`` 0: any)."""

    def __init__(self, port: int = 0, status: int = 0x0000) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.received: list[Any] = []
        self.status = status
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = self.server.server_address[1]

    def _store(self, event: Any) -> int:
        with self._lock:
            self.received.append(event.dataset)
        return self.status

    def uids(self) -> set[str]:
        with self._lock:
            return {str(sr.SOPInstanceUID) for sr in self.received}

    def close(self) -> None:
        self.server.shutdown()


def modality_ae(ae_title: str = "US_ROOM_1") -> Any:
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        UltrasoundImageStorage,
        Verification,
    )

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(UltrasoundImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def associate(
    port: int, ae_title: str = "US_ROOM_1", called: str = "MEDVIT", tls: ssl.SSLContext | None = None
) -> Any:
    ae = modality_ae(ae_title)
    return ae.associate(
        "127.0.0.1", port, ae_title=called, tls_args=(tls, "localhost") if tls is not None else None
    )


def send(port: int, datasets: list[Any], ae_title: str = "US_ROOM_1") -> list[int]:
    """Send every dataset over one association; the C-STORE status of each (-1: no answer)."""
    association = associate(port, ae_title)
    assert association.is_established
    statuses = []
    for ds in datasets:
        status = association.send_c_store(ds)
        statuses.append(int(status.Status) if "Status" in status else -1)
        if not association.is_established:
            break
    if association.is_established:
        association.release()
    return statuses


def instances(
    phantom_dir: Path, count: int, bad_every: int = 0, kinds: tuple[str, ...] = (), size: int = 64
) -> tuple[list[Any], set[str], set[str]]:
    """``count`` instances of one study; every ``bad_every``-th one malformed (``kinds`` in turn)."""
    from PIL import Image
    from pydicom.uid import generate_uid

    pngs = sorted((phantom_dir / "test").rglob("*.png"))
    study, series = generate_uid(), generate_uid()
    datasets, good, bad = [], set(), set()
    for number in range(count):
        frame = np.asarray(Image.open(pngs[number % len(pngs)]).convert("RGB").resize((size, size)))
        ds = clinical_dataset(frame, study, series, number + 1)
        if bad_every and number % bad_every == bad_every - 1:
            ds = malformed(kinds[(number // bad_every) % len(kinds)], ds)
            bad.add(str(ds.SOPInstanceUID))
        else:
            good.add(str(ds.SOPInstanceUID))
        datasets.append(ds)
    return datasets, good, bad


def referenced(sr: Any) -> str:
    """The source SOP Instance UID an SR reports on."""
    (item,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = item.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    return str(instance.ReferencedSOPInstanceUID)


def parked_sources(spool: Path) -> set[str]:
    """The SOP Instance UIDs of the instances parked in ``spool/failed``."""
    import pydicom

    return {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in (spool / "failed").glob("*.dcm")
    }


def make_ca(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate (CN localhost) and a client certificate it signed (openssl)."""
    files = {
        name: folder / f"{name}.pem"
        for name in ("ca", "ca-key", "server", "server-key", "client", "client-key")
    }

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    for name in ("server", "client"):
        csr = folder / f"{name}.csr"
        subject = f"/CN={'localhost' if name == 'server' else 'us-room-1'}"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", str(files[f"{name}-key"]), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
            "-CAcreateserial", "-days", "2", "-out", str(files[name]))  # fmt: skip
    return files

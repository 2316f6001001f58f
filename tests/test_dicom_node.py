"""The DICOM node on the loopback interface: pynetdicom plays the modality that sends and the
PACS that receives the SRs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import needs_export
from .hospital_dicom import clinical_dataset, malformed

pytest.importorskip("highdicom")
pynetdicom = pytest.importorskip("pynetdicom")

from pynetdicom import AE, StoragePresentationContexts, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ComprehensiveSRStorage,  # type: ignore[attr-defined]
    UltrasoundImageStorage,  # type: ignore[attr-defined]
)

from medvit_edge.hospital.node import DicomNode, NodeConfig  # noqa: E402

pytestmark = [needs_export]
REPO = Path(__file__).resolve().parents[1]
BAD_KINDS = ("no-pixels", "short-pixels", "not-an-image")


class Pacs:
    """A Storage SCP on 127.0.0.1 that keeps every dataset it receives."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = self.server.server_address[1]

    def _store(self, event: Any) -> int:
        with self._lock:
            self.received.append(event.dataset)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def pacs() -> Any:
    server = Pacs()
    yield server
    server.close()


def _modality(port: int, datasets: list[Any]) -> list[int]:
    """Send every dataset over one association; the C-STORE status of each."""
    ae = AE(ae_title="US_ROOM_1")
    ae.add_requested_context(UltrasoundImageStorage)
    ae.add_requested_context(ComprehensiveSRStorage)
    association = ae.associate("127.0.0.1", port, ae_title="MEDVIT")
    assert association.is_established
    statuses = [int(association.send_c_store(ds).Status) for ds in datasets]
    association.release()
    return statuses


def _instances(phantom_dir: Path, count: int, bad_every: int) -> tuple[list[Any], set[str], set[str]]:
    """``count`` 64x64 instances of one study; every ``bad_every``-th one malformed."""
    from PIL import Image
    from pydicom.uid import generate_uid

    pngs = sorted((phantom_dir / "test").rglob("*.png"))
    study, series = generate_uid(), generate_uid()
    datasets, good, bad = [], set(), set()
    for number in range(count):
        frame = np.asarray(Image.open(pngs[number % len(pngs)]).convert("RGB").resize((64, 64)))
        ds = clinical_dataset(frame, study, series, number + 1)
        if number % bad_every == bad_every - 1:
            ds = malformed(BAD_KINDS[(number // bad_every) % len(BAD_KINDS)], ds)
            bad.add(ds.SOPInstanceUID)
        else:
            good.add(ds.SOPInstanceUID)
        datasets.append(ds)
    return datasets, good, bad


def _referenced(sr: Any) -> str:
    (item,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = item.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    return str(instance.ReferencedSOPInstanceUID)


def test_200_instances_some_malformed_each_good_one_gets_one_sr(
    tiny_export: Path, phantom_dir: Path, pacs: Pacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datasets, good, bad = _instances(phantom_dir, 200, bad_every=10)
    cfg = NodeConfig(
        model=tiny_export,
        host="127.0.0.1",
        port=0,
        destination=f"PACS@127.0.0.1:{pacs.port}",
        audit_log=tmp_path / "audit.jsonl",
        queue_size=8,  # smaller than the burst: the handler waits for room, nothing is refused
    )
    node = DicomNode(cfg)
    port = node.start()
    with caplog.at_level(logging.INFO, logger="medvit_edge"):
        statuses = _modality(port, datasets)
        stats = node.stop()  # graceful: everything acknowledged is classified and sent first
    assert statuses == [0] * 200 and stats.received == 200 and stats.refused == 0
    assert (stats.reported, stats.failed, stats.sent, stats.unsent) == (len(good), len(bad), len(good), 0)
    references = Counter(_referenced(sr) for sr in pacs.received)
    assert set(references) == good and set(references.values()) == {1}  # one SR each, none for the bad
    assert {sr.SOPClassUID for sr in pacs.received} == {ComprehensiveSRStorage}
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for uid in bad:
        assert f"instance {uid} from US_ROOM_1" in warnings
    assert "no pixel data" in warnings and "cannot decode" in warnings and "Modality SR" in warnings
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert Counter(line["sop_uid"] for line in lines) == Counter({uid: 1 for uid in good | bad})
    assert {line["source"] for line in lines} == {"node"} and all(line["model_sha256"] for line in lines)


def test_a_full_queue_refuses_with_out_of_resources_and_the_sender_can_retry(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    datasets, _, _ = _instances(phantom_dir, 3, bad_every=1000)
    node = DicomNode(
        NodeConfig(
            model=tiny_export, host="127.0.0.1", port=0, queue_size=1, accept_timeout=0.2, dicom_out=tmp_path
        )
    )
    busy, release = threading.Event(), threading.Event()
    process = node._process

    def slow(item: Any) -> None:
        busy.set()
        release.wait(30)
        process(item)

    node._process = slow  # type: ignore[method-assign]
    port = node.start()
    first = _modality(port, datasets[:1])  # taken by the worker, which now waits
    assert busy.wait(10)
    assert _modality(port, datasets[1:]) == [0x0000, 0xA700]  # one queued, the next refused
    release.set()
    assert _modality(port, datasets[2:]) == [0x0000]  # the retry goes through
    stats = node.stop()
    assert first == [0] and (stats.received, stats.refused, stats.reported) == (3, 1, 3)
    assert len(list(tmp_path.glob("*.dcm"))) == 3


def test_instances_left_in_the_spool_are_classified_at_the_next_start(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    datasets, good, _ = _instances(phantom_dir, 2, bad_every=1000)
    spool, out = tmp_path / "spool", tmp_path / "sr"
    (spool / "incoming").mkdir(parents=True)
    for number, ds in enumerate(datasets):  # what a node killed before classifying them left
        ds.save_as(spool / "incoming" / f"{number}.dcm", enforce_file_format=True)
    node = DicomNode(NodeConfig(model=tiny_export, host="127.0.0.1", port=0, spool=spool, dicom_out=out))
    node.start()
    stats = node.stop()
    assert stats.reported == 2 and list((spool / "incoming").iterdir()) == []
    import highdicom as hd

    assert {_referenced(hd.sr.srread(path)) for path in out.iterdir()} == good


def test_serve_dicom_command_stops_gracefully_on_sigterm(
    tiny_export: Path, phantom_dir: Path, pacs: Pacs, tmp_path: Path
) -> None:
    datasets, good, _ = _instances(phantom_dir, 5, bad_every=1000)
    command = [
        sys.executable,
        "-m",
        "medvit_edge.cli",
        "serve-dicom",
        str(tiny_export),
        "--host",
        "127.0.0.1",
    ]
    command += ["--port", "0", "--destination", f"PACS@127.0.0.1:{pacs.port}"]
    command += ["--audit-log", str(tmp_path / "audit.jsonl")]
    node = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert node.stderr is not None
    port = 0
    deadline = time.monotonic() + 120
    while not port and time.monotonic() < deadline:
        line = node.stderr.readline()
        if "listening on 127.0.0.1:" in line:
            port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        assert line or node.poll() is None, "the node exited before listening"
    assert _modality(port, datasets) == [0] * 5
    os.kill(node.pid, signal.SIGTERM)
    stdout, stderr = node.communicate(timeout=120)
    assert node.returncode == 0, stderr
    assert "5 instances received, 5 reported, 0 failed" in stdout
    assert {_referenced(sr) for sr in pacs.received} == good
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 5

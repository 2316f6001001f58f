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

import pytest

from .conftest import needs_export
from .dicom_peers import Pacs, instances, parked_sources, referenced, send

pytest.importorskip("highdicom")
pynetdicom = pytest.importorskip("pynetdicom")

from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]  # noqa: E402

from medvit_edge.hospital.node import DicomNode, NodeConfig  # noqa: E402

pytestmark = [needs_export]
REPO = Path(__file__).resolve().parents[1]
BAD_KINDS = ("no-pixels", "short-pixels", "wrong-modality", "hostile-attributes")


@pytest.fixture()
def pacs() -> Any:
    server = Pacs()
    yield server
    server.close()


def node_config(model: Path, spool: Path, **options: Any) -> NodeConfig:
    options.setdefault("allowed_aes", ("US_ROOM_1",))
    return NodeConfig(model=model, host="127.0.0.1", port=0, spool=spool, **options)


def test_200_instances_some_malformed_each_good_one_gets_one_sr(
    tiny_export: Path, phantom_dir: Path, pacs: Pacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datasets, good, bad = instances(phantom_dir, 200, bad_every=10, kinds=BAD_KINDS)
    hostile = {str(ds.SOPInstanceUID) for ds in datasets[39::40]}  # classifiable: SR without them
    good, bad = good | hostile, bad - hostile
    spool = tmp_path / "spool"
    cfg = node_config(
        tiny_export,
        spool,
        destination=f"PACS@127.0.0.1:{pacs.port}",
        audit_log=tmp_path / "audit.jsonl",
        queue_size=8,  # smaller than the burst: the handler waits for room, nothing is refused
    )
    node = DicomNode(cfg)
    port = node.start()
    with caplog.at_level(logging.INFO, logger="medvit_edge"):
        statuses = send(port, datasets)
        stats = node.stop()  # graceful: everything acknowledged is classified and sent first
    assert statuses == [0] * 200 and stats.received == 200 and stats.refused == 0
    assert (stats.reported, stats.failed, stats.sent, stats.unsent) == (len(good), len(bad), len(good), 0)
    references = Counter(referenced(sr) for sr in pacs.received)
    assert set(references) == good and set(references.values()) == {1}  # one SR each, none for the bad
    assert {sr.SOPClassUID for sr in pacs.received} == {ComprehensiveSRStorage}
    assert parked_sources(spool) == bad  # every bad one parked, with its reason beside it
    reasons = [path.read_text() for path in (spool / "failed").glob("*.reason.txt")]
    assert len(reasons) == len(bad) and all("from US_ROOM_1" in reason for reason in reasons)
    assert not list((spool / "incoming").iterdir()) and not list((spool / "outbox" / "pacs").iterdir())
    log = "\n".join(r.getMessage() for r in caplog.records)
    for uid in bad:
        assert f"instance {uid} from US_ROOM_1" in log
    assert "no pixel data" in log and "cannot decode" in log and "Modality MR" in log
    assert "PatientBirthDate '31/12/1999' left out of the SR" in log
    assert "\nINFO forged" not in log and "\x1b" not in log  # control characters escaped
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert Counter(line["sop_uid"] for line in lines) == Counter({uid: 1 for uid in good | bad})
    assert {line["source"] for line in lines} == {"node"} and all(line["model_sha256"] for line in lines)


def test_a_full_queue_refuses_with_out_of_resources_and_the_sender_can_retry(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    datasets, _, _ = instances(phantom_dir, 3)
    out = tmp_path / "sr"
    cfg = node_config(tiny_export, tmp_path / "spool", queue_size=1, accept_timeout=0.2, dicom_out=out)
    node = DicomNode(cfg)
    busy, release = threading.Event(), threading.Event()
    process = node._process

    def slow(item: Any) -> None:
        busy.set()
        release.wait(30)
        process(item)

    node._process = slow  # type: ignore[method-assign]
    port = node.start()
    first = send(port, datasets[:1])  # taken by the worker, which now waits
    assert busy.wait(10)
    assert send(port, datasets[1:]) == [0x0000, 0xA700]  # one queued, the next refused
    release.set()
    assert send(port, datasets[2:]) == [0x0000]  # the retry goes through
    stats = node.stop()
    assert first == [0] and (stats.received, stats.refused, stats.reported) == (3, 1, 3)
    assert len(list(out.glob("*.dcm"))) == 3


def test_instances_left_in_the_spool_are_classified_at_the_next_start_and_partial_writes_never(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    datasets, good, _ = instances(phantom_dir, 2)
    spool, out = tmp_path / "spool", tmp_path / "sr"
    (spool / "incoming").mkdir(parents=True)
    (spool / "tmp").mkdir()
    for number, ds in enumerate(datasets):  # what a node killed before classifying them left
        ds.save_as(spool / "incoming" / f"{number}.dcm", enforce_file_format=True)
    (spool / "tmp" / "123-4").write_bytes(b"DICM" * 10)  # a spool write cut short by a kill
    node = DicomNode(node_config(tiny_export, spool, dicom_out=out))
    node.start()
    stats = node.stop()
    assert stats.reported == 2 and stats.failed == 0
    assert list((spool / "incoming").iterdir()) == [] and list((spool / "tmp").iterdir()) == []
    import highdicom as hd

    assert {referenced(hd.sr.srread(path)) for path in out.iterdir()} == good


def test_serve_dicom_command_stops_gracefully_on_sigterm(
    tiny_export: Path, phantom_dir: Path, pacs: Pacs, tmp_path: Path
) -> None:
    datasets, good, _ = instances(phantom_dir, 5)
    command = [sys.executable, "-m", "medvit_edge.cli", "serve-dicom", str(tiny_export)]
    command += ["--port", "0", "--destination", f"PACS@127.0.0.1:{pacs.port}", "--allow-ae", "US_ROOM_1"]
    command += ["--audit-log", str(tmp_path / "audit.jsonl"), "--spool", str(tmp_path / "spool")]
    node = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = wait_listening(node)
    assert send(port, datasets) == [0] * 5
    os.kill(node.pid, signal.SIGTERM)
    stdout, stderr = node.communicate(timeout=120)
    assert node.returncode == 0, stderr
    assert "5 instances received, 5 reported, 0 failed" in stdout
    assert {referenced(sr) for sr in pacs.received} == good
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 5


def wait_listening(node: subprocess.Popen[str]) -> int:
    """The port a ``serve-dicom`` subprocess listens on, from its log on stderr."""
    assert node.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = node.stderr.readline()
        if "listening on 127.0.0.1:" in line:
            return int(line.split("listening on 127.0.0.1:")[1].split()[0])
        assert line or node.poll() is None, "the node exited before listening"
    raise AssertionError("the node did not start listening")

"""Acknowledged = delivered or visibly parked: the DICOM node's spool across a full spool, a PACS
that is down, transient disk and audit failures, and SIGKILL at random points while a modality
sends (on loopback, pynetdicom as the modality and the PACS)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medvit_edge.errors import UserError
from medvit_edge.hospital.audit import AuditError, AuditLog

from .conftest import needs_export
from .dicom_peers import Pacs, associate, instances, parked_sources, referenced, send

pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

from medvit_edge.hospital.dicom_sr import report_uid
from medvit_edge.hospital.node import DicomNode, NodeConfig

pytestmark = [needs_export]
REPO = Path(__file__).resolve().parents[1]


def _config(model: Path, spool: Path, **options: Any) -> NodeConfig:
    return NodeConfig(
        model=model, port=0, spool=spool, allowed_aes=("US_ROOM_1",), resend_interval=0.3, **options
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _until(condition: Callable[[], bool], seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return met


def test_a_full_spool_refuses_with_out_of_resources_and_no_second_node_shares_it(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    node = DicomNode(_config(tiny_export, spool, spool_quota_mb=1, dicom_out=tmp_path / "sr"))
    release = threading.Event()
    process = node._process
    node._process = lambda item: (release.wait(60), process(item))[1]  # type: ignore[method-assign]
    port = node.start()
    with pytest.raises(UserError, match="another node"):
        DicomNode(_config(tiny_export, spool))
    datasets, _, _ = instances(phantom_dir, 8, size=256)  # 192 KiB each: 5 fit in 1 MiB
    statuses = send(port, datasets)
    accepted = statuses.count(0)
    assert 0 < accepted < 8 and statuses == [0] * accepted + [0xA700] * (8 - accepted)
    release.set()
    stats = node.stop()
    assert (stats.received, stats.refused, stats.reported) == (accepted, 8 - accepted, accepted)
    assert len(list((tmp_path / "sr").glob("*.dcm"))) == accepted


def test_srs_wait_for_a_pacs_that_is_down_across_a_restart_and_arrive_once(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    port, spool = _free_port(), tmp_path / "spool"
    datasets, good, _ = instances(phantom_dir, 4)
    first = DicomNode(_config(tiny_export, spool, destination=f"PACS@127.0.0.1:{port}"))
    assert send(first.start(), datasets[:2]) == [0, 0]
    stats = first.stop()  # the PACS never answered: the SRs stay in the durable outbox
    assert (stats.reported, stats.sent, stats.unsent) == (2, 0, 2)
    second = DicomNode(_config(tiny_export, spool, destination=f"PACS@127.0.0.1:{port}"))
    assert send(second.start(), datasets[2:]) == [0, 0]
    pacs = Pacs(port)  # the PACS comes back while the node runs
    try:
        assert _until(lambda: len(pacs.received) >= 4)
        stats = second.stop()
    finally:
        pacs.close()
    sha = second.model.sha256
    assert pacs.uids() == {report_uid(uid, sha) for uid in good} and len(pacs.received) == 4
    assert {referenced(sr) for sr in pacs.received} == good and stats.unsent == 0


def test_a_pacs_that_refuses_an_sr_gets_it_parked_with_the_status(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    pacs = Pacs(status=0xC000)
    try:
        node = DicomNode(_config(tiny_export, tmp_path / "spool", destination=f"PACS@127.0.0.1:{pacs.port}"))
        assert send(node.start(), instances(phantom_dir, 1)[0]) == [0]
        stats = node.stop()
    finally:
        pacs.close()
    (reason,) = (tmp_path / "spool" / "failed").glob("pacs-*.reason.txt")
    assert "status 0xC000" in reason.read_text() and stats.failed == 1 and stats.unsent == 0


def test_transient_audit_and_report_folder_failures_lose_nothing(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = {"audit": 2}
    wait = AuditLog.wait

    def failing_wait(self: AuditLog, seq: int, timeout: float | None = None) -> bool:
        if failures["audit"] > 0:  # the audit disk is full for the first two tries
            failures["audit"] -= 1
            raise AuditError("audit.jsonl: No space left on device")
        return wait(self, seq, timeout)

    monkeypatch.setattr(AuditLog, "wait", failing_wait)
    out, spool = tmp_path / "sr", tmp_path / "spool"
    pacs = Pacs()
    node = DicomNode(
        _config(
            tiny_export,
            spool,
            destination=f"PACS@127.0.0.1:{pacs.port}",
            dicom_out=out,
            audit_log=tmp_path / "audit.jsonl",
            max_backoff=0.5,
        )
    )
    port = node.start()
    out.rmdir()
    out.write_bytes(b"")  # --dicom-out is no longer a folder: every copy fails
    datasets, good, _ = instances(phantom_dir, 2)
    assert send(port, datasets[:1]) == [0]
    assert _until(lambda: len(pacs.received) == 1)  # the PACS still gets its SR
    assert len(list((spool / "outbox" / "folder").glob("*.dcm"))) == 1
    out.unlink()
    out.mkdir(exist_ok=True)  # the node's next retry may make the folder first (atomic_writer does)
    assert _until(lambda: len(list(out.glob("*.dcm"))) == 1)  # the copy arrives once it can
    assert _until(lambda: send(port, datasets[1:]) == [0], 30)
    stats = node.stop()
    pacs.close()
    assert stats.retried >= 2 and stats.reported == 2 and stats.failed == 0 and failures["audit"] == 0
    assert {referenced(sr) for sr in pacs.received} == good and len(list(out.glob("*.dcm"))) == 2
    assert not list((spool / "failed").iterdir()) and not list((spool / "incoming").iterdir())


def _modality(port: int, pending: list[Any], acknowledged: set[str]) -> None:
    """Send what is pending over one association until it breaks; note what was acknowledged."""
    try:
        association = associate(port)
        while association.is_established and pending:
            status = association.send_c_store(pending[0])
            if "Status" not in status or int(status.Status) != 0:
                break
            acknowledged.add(str(pending.pop(0).SOPInstanceUID))
            time.sleep(0.03)  # a scanner's pace: the kills land while it sends
        if association.is_established:
            association.release()
    except (OSError, RuntimeError, ValueError):
        pass  # the node died under it: what was not acknowledged is sent again


def _start(command: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    handle = open(log, "wb")  # noqa: SIM115  (the node writes to it until it dies)
    node = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    for _ in range(1200):
        text = log.read_text(errors="replace")
        if "listening on 127.0.0.1:" in text:
            return node, int(text.split("listening on 127.0.0.1:")[1].split()[0])
        assert node.poll() is None, text[-2000:]
        time.sleep(0.1)
    raise AssertionError("the node did not start listening")


def _diagnosis(spool: Path, logs: Path, missing: set[str], bad: set[str], pending: list) -> str:
    """What a failed durability run left where: enough to tell a lost instance from a slow one."""
    folders = {
        str(p.relative_to(spool)): sorted(c.name for c in p.iterdir()) for p in spool.rglob("*") if p.is_dir()
    }
    tails = {log.name: log.read_text(errors="replace")[-1500:] for log in sorted(logs.glob("node*.log"))}
    return (
        f"SRs missing at the PACS: {sorted(missing)}; bad not parked: "
        f"{sorted(bad - parked_sources(spool))}; never acknowledged: {len(pending)}\nspool: {folders}\n"
        + "\n".join(f"--- {name}\n{text}" for name, text in tails.items())
    )


def test_kill_9_at_random_points_while_a_modality_sends_loses_nothing_acknowledged(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(21)
    # 48 in every run; MEDVIT_KILL9_INSTANCES=200 is the full-size check (a few minutes)
    count = int(os.environ.get("MEDVIT_KILL9_INSTANCES", "48"))
    datasets, good, bad = instances(phantom_dir, count, bad_every=8, kinds=("no-pixels", "wrong-modality"))
    port, spool = _free_port(), tmp_path / "spool"
    command = [sys.executable, "-m", "medvit_edge.cli", "serve-dicom", str(tiny_export), "--port", "0"]
    command += ["--spool", str(spool), "--destination", f"PACS@127.0.0.1:{port}", "--allow-ae", "US_ROOM_1"]
    command += ["--resend-interval", "0.5", "--audit-log", str(tmp_path / "audit.jsonl")]
    pending, acknowledged = list(datasets), set()
    # one archive behind one port, restarted: an SR the first run delivered before its kill is
    # in the first PACS's store, not the second's (how fast the first node gets that far varies)
    first = Pacs(port)
    for round_number in range(3):  # PACS up, then down for two runs
        if round_number == 1:
            first.close()
        node, node_port = _start(command, tmp_path / f"node{round_number}.log")
        sender = threading.Thread(target=_modality, args=(node_port, pending, acknowledged))
        sender.start()
        time.sleep(rng.uniform(0.3, 2.5))
        node.kill()  # SIGKILL: no clean-up of any kind
        node.wait()
        sender.join()
    pacs = Pacs(port)  # up again for the last run, which takes whatever is left
    node, node_port = _start(command, tmp_path / "node3.log")
    for _ in range(100):
        if pending:
            _modality(node_port, pending, acknowledged)
    expected = {report_uid(uid, _sha(tiny_export)) for uid in good}
    finished = _until(lambda: expected <= first.uids() | pacs.uids() and parked_sources(spool) >= bad, 240)
    node.terminate()
    node.wait(120)
    pacs.close()
    delivered = first.uids() | pacs.uids()
    assert finished and acknowledged == good | bad, _diagnosis(
        spool, tmp_path, expected - delivered, bad, pending
    )
    srs_per_source: dict[str, set[str]] = defaultdict(set)
    for sr in [*first.received, *pacs.received]:
        srs_per_source[referenced(sr)].add(str(sr.SOPInstanceUID))
    assert set(srs_per_source) == good and all(len(uids) == 1 for uids in srs_per_source.values())
    assert parked_sources(spool) == bad  # the bad ones, parked with a reason; nothing else
    assert not list((spool / "incoming").iterdir()) and not list((spool / "outbox" / "pacs").iterdir())


def _sha(model_dir: Path) -> str:
    from medvit_edge.inference.command import resolve_model_path
    from medvit_edge.runtime.classifier import Classifier

    return str(Classifier.load(resolve_model_path(model_dir)).sha256)

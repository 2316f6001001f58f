"""The audit log: every acknowledged line survives a kill; a full buffer waits, never drops; a
failing disk stops releases; a torn last line is fenced off."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medvit_edge.hospital import audit as audit_module
from medvit_edge.hospital.audit import AuditError, AuditLog

REPO = Path(__file__).resolve().parents[1]

# Submits lines as fast as it can (the writer groups them under one fsync) and prints "ACK n" each
# time lines up to n become durable: the only moment the log says a line counts.
WRITER = """
import sys
from pathlib import Path
from medvit_edge.hospital.audit import AuditLog

def acknowledged(seq):
    sys.stdout.write(f"ACK {seq}\\n")
    sys.stdout.flush()

log = AuditLog(Path(sys.argv[1]), capacity=64, on_durable=acknowledged)
for i in range(1, 10**9):
    log.submit({"i": i, "input": f"scan-{i}.dcm", "label": "benign", "probabilities": {"benign": 0.9}})
"""


def test_every_acknowledged_line_is_on_disk_after_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for run in range(2):  # the second run appends to what the killed first one left
        before = len(path.read_text().splitlines()) if path.exists() else 0
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert child.stdout is not None
        acked = 0
        for line in child.stdout:
            acked = max(acked, int(line.split()[1]))
            if acked >= 300 * (run + 1):
                break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()  # acknowledgements printed before the kill landed
        acked = max([acked, *(int(line.split()[1]) for line in rest.splitlines() if line.startswith("ACK"))])
        assert child.returncode == -signal.SIGKILL
        lines = path.read_text().splitlines()[before:]
        records = [json.loads(line) for line in lines]  # a killed process leaves no torn line
        assert [r["i"] for r in records[:acked]] == list(range(1, acked + 1))
        assert len(records) >= acked


def test_a_full_buffer_makes_submit_wait_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_free = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        disk_free.wait(10)
        real_fsync(fd)

    log = AuditLog(tmp_path / "audit.jsonl", capacity=2)
    monkeypatch.setattr(audit_module.os, "fsync", slow_fsync)
    first = log.submit({"i": 1})
    while log._pending:  # the writer has taken line 1 and is stuck in fsync
        threading.Event().wait(0.01)
    log.submit({"i": 2})
    log.submit({"i": 3})  # the buffer (2) is full now
    third = threading.Thread(target=log.submit, args=({"i": 4},))
    third.start()
    third.join(0.3)
    assert third.is_alive() and log.durable < first  # waiting for room, not dropping the line
    disk_free.set()
    third.join(10)
    log.close()
    assert [json.loads(line)["i"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]
    assert log.waits == 1 and log.durable == 4


def test_a_failing_disk_raises_and_releases_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.log({"i": 1})

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_module.os, "write", full)
    with pytest.raises(AuditError, match="No space left on device"):
        log.log({"i": 2})
    with pytest.raises(AuditError, match="cannot write it"):
        log.submit({"i": 3})
    monkeypatch.undo()
    with pytest.raises(AuditError):
        log.close()
    assert [json.loads(line)["i"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == [1]


def test_a_torn_last_line_is_fenced_off_and_the_file_only_grows(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"i": 1}\n{"i": 2, "lab')  # a machine crash mid-write
    with AuditLog.open(path) as log:
        log.log({"i": 3})
    lines = path.read_text().splitlines()
    assert lines[:2] == ['{"i": 1}', '{"i": 2, "lab'] and json.loads(lines[2]) == {"i": 3}
    with pytest.raises(AuditError, match="--audit-log"):
        AuditLog.open(tmp_path / "no such folder" / "audit.jsonl")

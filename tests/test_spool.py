"""The DICOM node's spool on its own: a failed write leaves nothing a later start would classify,
the quota refuses before writing, one node per spool, parking keeps the reason beside the file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from medvit_edge.errors import UserError
from medvit_edge.hospital.spool import Spool, SpoolFull, default_spool


def test_a_write_that_fails_half_way_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.open(tmp_path / "spool", quota=1 << 20)
    kept = spool.accept(b"first")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the bytes were written, the disk is full
    with pytest.raises(OSError, match="No space"):
        spool.accept(b"x" * 1000)
    monkeypatch.undo()
    assert spool.incoming() == [kept] and list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert spool.used == len(b"first")
    spool.close()


def test_the_quota_refuses_before_writing_and_counts_what_leaves(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", quota=100)
    first = spool.accept(b"a" * 60)
    with pytest.raises(SpoolFull):
        spool.accept(b"b" * 60)
    assert spool.incoming() == [first]
    spool.remove(first)
    spool.accept(b"b" * 60)  # room again
    spool.close()


def test_one_node_per_spool_and_the_lock_goes_with_the_node(tmp_path: Path) -> None:
    first = Spool.open(tmp_path / "spool", quota=1 << 20)
    with pytest.raises(UserError, match=f"pid {os.getpid()}.*cannot share"):
        Spool.open(tmp_path / "spool", quota=1 << 20)
    first.close()
    Spool.open(tmp_path / "spool", quota=1 << 20).close()


def test_a_parked_file_keeps_its_reason_and_leftover_partial_writes_are_removed(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", quota=1 << 20)
    parked = spool.park(spool.accept(b"DICM"), "instance 1.2.3 from US_ROOM_1: no pixel data")
    assert spool.incoming() == [] and spool.failed() == [parked]
    assert parked.with_suffix(".reason.txt").read_text() == "instance 1.2.3 from US_ROOM_1: no pixel data\n"
    spool.close()
    (tmp_path / "spool" / "tmp" / "9-9").write_bytes(b"half")
    Spool.open(tmp_path / "spool", quota=1 << 20).close()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_the_default_spool_is_durable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_spool("MEDVIT") == tmp_path / "state" / "medvit-edge" / "spool" / "MEDVIT"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_spool("MEDVIT") == Path.home() / ".local" / "state" / "medvit-edge" / "spool" / "MEDVIT"

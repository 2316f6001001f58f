"""The audit log: every acknowledged line survives a kill; a full buffer waits, never drops; a
failing disk stops releases; a torn last line is fenced off."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medvit_edge import cli
from medvit_edge.hospital import audit as audit_module
from medvit_edge.hospital.audit import AuditError, AuditLog
from medvit_edge.inference import decoding as decoding_module
from medvit_edge.inference.decoding import decode_safely
from medvit_edge.io.inputs import InputFile
from medvit_edge.io.reader import read_file
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess

from .conftest import needs_export

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


# -- the contract holds whatever fails ----------------------------------------------------------


def _finishes(target: object, *args: object) -> list[BaseException]:
    """Runs ``target`` in a thread; the errors it raised. A hang is a failure, not a stuck suite."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"{target} never returned"
    return errors


def test_any_exception_in_the_writer_wakes_every_waiter_with_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.log({"i": 1})
    stuck = threading.Event()
    real_write_all = audit_module._write_all

    def buggy(fd: int, data: bytes) -> None:
        stuck.wait(30)  # until the second line is queued behind this one
        raise RuntimeError("a bug, not an OSError")

    monkeypatch.setattr(audit_module, "_write_all", buggy)
    first = log.submit({"i": 2})
    while log._pending:  # the writer took line 2 and is in the buggy write
        threading.Event().wait(0.01)
    second = log.submit({"i": 3})
    outcomes: list[list[BaseException]] = []
    waiting = [
        threading.Thread(target=lambda seq=seq: outcomes.append(_finishes(log.wait, seq)))
        for seq in (first, second)
    ]
    for thread in waiting:
        thread.start()
    stuck.set()
    for thread in waiting:
        thread.join(60)
    assert len(outcomes) == 2
    for (error,) in outcomes:  # both woke, with the cause
        assert isinstance(error, AuditError) and "RuntimeError: a bug" in str(error)
    for call in (log.submit, log.log):
        (error,) = _finishes(call, {"i": 4})
        assert isinstance(error, AuditError)
    monkeypatch.setattr(audit_module, "_write_all", real_write_all)
    for _ in range(2):  # close says the pending lines were not written, every time
        (error,) = _finishes(log.close)
        assert isinstance(error, AuditError) and "RuntimeError" in str(error)
    assert [json.loads(line)["i"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == [1]


def test_a_failing_acknowledgement_callback_stops_releases(tmp_path: Path) -> None:
    def callback(seq: int) -> None:
        raise ValueError("the node's callback broke")

    log = AuditLog(tmp_path / "audit.jsonl", on_durable=callback)
    errors = _finishes(log.log, {"i": 1})  # durable before the callback: acknowledged or refused
    assert all(isinstance(e, AuditError) for e in errors)
    (error,) = _finishes(log.log, {"i": 2})
    assert isinstance(error, AuditError) and "ValueError: the node's callback broke" in str(error)
    (error,) = _finishes(log.close)
    assert isinstance(error, AuditError)


def test_concurrent_closes_write_everything_and_close_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_disk = threading.Event()
    real_fsync, real_close = os.fsync, os.close
    closed: list[int] = []

    def slow_fsync(fd: int) -> None:
        slow_disk.wait(30)
        real_fsync(fd)

    def counting_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    log = AuditLog(tmp_path / "audit.jsonl")
    fd = log._fd
    monkeypatch.setattr(audit_module.os, "fsync", slow_fsync)
    monkeypatch.setattr(audit_module.os, "close", counting_close)
    for i in range(50):
        log.submit({"i": i})
    outcomes: list[list[BaseException]] = []
    closers = [threading.Thread(target=lambda: outcomes.append(_finishes(log.close))) for _ in range(8)]
    for thread in closers:
        thread.start()
    slow_disk.set()  # every closer is in close() while the writer still holds lines
    for thread in closers:
        thread.join(60)
    assert len(outcomes) == 8 and all(not errors for errors in outcomes), outcomes
    assert closed == [fd]
    assert [json.loads(line)["i"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == list(
        range(50)
    )
    (error,) = _finishes(log.submit, {"i": 50})
    assert isinstance(error, AuditError) and "already closed" in str(error)


def test_a_line_that_is_not_json_is_one_audit_error(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log:
        with pytest.raises(AuditError, match="as JSON"):
            log.submit({"probabilities": {"benign": float("nan")}})
        with pytest.raises(AuditError, match="as JSON"):
            log.submit({"input": object()})


# -- the file it writes to ----------------------------------------------------------------------


def test_a_fifo_a_symlink_or_a_folder_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    (error,) = _finishes(AuditLog.open, fifo)  # opening a FIFO for writing blocks forever
    assert isinstance(error, AuditError) and "not a regular file" in str(error)
    target = tmp_path / "elsewhere.jsonl"
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(AuditError, match="symbolic link"):
        AuditLog.open(link)
    assert not target.exists()
    with pytest.raises(AuditError, match="is a directory"):
        AuditLog.open(tmp_path)


# -- each input read once: the hash is of the bytes classified ---------------------------------


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_an_input_rewritten_after_it_was_read_is_hashed_as_classified(
    kind: str, busi_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop folder rewritten while a file is processed: the hash must be of the bytes that were
    decoded and classified, never of what the file holds a moment later."""
    from .hospital_dicom import write_clinical_us

    first, second = busi_images[0], busi_images[-1]
    source = tmp_path / ("scan.png" if kind == "png" else "scan.dcm")
    replacement = tmp_path / ("other.png" if kind == "png" else "other.dcm")
    if kind == "png":
        shutil.copyfile(first, source)
        shutil.copyfile(second, replacement)
    else:
        for path, image in ((source, first), (replacement, second)):
            write_clinical_us(path, [np.asarray(Image.open(image).convert("L"))], photometric="MONOCHROME2")
    original = source.read_bytes()
    spec = PreprocessSpec(size=64, resize_size=64)
    real_read_file = decoding_module.read_file

    def read_then_rewrite(*args: object, **kwargs: object) -> object:
        decoded = real_read_file(*args, **kwargs)  # type: ignore[arg-type]
        shutil.copyfile(replacement, source)  # the scanner overwrites the file right after
        return decoded

    monkeypatch.setattr(decoding_module, "read_file", read_then_rewrite)
    result = decode_safely(InputFile(source), spec, digest=True)
    assert not result.error, result.error
    assert result.sha256 == hashlib.sha256(original).hexdigest()
    assert source.read_bytes() != original  # it was rewritten, and the hash is still the original's
    kept = tmp_path / f"kept{source.suffix}"
    kept.write_bytes(original)
    ((_, tensor),) = result.frames  # the original image's pixels, not the replacement's
    np.testing.assert_array_equal(tensor, preprocess(read_file(kept).frames[0], spec))


def test_a_failed_decode_is_hashed_from_the_same_read(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = decode_safely(InputFile(broken), PreprocessSpec(size=64, resize_size=64), digest=True)
    assert "not a readable image" in result.error
    assert result.sha256 == hashlib.sha256(broken.read_bytes()).hexdigest()


# -- infer: the file it writes to, and what it says about the model -----------------------------


@needs_export
def test_infer_refuses_the_audit_log_as_its_output(
    tiny_export: Path, busi_images: list[Path], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"i": 1}\n')  # the history that --output would replace
    link = tmp_path / "link.jsonl"
    link.symlink_to(audit)
    model, image = str(tiny_export / "model.onnx"), str(busi_images[0])
    for output in (audit, link):
        result = CliRunner().invoke(
            cli.main, ["infer", model, image, "--audit-log", str(audit), "--output", str(output)]
        )
        assert result.exit_code == 2 and "--output" in result.output, result.output
    assert audit.read_text() == '{"i": 1}\n'
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    result = CliRunner().invoke(cli.main, ["infer", model, image, "--audit-log", str(fifo)])
    assert result.exit_code == 2 and "not a regular file" in result.output


@needs_export
def test_the_audit_line_names_the_model_path_and_its_governance_version(
    tiny_export: Path, busi_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit_edge.inference.command import InferConfig, infer
    from medvit_edge.runtime.classifier import Classifier

    monkeypatch.chdir(tiny_export.parent)
    audit = tmp_path / "audit.jsonl"
    relative = Path(tiny_export.name) / "model.int8.onnx"
    infer(InferConfig(model=relative, inputs=[str(busi_images[0])], audit_log=audit, progress=False))
    (line,) = [json.loads(text) for text in audit.read_text().splitlines()]
    metadata = Classifier.load(relative, device="cpu").metadata
    assert line["model"] == str(tiny_export.resolve() / "model.int8.onnx")
    assert line["model_version"] == metadata.model_version == "1"
    assert line["model_name"] == metadata.model_name and line["variant"] == "int8-dynamic"
    assert line["exported"] == metadata.created and line["exported"]
    assert line["input_sha256"] == hashlib.sha256(busi_images[0].read_bytes()).hexdigest()

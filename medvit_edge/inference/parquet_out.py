"""Predictions as Parquet: one file written atomically, or a folder of parts with a ``_SUCCESS``
marker (for archives too big to hold in one process).

Each row is its JSONL record (``output.json_record``), so a Parquet file has exactly the columns
and values of the JSONL output (same order, same escaping of file names that are not
UTF-8), typed: ``frame`` is int64 (null on a file-level error row), each class probability is
float64 (null where there is no prediction), every other column is a string.

A folder is built beside its final name (``.NAME.partial-XXXX``) and renamed into place when
complete, with ``_SUCCESS`` (JSON counts) written last inside it: a reader that sees the folder
sees every part; a run that fails or is stopped leaves nothing. Needs pyarrow (the ``[ray]``
extra brings it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError
from medvit_edge.files import atomic_writer, check_writable_folder
from medvit_edge.inference.output import json_record
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.lazy import import_optional

SUCCESS_MARKER = "_SUCCESS"
ROWS_PER_PART = 100_000


def _pyarrow() -> Any:
    # the parquet submodule is what writes
    return import_optional(
        "pyarrow", "pyarrow.parquet", hint="Parquet output needs pyarrow: pip install 'medvit-edge[ray]'"
    )


def schema(labels: list[str]) -> Any:
    pa = _pyarrow()
    fields = []
    for column in PredictionRow.columns(labels):
        kind = pa.float64() if column in labels else pa.int64() if column == "frame" else pa.string()
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


def table(rows: list[PredictionRow], labels: list[str]) -> Any:
    """The rows as an Arrow table: JSONL records, typed by ``schema``."""
    pa = _pyarrow()
    records = [json_record(row, labels) for row in rows]
    target = schema(labels)
    columns = {}
    for field in target:
        values = [record.get(field.name) for record in records]
        if pa.types.is_string(field.type):
            values = [None if v is None else str(v) for v in values]
        else:  # "" marks "no value" in the text formats
            values = [None if v == "" else v for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=target)


def write_parquet(path: Path, rows: list[PredictionRow], labels: list[str]) -> None:
    """One Parquet file, written atomically (the old file stays until the new one is whole)."""
    pa = _pyarrow()
    with atomic_writer(path, "wb") as handle:
        pa.parquet.write_table(table(rows, labels), handle)


def check_folder_target(folder: Path) -> None:
    """A partitioned output: a folder that does not exist yet (or is empty), in a writable folder."""
    if folder.is_symlink():
        raise UserError(f"--output {folder}: is a symbolic link; name a new folder")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(
            f"--output {folder}: exists and is not an empty folder; a partitioned output "
            "(a name without a suffix) must be a new folder"
        )
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise UserError(f"--output {folder}: folder {parent} does not exist")
    check_writable_folder(parent, f"--output {folder}")


class PartitionedParquet:
    """Parts of ``rows_per_part`` rows as the rows arrive, in order; ``commit`` makes the folder
    appear complete, ``abort`` (or leaving the ``with`` block by an exception) removes it all."""

    def __init__(self, folder: Path, labels: list[str], rows_per_part: int | None = None):
        self.folder, self.labels = folder, labels
        self.rows_per_part = rows_per_part or ROWS_PER_PART
        self.pending: list[dict[str, Any]] = []
        self.parts = 0
        self.rows = 0
        self.partial = folder.absolute().parent / f".{folder.name}.partial-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> PartitionedParquet:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self.abort()

    def add(self, rows: list[PredictionRow]) -> None:
        self.pending.extend(rows)
        while len(self.pending) >= self.rows_per_part:
            self._write_part(self.pending[: self.rows_per_part])
            del self.pending[: self.rows_per_part]

    def _write_part(self, rows: list[PredictionRow]) -> None:
        pa = _pyarrow()
        if not self.parts:
            # made with the first part, inside the ``with`` block, so a signal at any moment finds
            # ``abort`` ready; os.mkdir, not mkdtemp: the usual permissions (umask), not 0700
            os.mkdir(self.partial)
        pa.parquet.write_table(table(rows, self.labels), self.partial / f"part-{self.parts:05d}.parquet")
        self.parts += 1
        self.rows += len(rows)

    def commit(self, counts: dict[str, Any]) -> None:
        """The last part, then ``_SUCCESS``, then the rename that makes the folder appear."""
        if self.pending or not self.parts:  # an empty run still gets one (empty) part: a schema
            self._write_part(self.pending)
            self.pending = []
        marker = {"parts": self.parts, "rows": self.rows, **counts}
        with open(self.partial / SUCCESS_MARKER, "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.folder.is_dir():  # checked empty before the run
            self.folder.rmdir()
        os.replace(self.partial, self.folder)

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.partial)

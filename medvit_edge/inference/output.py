"""Writing prediction rows: CSV (``.csv``) or JSON Lines (``.jsonl``), atomically.

How values are written:

* CSV is opened in spreadsheets, so text cells a spreadsheet would run as a formula are
  neutralised (OWASP CSV injection): a leading ``'`` was added to cells that start with
  ``=`` ``+`` ``-`` ``@`` tab or CR; strip one leading ``'`` from such cells to recover the
  value. This holds for every text column (path, label, decision, variant, model_sha256, error) and for
  the header, whose class names come from the model's metadata. Probabilities are numbers
  (never negative), written as is. When the CSV goes to a terminal, control characters are
  escaped too (``\\x1b``), like everything else printed.
* JSONL is not a spreadsheet: its values are left raw; non-finite numbers never reach it
  (``allow_nan=False``), so every line is valid JSON.
* In both, the bytes of a file name that are not valid UTF-8 are written as ``\\xNN`` escapes
  (what ``os.fsencode(path).decode("utf-8", "backslashreplace")`` gives); turn each ``\\xNN``
  back into the byte ``0xNN`` to recover the name (a name that itself contains a backslash, an
  ``x`` and two hex digits cannot be told apart from such an escape).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from medvit_edge.errors import printable
from medvit_edge.files import atomic_writer
from medvit_edge.inference.rows import PredictionRow

# First characters that make a spreadsheet evaluate a cell (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Writer = Callable[[Path, list[PredictionRow], list[str]], None]


def write_predictions(path: Path, rows: list[PredictionRow], labels: list[str]) -> None:
    """CSV (``.csv``) or JSON Lines (``.jsonl``), written atomically."""
    with atomic_writer(path) as handle:
        format_predictions(handle, rows, labels, jsonl=path.suffix.lower() == ".jsonl")


def format_predictions(
    handle: TextIO,
    rows: list[PredictionRow],
    labels: list[str],
    jsonl: bool = False,
    terminal: bool = False,
) -> None:
    """One row per frame: path, frame, label, decision (the model's decision policy: a label or
    ``refer``), a (calibrated) probability column per class, variant, sha256, error, then the
    DICOM identifiers study_uid, series_uid, sop_uid (empty for other files).
    ``terminal``: the CSV goes to a terminal, so control characters are escaped too.
    The module docstring says how values are escaped and how to undo it."""
    if jsonl:
        for row in rows:
            handle.write(json.dumps(json_record(row, labels), allow_nan=False) + "\n")  # NaN is not JSON
        return
    writer = csv.writer(handle)
    writer.writerow([_csv_cell(column, terminal) for column in PredictionRow.columns(labels)])
    for row in rows:  # a missing probability (None) is an empty cell
        writer.writerow([_csv_cell(value, terminal) for value in row.to_record(labels).values()])


def json_record(row: PredictionRow, labels: list[str]) -> dict[str, Any]:
    """The row as one JSONL record (also what Parquet stores): file-name bytes escaped."""
    return {column: _json_value(value) for column, value in row.to_record(labels).items()}


def _csv_cell(value: Any, terminal: bool) -> Any:
    if isinstance(value, float):
        return f"{value:.6f}"
    if not isinstance(value, str):
        return value
    text = printable(value) if terminal else _undecodable_escaped(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _json_value(value: Any) -> Any:
    return _undecodable_escaped(value) if isinstance(value, str) else value


def _undecodable_escaped(text: str) -> str:
    """File-name bytes that are not UTF-8 (lone surrogates after ``os.fsdecode``) as ``\\xNN``,
    so a strict UTF-8 file can hold every path."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

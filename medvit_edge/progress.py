"""A dependency-free progress line on stderr (the runtime does not pull in tqdm)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from medvit_edge.errors import printable

_quiet = False


def set_quiet(value: bool) -> None:
    """``medvit-edge -q``: no progress bars or lines from any command."""
    global _quiet
    _quiet = value


def quiet() -> bool:
    return _quiet


class Progress:
    """Redraws one line on a terminal; elsewhere (logs, CI) prints at most every 10%."""

    def __init__(self, total: int, unit: str = "items", enabled: bool = True, stream: TextIO | None = None):
        self.total, self.unit, self.enabled = total, unit, enabled and not _quiet
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()
        self.is_tty = self.stream.isatty()
        self._last_decile = -1

    def update(self, count: int = 1, note: str = "") -> None:
        self.done += count
        if not self.enabled or self.total <= 0:
            return
        decile = self.done * 10 // self.total
        if not self.is_tty and decile == self._last_decile:
            return
        self._last_decile = decile
        self._draw(note, end="" if self.is_tty else "\n")

    def _draw(self, note: str, end: str) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        width = 24
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        rate = self.done / elapsed
        # the note may quote a file name: escaped, so it cannot drive the terminal
        line = printable(f"[{bar}] {self.done}/{self.total} {self.unit} {rate:.1f}/s {note}")
        prefix = "\r" if self.is_tty else ""
        self.stream.write(f"{prefix}{line[:120]:<80}{end}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.is_tty:
            self.stream.write("\n")
            self.stream.flush()

"""The errors a user can act on, the exit codes every command keeps, and safe printing.

Exit codes (every command):

* **0**: everything asked for was done;
* **1**: the run finished but some inputs failed (each has an error row), or a variant failed
  its tolerances;
* **2**: the model, the data or the arguments cannot be used: nothing was run, one line says why;
* **130**: interrupted (Ctrl-C, SIGINT), as shells report it.
"""

from __future__ import annotations

import re

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in an input or an argument: the message names it and the cause (exit 2)."""

    exit_code = EXIT_UNUSABLE


class ModelLoadError(UserError, RuntimeError):
    """A model file cannot be used; the message says which file and why."""


# C0 and C1 control characters and DEL: a file name can carry terminal escape sequences.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates: how Python decodes the bytes of a file name that is not valid UTF-8.
_SURROGATE = re.compile(r"[\udc80-\udcff]")


def printable(text: object) -> str:
    """``text`` with control characters and undecodable file-name bytes escaped (``\\x1b``),
    so nothing a file name carries can drive a terminal or break a UTF-8 file."""
    value = str(text)
    value = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


class MetadataError(ValueError):
    """A model file's metadata is missing or malformed."""

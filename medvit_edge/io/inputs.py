"""What a run reads: files as given, folders walked, globs expanded, by one rule.

``collect_inputs(specs)`` returns an ``InputList``: the inputs in order (a plain list of
``InputFile``) and ``.skipped``, every file or folder it passed over with the reason, so a
summary can print them. The same rule decides what an input is for ``infer`` and for labelled
class folders (``medvit_edge.io.labelled``):

* a **file named** on the command line is always an input, whatever its name (a file that is
  not an image then gets an error row);
* inside a **folder** or matched by a **glob**, a file is an input when its suffix is an image or
  DICOM suffix (``IMAGE_SUFFIXES``, ``DICOM_SUFFIXES``, any case) or, whatever its name, when it
  starts like a DICOM file (``DICM`` after the 128-byte preamble), as scanners write
  ``IM000001`` or ``1.2.840.113619.2.55.3``; a named input Pillow has no decoder for still gets
  a row, with an error that says so;
* **skipped, and reported** in ``.skipped`` with the reason: ``hidden`` (a name starting with
  ``.``: the entry, and a hidden folder is not walked), ``BUSI mask`` (``name_mask.png``,
  ``name_mask_1.png``: nothing else, ``x_mask_off.png`` is an image), ``DICOMDIR`` (a media index
  beside scanner exports, no image), ``not an image`` (no image suffix and no DICOM preamble,
  or a pipe/socket/broken link without one), ``unreadable`` (no image suffix, and the file could
  not be opened to look for the preamble), ``duplicate`` (the same real file already listed,
  through another path, a symlink, the same folder twice or a folder and a glob: the first
  occurrence stays), ``folder walked already`` (a folder this run has read already: a symlink
  back into the tree, or a folder named twice);
* **error rows** (an ``InputFile`` with ``error``): a folder that cannot be read (permission,
  a path longer than the system allows), a path too long to open, a name that matches nothing
  (``no such file or folder``, ``no file matches this pattern``). They count as failed inputs.

Folders are walked in sorted order, a folder's files before its sub-folders (depth first).
Symlinked folders are followed, but each real folder is read once per run, so a symlink
cycle cannot loop or repeat a file. Globs (``*``, ``?``, ``[...]``; ``**`` for any number of
folders) are expanded here rather than by ``glob.glob``, which follows symlink cycles until the
path gets too long (41 copies of one file, or never finishing with two self-links); wildcards
do not match hidden names unless the pattern part starts with ``.``. A folder a glob matches is
walked like a folder; matches are sorted by path.

An **empty** input set (no ``InputFile`` at all: every file was skipped, or the folders were
empty) is ``not found.files``; ``found.describe_skipped()`` says what was passed over.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medvit_edge.runtime.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_mask_file

INPUT_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
# The reasons a file or folder is skipped (SkippedInput.reason).
HIDDEN, MASK, DICOMDIR = "hidden", "BUSI mask", "DICOMDIR"
NOT_IMAGE, UNREADABLE = "not an image", "unreadable"
DUPLICATE, WALKED = "duplicate", "folder walked already"
try:
    PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
except (OSError, ValueError, AttributeError):  # not POSIX
    PATH_MAX = 4096


@dataclass(frozen=True)
class InputFile:
    path: Path
    root: Path | None = None  # the folder it was found in, for class-folder ground truth
    error: str | None = None


@dataclass(frozen=True)
class SkippedInput:
    path: Path
    reason: str  # one of the reasons in the module docstring
    detail: str = ""  # e.g. which path a duplicate repeats

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class InputList:
    """The inputs in order (``files``), and what was passed over with the reason (``skipped``)."""

    files: list[InputFile] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(item.reason for item in self.skipped))

    def describe_skipped(self) -> str:
        """``"3 skipped: 2 BUSI mask, 1 hidden"`` (most frequent first), or ``"nothing skipped"``."""
        if not self.skipped:
            return "nothing skipped"
        ranked = sorted(self.skipped_counts().items(), key=lambda pair: (-pair[1], pair[0]))
        counts = ", ".join(f"{count} {reason}" for reason, count in ranked)
        return f"{len(self.skipped)} skipped: {counts}"


def collect_inputs(specs: list[str]) -> InputList:
    """Files as given, folders walked recursively, globs expanded; duplicates listed once."""
    collector = _Collector()
    walked: dict[object, Path] = {}
    for spec in specs:
        for found in _expand_spec(spec, walked):
            collector.take(found)
    return collector.found


def walk_folder(folder: Path, walked: dict[object, Path] | None = None) -> Iterator[InputFile | SkippedInput]:
    """Every entry under ``folder`` in walk order: an input (``root=folder``), an error row for a
    folder that cannot be read, or a skip with its reason. ``walked`` (real folder -> the path
    it was read as) is shared by the walks of one run, so no folder is read twice."""
    walked = {} if walked is None else walked
    pending = [folder]
    while pending:
        directory = pending.pop()
        identity = _folder_identity(directory)
        if identity in walked:
            yield SkippedInput(directory, WALKED, f"read as {walked[identity]}")
            continue
        walked[identity] = directory
        entries = _scan(directory)
        if isinstance(entries, OSError):
            yield _folder_error(directory, entries)
            continue
        subfolders = []
        for entry in entries:
            path = directory / entry.name
            if entry.name.startswith("."):
                yield SkippedInput(path, HIDDEN)
            elif _is_folder(entry):
                subfolders.append(path)
            else:
                yield _file_rule(path, folder)
        pending.extend(reversed(subfolders))  # pop() then visits them in sorted order


class _Collector:
    """Keeps the first occurrence of each real file; later ones are reported as duplicates (a
    file skipped once is reported once)."""

    def __init__(self) -> None:
        self.found = InputList()
        self._seen: dict[str, Path] = {}
        self._seen_skipped: set[str] = set()

    def take(self, item: InputFile | SkippedInput) -> None:
        if isinstance(item, SkippedInput):
            # the entry itself, not its target: two links to one folder are two entries
            key = os.path.join(os.path.realpath(item.path.parent), item.path.name)
            if key not in self._seen_skipped:
                self._seen_skipped.add(key)
                self.found.skipped.append(item)
            return
        key = os.path.realpath(item.path) if item.error is None else f"error:{item.path}"
        if key in self._seen:
            if item.error is None:  # the same error met again (a folder and a glob) says nothing new
                self.found.skipped.append(
                    SkippedInput(item.path, DUPLICATE, f"same file as {self._seen[key]}")
                )
            return
        self._seen[key] = item.path
        self.found.files.append(item)


def _expand_spec(spec: str, walked: dict[object, Path]) -> Iterator[InputFile | SkippedInput]:
    path = Path(spec)
    try:
        info = os.stat(spec)
    except FileNotFoundError:
        if os.path.lexists(spec):  # a broken symlink: its row says "not found"
            yield InputFile(path)
        elif glob.has_magic(spec):
            yield from _expand_glob(spec, walked)
        else:
            yield InputFile(path, error=f"{spec}: no such file or folder")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink loop: its row says so
            yield InputFile(path)
        else:
            yield InputFile(path, error=f"{spec}: {_why(exc)}")
        return
    yield from walk_folder(path, walked) if stat.S_ISDIR(info.st_mode) else [InputFile(path)]


def _expand_glob(spec: str, walked: dict[object, Path]) -> Iterator[InputFile | SkippedInput]:
    parts = Path(spec).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    errors: dict[Path, InputFile] = {}  # a folder met twice is one error row
    matches = sorted(_match(Path(*parts[:first]), parts[first:], errors, set()), key=str)
    yield from errors.values()
    if not matches and not errors:
        yield InputFile(Path(spec), error=f"{spec}: no file matches this pattern")
    for match in matches:
        if os.path.isdir(match):
            yield from walk_folder(match, walked)
        else:
            yield _file_rule(match, None)


def _match(
    directory: Path, pattern: tuple[str, ...], errors: dict[Path, InputFile], seen: set[object]
) -> Iterator[Path]:
    """Paths under ``directory`` that match ``pattern`` part by part; ``seen`` holds the (real
    folder, pattern position) pairs already expanded, which is what stops symlink cycles."""
    key = (_folder_identity(directory), len(pattern))
    if key in seen:
        return
    seen.add(key)
    head, rest = pattern[0], pattern[1:]
    if head == "**" and not rest:
        yield directory  # everything below: walked as a folder
    elif head == "**":
        yield from _match(directory, rest, errors, seen)  # no folder at all
        for sub in _subfolders(directory, errors):
            yield from _match(sub, pattern, errors, seen)
    elif glob.has_magic(head):
        for entry in _scan_for_glob(directory, errors):
            if fnmatch.fnmatchcase(entry.name, head) and (head[0] == "." or entry.name[0] != "."):
                yield from _descend(directory / entry.name, rest, errors, seen)
    else:
        target = directory / head
        if rest or os.path.lexists(target):
            yield from _descend(target, rest, errors, seen)


def _descend(
    path: Path, rest: tuple[str, ...], errors: dict[Path, InputFile], seen: set[object]
) -> Iterator[Path]:
    if not rest:
        yield path
    elif os.path.isdir(path):
        yield from _match(path, rest, errors, seen)


def _subfolders(directory: Path, errors: dict[Path, InputFile]) -> list[Path]:
    entries = _scan_for_glob(directory, errors)
    return [directory / e.name for e in entries if not e.name.startswith(".") and _is_folder(e)]


def _scan_for_glob(directory: Path, errors: dict[Path, InputFile]) -> list[os.DirEntry[str]]:
    """A missing folder simply matches nothing; one that cannot be read is an error row."""
    entries = _scan(directory)
    if not isinstance(entries, OSError):
        return entries
    if entries.errno not in (errno.ENOENT, errno.ENOTDIR):
        errors[directory] = _folder_error(directory, entries)
    return []


def _file_rule(path: Path, root: Path | None) -> InputFile | SkippedInput:
    """The rule for a file found in a folder or by a glob (named files skip it; hidden names
    are left out before, by the walk and by the pattern)."""
    name = path.name
    if name.upper() == "DICOMDIR":
        return SkippedInput(path, DICOMDIR, "a DICOM media index, no image")
    if is_mask_file(path):
        return SkippedInput(path, MASK)
    too_long = len(os.fsencode(path)) >= PATH_MAX
    if path.suffix.lower() in INPUT_SUFFIXES:
        if too_long:
            return InputFile(path, root, error=f"{path}: {_why(OSError(errno.ENAMETOOLONG, ''))}")
        return InputFile(path, root)
    if too_long:
        return SkippedInput(
            path, UNREADABLE, f"cannot look for a DICOM preamble: {_why(OSError(errno.ENAMETOOLONG, ''))}"
        )
    return _sniff(path, root)


def _sniff(path: Path, root: Path | None) -> InputFile | SkippedInput:
    """A file without an image suffix is an input when it starts like a DICOM file."""
    if not os.path.isfile(path):  # never open a FIFO: it would block the walk
        return SkippedInput(path, NOT_IMAGE, "not a regular file")
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            dicom = handle.read(4) == b"DICM"
    except OSError as exc:
        return SkippedInput(path, UNREADABLE, f"cannot look for a DICOM preamble: {_why(exc)}")
    return InputFile(path, root) if dicom else SkippedInput(path, NOT_IMAGE)


def _scan(directory: Path) -> list[os.DirEntry[str]] | OSError:
    """The folder's entries sorted by name, or the error that kept it from being read."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        return exc


def _folder_error(directory: Path, exc: OSError) -> InputFile:
    return InputFile(directory, error=f"{directory}: cannot read folder ({_why(exc)})")


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked folder is walked (once)
    except OSError:
        return False


def _folder_identity(directory: Path) -> object:
    """The real folder (device, inode); a folder that cannot be stat'ed is known by its path."""
    try:
        info = os.stat(directory)
    except OSError:
        return str(directory)
    return info.st_dev, info.st_ino


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return f"path longer than the system allows ({PATH_MAX} bytes)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)

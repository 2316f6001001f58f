"""``infer --overlays DIR``: one PNG per classified image, the frame with where the model looked.

The label, its probability and the decision on each overlay are the run's own (the model being
run, as in the predictions file); the heat map is the attention rollout of the explainability
model, ``model.explain.onnx`` beside it (``export --explain``) or ``--explain-model PATH``, which
must come from the same weights (same ``source_sha256``, labels and preprocessing) so the map
belongs to the prediction it is drawn with.

Checked before the run (``UserError``, exit 2, one line): the explainability model exists and
matches, ``DIR`` is not an input, nor inside a folder being read (a later run would read the
overlays as scans), and can be written. Each overlay is named after its input
(``benign__case_1.overlay.png`` for ``benign/case 1.png`` under a folder given; a frame of a
multi-frame file adds ``-frame-N``), with characters outside ``[A-Za-z0-9._-]`` replaced and a
counter added when two inputs would share a name; a path that is an input is never written.
Each is written atomically. The input is read a second time for its overlay and must be the very
bytes that were classified (their sha256 is kept from the run): a file rewritten in between gets
no overlay, since the picture would show other pixels than the label was given for. A file whose
overlay cannot be made (changed, or unreadable the second time) is one error line and exit 1;
the other overlays are still written; an input that failed classification gets none.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medvit_edge.errors import UserError, printable
from medvit_edge.files import check_writable_folder
from medvit_edge.inference.explain import Explainer, write_overlay
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.io.inputs import InputFile
from medvit_edge.io.reader import read_bytes, read_file
from medvit_edge.progress import Progress
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.variants import VARIANTS

OVERLAY_SUFFIX = ".overlay.png"
MAX_STEM = 120  # characters of the input's name kept in the overlay's name
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def explain_model_path(model: Path, given: Path | None) -> Path:
    """``--explain-model`` as given, else ``model.explain.onnx`` beside the model being run."""
    path = given if given is not None else model.parent / VARIANTS["explain"].file_name
    if not path.is_file():
        where = f"--explain-model {path}" if given is not None else f"{path}"
        raise UserError(
            f"--overlays needs an explainability model: {printable(where)} not found; "
            "export with --explain (or give --explain-model PATH)"
        )
    return path


@dataclass
class OverlayWriter:
    """Writes the overlays of a finished run's rows into ``folder``."""

    explainer: Explainer
    folder: Path
    items: list[InputFile]
    protected: set[str] = field(default_factory=set)  # real paths of the inputs
    progress: bool = True  # a progress line on stderr (heat maps take a while per image)

    def write(self, rows: list[PredictionRow], labels: list[str]) -> tuple[list[Path], list[str]]:
        """Overlays for every row without an error; returns (written, errors)."""
        names = overlay_names(self.items, rows)
        written: list[Path] = []
        errors: list[str] = []
        files = list(_rows_by_file(rows))
        progress = Progress(len(files), unit="overlays", enabled=self.progress)
        for path, file_rows in files:
            try:
                written += self._write_file(path, file_rows, labels, names)
            except Exception as exc:  # one file's overlay never costs the others
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                errors.append(f"{path}: overlay not written ({reason})")
            progress.update()
        progress.close()
        return written, errors

    def _write_file(
        self, path: str, rows: list[PredictionRow], labels: list[str], names: dict[tuple[str, int], str]
    ) -> list[Path]:
        data = read_bytes(path)
        classified = rows[0].input_sha256
        if classified and hashlib.sha256(data).hexdigest() != classified:
            raise OSError(f"{path} changed since it was classified; an overlay would show other pixels")
        frames = read_file(path, check_constant=False, data=data).frames
        images = [frames[row.frame] for row in rows if row.frame is not None]
        grids = self.explainer.heat_maps(images)
        written = []
        for row, image, grid in zip(rows, images, grids):
            target = self.folder / names[(path, row.frame)]  # type: ignore[index]
            if os.path.realpath(target) in self.protected:
                raise OSError(f"{target} is an input; not overwritten")
            caption = overlay_caption(row, labels, len(frames) > 1)
            written.append(write_overlay(target, image, grid, self.explainer.spec, caption))
        return written


def _rows_by_file(rows: list[PredictionRow]) -> Iterator[tuple[str, list[PredictionRow]]]:
    """The classified rows of each file (a file's rows are consecutive), in input order."""
    current: str | None = None
    group: list[PredictionRow] = []
    for row in rows:
        if not row.ok or row.frame is None:
            continue
        if row.path != current and group:
            yield current, group  # type: ignore[misc]
            group = []
        current = row.path
        group.append(row)
    if group:
        yield current, group  # type: ignore[misc]


def overlay_caption(row: PredictionRow, labels: list[str], multi_frame: bool) -> list[str]:
    """Label, probability and decision; the input's name; what made the label and the map."""
    label = row.label
    decision = row.decision or label
    name = printable(Path(row.path).name)
    name = name if len(name) <= 60 else name[:57] + "..."
    frame = f", frame {row.frame}" if multi_frame else ""
    return [
        f"{label} p={row.probabilities[label]:.2f} | decision: {decision}",
        f"{name}{frame}",
        f"label: {row.variant} model; heat: attention rollout",
    ]


def overlay_names(items: list[InputFile], rows: list[PredictionRow]) -> dict[tuple[str, int], str]:
    """(path, frame) of each classified row -> a file name in the overlay folder, unique."""
    roots = {str(item.path): item.root for item in items}
    classified = [row for row in rows if row.ok and row.frame is not None]
    frames: dict[str, int] = {}
    for row in classified:
        frames[row.path] = frames.get(row.path, 0) + 1
    names: dict[tuple[str, int], str] = {}
    used: set[str] = set()
    for row in classified:
        stem = safe_stem(Path(row.path), roots.get(row.path))
        if frames[row.path] > 1 or row.frame != 0:
            stem += f"-frame-{row.frame}"
        name, number = stem + OVERLAY_SUFFIX, 1
        while name.lower() in used:  # case-insensitive disks would merge Case.png and case.png
            number += 1
            name = f"{stem}-{number}{OVERLAY_SUFFIX}"
        used.add(name.lower())
        names[(row.path, row.frame)] = name  # type: ignore[index]
    return names


def safe_stem(path: Path, root: Path | None) -> str:
    """``root/benign/case (1).png`` -> ``benign__case_1``: the path under the folder given (the
    file name alone otherwise), its suffix dropped, unsafe characters replaced, never hidden."""
    try:
        relative = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        relative = Path(path.name)
    parts = [_UNSAFE.sub("_", part).strip("._") for part in (*relative.parts[:-1], relative.stem)]
    return "__".join(part for part in parts if part)[:MAX_STEM] or "image"


@dataclass(frozen=True)
class OverlayRequest:
    """What ``infer --overlays`` asks for: the folder, the explain model (default: beside the
    model) and how to load it."""

    folder: Path
    explain_model: Path | None = None
    device: str = "auto"
    threads: int | None = None
    verify: bool | None = None
    progress: bool = True


def prepare_overlays(
    request: OverlayRequest, specs: list[str], classifier: Classifier, items: list[InputFile]
) -> OverlayWriter:
    """Everything ``--overlays`` needs, checked before the run (``UserError``)."""
    folder = request.folder
    check_overlay_folder(folder, specs, items)
    path = explain_model_path(classifier.path, request.explain_model)
    explainer = Explainer.load(path, device=request.device, threads=request.threads, verify=request.verify)
    check_same_model(explainer, classifier)
    make_folder(folder)  # only once everything else is known to work
    protected = {os.path.realpath(item.path) for item in items if not item.error}
    return OverlayWriter(explainer, folder, list(items), protected, progress=request.progress)


def check_same_model(explainer: Explainer, classifier: Classifier) -> None:
    """The heat map must come from the weights that made the label, computed the same way."""
    mine, theirs = explainer.classifier.metadata, classifier.metadata
    if theirs.token_merging:  # merged tokens: the unmerged attention is not what this model saw
        raise UserError(
            f"--overlays: {printable(classifier.path)} is token-merged "
            f"(r {theirs.token_merging.get('r')}); heat maps come from the unmerged model and would "
            "not show where it looked: run the unmerged model (model.onnx) for overlays"
        )
    same = mine.labels == theirs.labels and mine.preprocess == theirs.preprocess
    if not same or mine.source_sha256 != theirs.source_sha256:  # both empty: neither says
        raise UserError(
            f"--overlays: {printable(explainer.path)} was exported from other weights than "
            f"{printable(classifier.path)} (labels, preprocessing or source_sha256 differ); "
            "export both from one run folder"
        )


def check_overlay_folder(folder: Path, specs: list[str], items: list[InputFile]) -> None:
    """``folder`` must not be an input nor lie inside a folder being read."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--overlays {printable(folder)}: exists and is not a folder")
    target = os.path.realpath(folder)
    folders = {os.path.realpath(spec) for spec in specs if os.path.isdir(spec)}
    folders |= {os.path.realpath(item.root) for item in items if item.root is not None}
    inputs = {os.path.realpath(item.path) for item in items if not item.error}
    for source in sorted(folders):
        if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
            raise UserError(
                f"--overlays {printable(folder)}: inside the input folder {printable(source)}; "
                "a later run would read the overlays as images. Choose a folder outside it."
            )
    if target in inputs:
        raise UserError(f"--overlays {printable(folder)}: this is an input; choose another folder")


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and prove a file can be made in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--overlays {printable(folder)}: cannot create it ({exc.strerror or exc})") from exc
    check_writable_folder(folder, f"--overlays {printable(folder)}")

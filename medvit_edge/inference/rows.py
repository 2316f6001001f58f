"""The prediction row: one frame of one input file through the model, or that file's error.

Every consumer takes this one record: the CSV/JSONL/Parquet writers, the audit log, the DICOM SR
writer, overlays, Ray and the DICOM node. Class probabilities live in their own mapping, so a
label can never collide with a column, and an error row has ``frame`` None (its file gave no
frames) instead of a sentinel value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medvit_edge.io.reader import NO_IDS, UID_COLUMNS, DicomIds


@dataclass
class PredictionRow:
    path: str  # as given ("" where the name means nothing outside, e.g. a node's spool file)
    frame: int | None = None  # None: the file failed before it gave frames
    label: str = ""  # the most probable class
    decision: str = ""  # what the model's decision policy says: a label or "refer"
    probabilities: dict[str, float] = field(default_factory=dict)  # calibrated, one per class
    error: str = ""  # why this frame or file has no prediction ("" when it has one)
    variant: str = ""
    model_sha256: str = ""
    ids: DicomIds = NO_IDS  # which DICOM instance (empty strings for other files)
    input_sha256: str = ""  # the bytes that were decoded (audit log only, never an output column)

    @property
    def ok(self) -> bool:
        return not self.error

    @staticmethod
    def columns(labels: Sequence[str]) -> list[str]:
        """The output columns in order: path, frame, label, decision, one probability per class,
        variant, model_sha256, error, then the DICOM identifiers."""
        return [
            "path",
            "frame",
            "label",
            "decision",
            *labels,
            "variant",
            "model_sha256",
            "error",
            *UID_COLUMNS,
        ]

    def to_record(self, labels: Sequence[str]) -> dict[str, Any]:
        """The row under ``columns(labels)``: a missing frame is "", a missing probability None."""
        record: dict[str, Any] = {
            "path": self.path,
            "frame": "" if self.frame is None else self.frame,
            "label": self.label,
            "decision": self.decision,
        }
        record.update({label: self.probabilities.get(label) for label in labels})
        record.update(variant=self.variant, model_sha256=self.model_sha256, error=self.error)
        record.update(self.ids.columns())
        return record

    def to_wire(self) -> dict[str, Any]:
        """Every field as JSON-ready values (for the Ray engine: rows travel as JSON, never pickle)."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PredictionRow:
        return cls(**{**data, "ids": DicomIds(**data["ids"])})

"""Results back to PACS: one DICOM Comprehensive SR per classified DICOM instance (highdicom).

The report follows **TID 1500** (Measurement Report), built by highdicom, so any TID 1500 reader
(highdicom's ``srread``, OHIF, dcmtk's ``dsr2html``) finds the results where it looks for them:

* root ``CONTAINER`` "Imaging Measurement Report" (DCM 126000), with the observation context of
  a **device observer** named ``medvit-edge`` (its UID derived from the model's sha256, its model
  name the model file) and the procedure reported "Ultrasonography" (SCT 16310003);
* one **measurement group** (TID 1501) per classified frame, with:

  - tracking identifier ``frame N`` (N = the DICOM frame number, 1-based; ``infer``'s ``frame``
    column is 0-based) and a tracking UID;
  - **source image**: the source SOP instance (SOP class + SOP instance UID; for a multi-frame
    file the referenced frame number);
  - **algorithm identification** (TID 4019): name = the model (run folder/file), version = its
    variant and export time, manufacturer ``medvit-edge``, parameters ``model_sha256=...``,
    ``variant=...``, ``software=medvit-edge X.Y`` and the **research-use notice**;
  - qualitative evaluation ``Finding`` = the model's **decision** (its policy: operating point
    and refer rule; the most probable class when the model has no policy) and ``Most probable
    class`` = the argmax, so a reader never takes the argmax for the decision (codes of the
    private scheme ``99MEDVIT``, whose code value is the label itself; declared in the Coding
    Scheme Identification Sequence);
  - one ``NUM`` per class: ``Probability of <label>``, unit UCUM ``1`` (a ratio 0..1).

The SR copies the patient and study of the source (so PACS files it with the study), each
attribute checked (``medvit_edge.hospital.dicom_sanitize``: a malformed optional one is left out with a
warning), and lists the source in the Current Requested Procedure Evidence Sequence. Its
**Contributing Equipment Sequence** (IHE AI Results) names the algorithm: purpose "Processing
Equipment" (DCM 109102), manufacturer ``medvit-edge``, model name, Device UID (from the model's
sha256), software versions (medvit-edge, the model's variant and sha256). Its Series
Description carries the research-use notice too. UIDs are derived, not random, under the
organisation's root (``uid_root``; pydicom's root when none is given): the SR's SOP Instance UID
from the source SOP Instance UID and the model's sha256 (the same instance classified again by the same
model gives the same UID, so a resend replaces rather than duplicates), the series UID from the
study UID and the model's sha256 (one SR series per study and model). A source without a Study,
Series or SOP Instance UID or SOP Class UID cannot be referenced: an error naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit_edge import __version__
from medvit_edge.errors import UserError
from medvit_edge.files import atomic_writer, check_writable_folder
from medvit_edge.hospital.audit import ModelIdentity
from medvit_edge.inference.rows import PredictionRow

logger = logging.getLogger(__name__)

RESEARCH_NOTICE = "RESEARCH USE ONLY: medvit-edge is not a medical device; not for diagnosis"
SCHEME = "99MEDVIT"
SERIES_NUMBER = 7500
SERIES_DESCRIPTION = "medvit-edge AI classification (RESEARCH USE ONLY)"
DICOM_OUT_HINT = "DICOM reports need highdicom: pip install 'medvit-edge[dicom]'"


class ReportError(ValueError):
    """A report could not be made or written; the message names the source and the cause."""


@dataclass(frozen=True)
class FrameResult:
    frame: int  # 0-based, as infer's frame column
    label: str
    probabilities: dict[str, float]
    decision: str = ""


def check_report_folder(folder: Path) -> None:
    """Before any work: highdicom is installed and ``folder`` is (or can be made) a writable
    folder. ``UserError`` (exit 2) otherwise."""
    try:
        import highdicom  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--dicom-out {folder}: {DICOM_OUT_HINT}") from exc
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--dicom-out {folder}: not a folder")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise UserError(f"--dicom-out {folder}: folder {folder.parent} does not exist")
        try:
            folder.mkdir()
        except OSError as exc:
            raise UserError(f"--dicom-out {folder}: cannot create it ({exc.strerror or exc})") from exc
    check_writable_folder(folder, f"--dicom-out {folder}")


def derived_uid(uid_root: str | None, *sources: str) -> str:
    """A UID under ``uid_root`` (pydicom's root when None) that the same sources always give."""
    from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

    return str(generate_uid(prefix=uid_root or PYDICOM_ROOT_UID, entropy_srcs=list(sources)))


def report_uid(source_sop_uid: str, model_sha256: str, uid_root: str | None = None) -> str:
    return derived_uid(uid_root, "medvit-edge sr", source_sop_uid, model_sha256)


def build_report(
    header: Any,
    results: list[FrameResult],
    labels: list[str],
    model: ModelIdentity,
    uid_root: str | None = None,
) -> Any:
    """The SR (a highdicom ``ComprehensiveSR``, a pydicom ``Dataset``) about one source instance,
    from its header (the dataset without pixel data) and one result per classified frame."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not results:
        raise ReportError("no classified frame to report")
    evidence = _evidence(header)
    multi_frame = int(evidence.NumberOfFrames) > 1
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        manufacturer="medvit-edge",
        parameters=[
            f"model_sha256={model.sha256}",
            f"variant={model.variant}",
            *([f"exported={model.exported}"] if model.exported else []),
            f"software=medvit-edge {__version__}",
            RESEARCH_NOTICE,
        ],
    )
    groups = [_group(hd, evidence, result, labels, algorithm, multi_frame, uid_root) for result in results]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(hd, codes, model, uid_root),
        procedure_reported=hd.sr.CodedConcept("16310003", "SCT", "Ultrasonography"),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=report,
        series_instance_uid=derived_uid(
            uid_root, "medvit-edge series", evidence.StudyInstanceUID, model.sha256
        ),
        series_number=SERIES_NUMBER,
        sop_instance_uid=report_uid(evidence.SOPInstanceUID, model.sha256, uid_root),
        instance_number=int(evidence.InstanceNumber),
        manufacturer="medvit-edge",
        manufacturer_model_name=model.name[-64:],
        software_versions=f"medvit-edge {__version__}",
        device_serial_number=model.sha256[:16],
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        contributing_equipment=[_contributing_equipment(hd, model, uid_root)],
    )
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    if any(
        not str(evidence.get(k) or "").isascii()
        for k in ("PatientName", "ReferringPhysicianName", "PatientID")
    ):
        sr.SpecificCharacterSet = "ISO_IR 192"  # copied names in UTF-8
    return sr


def _contributing_equipment(hd: Any, model: ModelIdentity, uid_root: str | None) -> Any:
    """IHE AI Results: the algorithm as contributing equipment, so a PACS or viewer tells an
    algorithm's report from a person's."""
    from pydicom.sr.codedict import codes

    item = hd.ContributingEquipment(
        manufacturer="medvit-edge",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[-64:],
        software_versions=[f"medvit-edge {__version__}", model.variant[:64], f"sha256 {model.sha256[:16]}"],
        contribution_description=f"AI classification (model version {model.version}, {model.variant})"[:1024],
    )
    item.DeviceUID = device_uid(model, uid_root)
    return item


def device_uid(model: ModelIdentity, uid_root: str | None = None) -> str:
    return derived_uid(uid_root, "medvit-edge device", model.sha256)


def encode_report(sr: Any) -> bytes:
    """The SR as a DICOM file's bytes (what the outbox holds and the PACS receives)."""
    from io import BytesIO

    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _evidence(header: Any) -> Any:
    """Only the checked attributes of the source header: what highdicom copies into the SR."""
    from medvit_edge.hospital.dicom_sanitize import SourceError, clean_source

    try:
        return clean_source(header)[0]
    except SourceError as exc:
        raise ReportError(str(exc)) from exc


def _observation_context(hd: Any, codes: Any, model: ModelIdentity, uid_root: str | None) -> Any:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(model, uid_root),
        name="medvit-edge",
        manufacturer_name="medvit-edge",
        model_name=model.name[-64:],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def _group(
    hd: Any,
    evidence: Any,
    result: FrameResult,
    labels: list[str],
    algorithm: Any,
    multi: bool,
    uid_root: str | None,
) -> Any:
    frames = [result.frame + 1] if multi else None
    source = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=evidence.SOPClassUID,
        referenced_sop_instance_uid=evidence.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )
    unit = hd.sr.CodedConcept("1", "UCUM", "ratio")
    measurements = [
        hd.sr.Measurement(
            name=_code(f"p:{label}", f"Probability of {label}"), value=result.probabilities[label], unit=unit
        )
        for label in labels
    ]
    finding = result.decision or result.label  # no policy: the decision is the most probable class
    evaluations = [
        hd.sr.QualitativeEvaluation(_code("finding", "Finding"), _code(finding, finding)),
        hd.sr.QualitativeEvaluation(
            _code("most-probable-class", "Most probable class"), _code(result.label, result.label)
        ),
    ]
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(uid_root, "medvit-edge frame", evidence.SOPInstanceUID, str(result.frame)),
        identifier=f"frame {result.frame + 1}",
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[source],
    )


def _code(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, SCHEME, meaning[:64])


def _private_scheme() -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "medvit-edge model labels and result concepts"
    item.CodingSchemeResponsibleOrganization = "medvit-edge"
    return item


def write_report(sr: Any, folder: Path) -> Path:
    """``folder/<SR SOP Instance UID>.dcm``, written atomically."""
    path = folder / f"{sr.SOPInstanceUID}.dcm"
    with atomic_writer(path, "wb") as handle:
        handle.write(encode_report(sr))
    return path


def frame_results(rows: Iterable[PredictionRow], labels: list[str]) -> list[FrameResult]:
    """The classified frames among one file's rows (error rows have nothing to report)."""
    return [
        FrameResult(row.frame, row.label, {label: row.probabilities[label] for label in labels}, row.decision)
        for row in rows
        if row.ok and row.label and row.frame is not None
    ]


def write_reports(
    rows: list[PredictionRow], labels: list[str], model: ModelIdentity, folder: Path
) -> tuple[list[Path], list[str]]:
    """``infer --dicom-out``: one SR per DICOM input with at least one classified frame. Returns
    the files written and one error per input whose report failed (the others go on)."""
    from medvit_edge.io.dicom import read_dicom_header

    by_file: dict[str, list[PredictionRow]] = {}
    for row in rows:
        if row.ids.sop_uid:
            by_file.setdefault(row.path, []).append(row)
    written, errors = [], []
    for path, file_rows in by_file.items():
        results = frame_results(file_rows, labels)
        if not results:
            continue
        try:
            header = read_dicom_header(path)
            if str(header.get("SOPInstanceUID", "")) != file_rows[0].ids.sop_uid:
                raise ReportError("the file changed after it was classified (another SOP Instance UID)")
            written.append(write_report(build_report(header, results, labels, model), folder))
        except (ReportError, ValueError, TypeError, AttributeError, OSError) as exc:
            # one report that cannot be made (a malformed header highdicom refuses) never stops the others
            errors.append(f"{path}: no DICOM report: {exc}")
            logger.warning("%s", errors[-1])
    return written, errors

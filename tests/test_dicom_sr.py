"""The SR the node and ``infer --dicom-out`` write: the decision is the finding, the algorithm is
named as IHE AI Results contributing equipment, UIDs live under the organisation's root, and
nothing malformed or hostile from the source is copied (the SR stays valid)."""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import pytest

from medvit_edge.errors import UserError
from medvit_edge.hospital.audit import ModelIdentity

from .hospital_dicom import clinical_dataset, malformed

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from medvit_edge.hospital.dicom_sr import (  # noqa: E402
    FrameResult,
    ReportError,
    build_report,
    encode_report,
    report_uid,
)
from medvit_edge.hospital.node_config import check_uid_root  # noqa: E402

LABELS = ["benign", "malignant", "normal"]
MODEL = ModelIdentity("run/model.int8.onnx", "3", "ab" * 32, "int8", exported="2026-01-02T03:04:05Z")


def _received(kind: str = "") -> Any:
    """The header of an instance as the node reads it off the wire."""
    frame = np.full((8, 8, 3), 7, np.uint8)
    ds = clinical_dataset(frame, pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), 3)
    if kind:
        ds = malformed(kind, ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)


def _valid_everywhere(dataset: Any) -> None:
    """Every element a valid value of its VR (pydicom's rules), recursively."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    for element in dataset.iterall():
        if element.VR in ("SQ", "OB", "OW", "UN") or element.value is None:
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            if isinstance(value, int | float):  # IS, DS, US...: typed, nothing to validate as text
                continue
            validate_value(element.VR, str(value), config.RAISE)
            assert "\n" not in str(value) and "\x1b" not in str(value), element


def test_the_finding_is_the_decision_and_the_argmax_is_the_most_probable_class() -> None:
    result = FrameResult(0, "benign", {"benign": 0.55, "malignant": 0.40, "normal": 0.05}, "malignant")
    sr = build_report(_received(), [result], LABELS, MODEL)
    (group,) = _groups(sr)
    finding, most_probable = group.get_qualitative_evaluations()
    assert (finding.name.meaning, finding.value.meaning) == ("Finding", "malignant")
    assert (most_probable.name.meaning, most_probable.value.meaning) == ("Most probable class", "benign")
    no_policy = build_report(_received(), [FrameResult(0, "normal", result.probabilities)], LABELS, MODEL)
    assert _groups(no_policy)[0].get_qualitative_evaluations()[0].value.meaning == "normal"


def _groups(sr: Any) -> list[Any]:
    return list(hd.sr.srread(io.BytesIO(encode_report(sr))).content.get_image_measurement_groups())


def test_every_sr_names_the_algorithm_as_contributing_equipment_under_the_uid_root() -> None:
    root = check_uid_root("1.2.826.0.1.3680043.10.1234")
    header = _received()
    sr = build_report(header, [FrameResult(0, "normal", dict.fromkeys(LABELS, 1 / 3))], LABELS, MODEL, root)
    algorithm = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
    ]
    (item,) = [i for i in algorithm if i.Manufacturer == "medvit-edge"]
    assert item.ManufacturerModelName == MODEL.name and item.DeviceUID.startswith(root)
    assert any("medvit-edge" in version for version in item.SoftwareVersions)
    assert sr.SOPInstanceUID == report_uid(header.SOPInstanceUID, MODEL.sha256, root)
    assert sr.SOPInstanceUID.startswith(root) and sr.SeriesInstanceUID.startswith(root)
    again = build_report(
        header, [FrameResult(0, "normal", dict.fromkeys(LABELS, 1 / 3))], LABELS, MODEL, root
    )
    assert again.SOPInstanceUID == sr.SOPInstanceUID  # a resend replaces, never duplicates
    for bad in ("1.2.abc", "01.2", "1." * 30, ""):
        with pytest.raises(UserError, match="--uid-root"):
            check_uid_root(bad)


def test_malformed_and_hostile_attributes_are_left_out_and_the_sr_stays_valid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    header = _received("hostile-attributes")
    with caplog.at_level(logging.WARNING, logger="medvit_edge"):
        sr = build_report(header, [FrameResult(0, "benign", dict.fromkeys(LABELS, 1 / 3))], LABELS, MODEL)
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "PatientBirthDate '31/12/1999' left out of the SR" in log
    assert "InstanceNumber 'ab' left out of the SR" in log and "PatientName 'AAAA" in log
    assert "\n" not in log.replace("\n", "", len(caplog.records) - 1)  # one line per warning
    assert sr.PatientBirthDate in ("", None) and sr.PatientName in ("", None) and sr.PatientID in ("", None)
    assert "StudyDescription" not in sr or not sr.StudyDescription
    assert sr.PatientSex == "F" and sr.AccessionNumber == "ACC0001"  # the valid ones are kept
    _valid_everywhere(sr)
    from pydicom import config

    with config.strict_reading():
        buffer = io.BytesIO(encode_report(sr))
    config.settings.writing_validation_mode = config.RAISE
    try:
        hd.sr.srread(buffer).save_as(io.BytesIO())
    finally:
        config.settings.writing_validation_mode = config.WARN


def test_a_source_with_an_invalid_or_missing_uid_has_no_report() -> None:
    header = _received()
    header.SOPInstanceUID = "1.2.3.abc"
    with pytest.raises(ReportError, match="not a valid UID"):
        build_report(header, [FrameResult(0, "normal", dict.fromkeys(LABELS, 1 / 3))], LABELS, MODEL)
    del header.SOPInstanceUID
    with pytest.raises(ReportError, match="no SOPInstanceUID"):
        build_report(header, [FrameResult(0, "normal", dict.fromkeys(LABELS, 1 / 3))], LABELS, MODEL)

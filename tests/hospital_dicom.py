"""Ultrasound DICOM files as a hospital sends them (patient, study and series filled in), and the
malformed instances a DICOM node must survive; for the DICOM end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dicom_files import write_us_dicom

PATIENT = {
    "PatientID": "PHANTOM-001",
    "PatientName": "Phantom^Test",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyDate": "20260102",
    "StudyTime": "101500",
    "AccessionNumber": "ACC0001",
    "StudyID": "S1",
    "ReferringPhysicianName": "Doctor^Referring",
}


def write_clinical_us(
    path: Path,
    frames: list[np.ndarray],
    study_uid: str | None = None,
    series_uid: str | None = None,
    photometric: str = "RGB",
    instance_number: int = 1,
) -> Path:
    """``write_us_dicom`` plus the patient, study and series a scanner always writes."""
    import pydicom
    from pydicom.uid import generate_uid

    write_us_dicom(path, frames, photometric)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def clinical_dataset(frame: np.ndarray, study_uid: str, series_uid: str, number: int):
    """A single-frame RGB ultrasound dataset in memory (what a modality sends)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .dicom_files import US_IMAGE

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, number
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = frame.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    return ds


def malformed(kind: str, template):
    """A copy of ``template`` broken one way: ``no-pixels``, ``short-pixels`` (pixel data of the
    wrong length), ``not-an-image`` (a Comprehensive SR, no pixels, Modality SR),
    ``wrong-modality`` (Modality MR) or ``hostile-attributes`` (an image that can be classified,
    with a malformed PatientBirthDate and InstanceNumber, a 10 KB PatientName, control characters
    in PatientID and a forged log line in StudyDescription)."""
    import copy

    from pydicom.uid import generate_uid

    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    if kind == "no-pixels":
        del ds.PixelData
    elif kind == "short-pixels":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 + 1]
    elif kind == "not-an-image":
        ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.88.33", "SR"
        for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation"):
            delattr(ds, keyword)
        for keyword in (
            "PlanarConfiguration",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
        ):
            delattr(ds, keyword)
    elif kind == "wrong-modality":
        ds.Modality = "MR"
    elif kind == "hostile-attributes":
        raw_values = {
            0x00100030: ("DA", b"31/12/1999"),
            0x00200013: ("IS", b"ab"),
            0x00100010: ("PN", b"A" * 10240),
            0x00100020: ("LO", b"ID\x1b[31m\x07"),
            0x00081030: ("LO", b"x\nINFO forged line"),
        }
        for tag, (vr, value) in raw_values.items():
            ds[tag] = _raw(tag, vr, value)
    else:
        raise ValueError(kind)
    return ds


def _raw(tag: int, vr: str, value: bytes):
    """An element exactly as a careless sender encodes it (pydicom would refuse to make it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    padded = value + (b" " if len(value) % 2 else b"")
    return RawDataElement(Tag(tag), vr, len(padded), padded, 0, False, True)

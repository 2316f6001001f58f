"""Ultrasound DICOM files built from images, for the DICOM tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def write_us_dicom(path: Path, frames: list[np.ndarray], photometric: str = "RGB") -> Path:
    """Uncompressed ultrasound DICOM from uint8 frames (HxWx3 RGB, or HxW for MONOCHROME2)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stack = np.stack(frames)
    if photometric == "YBR_FULL":
        stack = np.stack([convert_color_space(f, "RGB", "YBR_FULL") for f in stack])
    if photometric == "MONOCHROME2" and stack.ndim == 4:
        stack = stack[..., 0]
    sop_class = US_MULTIFRAME if len(frames) > 1 else US_IMAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = stack.shape[1], stack.shape[2]
    ds.SamplesPerPixel = 1 if photometric == "MONOCHROME2" else 3
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(stack).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path

"""Hospital integration: the DICOM node (``serve-dicom``), DICOM SR reports and the audit log."""

"""What an SR copies from the instance it reports on: a short list of attributes, each checked.

A sender controls every byte of what it sends. The SR copies only the patient and study
attributes PACS needs to file it (``COPIED``), and each only when it is a valid value of its VR
(pydicom's validation: length, characters, date and time formats), has no control character
and no backslash (a single value). A malformed optional attribute (a ``PatientBirthDate`` of
``31/12/1999``, an ``InstanceNumber`` of ``ab``, a 10 KB ``PatientName``) is left out with a
warning and the SR is still made; the UIDs the SR must reference (study, series, SOP instance,
SOP class) must be valid UIDs, or there is no SR (``ReportError``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from medvit_edge.errors import printable

logger = logging.getLogger(__name__)

REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# keyword: VR. Type 2 in the SR's Patient and General Study modules: present, maybe empty.
COPIED = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
}
OPTIONAL = {"IssuerOfPatientID": "LO", "StudyDescription": "LO"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_SEXES = {"M", "F", "O"}


class SourceError(ValueError):
    """The source cannot be referenced by a report."""


def clean_source(header: Any) -> tuple[Any, list[str]]:
    """A new dataset with only the checked attributes of ``header``, and one warning per
    attribute left out (also logged)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

    source_uid = printable(_raw(header, "SOPInstanceUID") or "(no SOP Instance UID)")
    clean, dropped = Dataset(), []
    for keyword in REFERENCED_UIDS:
        value = _raw(header, keyword)
        if not value:
            dropped.append(keyword)
        elif not UID(value).is_valid:
            raise SourceError(f"the source's {keyword} {printable(value)!r} is not a valid UID")
        else:
            setattr(clean, keyword, value)
    missing = [keyword for keyword in dropped if keyword in REFERENCED_UIDS]
    if missing:
        raise SourceError(f"the source has no {', '.join(missing)}: a report cannot reference it")
    warnings = []
    for keyword, vr in {**COPIED, **OPTIONAL}.items():
        value = _raw(header, keyword)
        problem = _problem(vr, value) if value else ""
        if problem:
            warnings.append(f"{keyword} '{printable(value)[:40]}' left out of the SR ({problem})")
            value = None
        if value or keyword in COPIED:
            setattr(clean, keyword, value or None)
    frames = _integer(header, "NumberOfFrames")
    clean.NumberOfFrames = frames if frames and frames > 0 else 1
    number = _integer(header, "InstanceNumber")
    if number is None and _raw(header, "InstanceNumber"):
        shown = printable(_raw(header, "InstanceNumber"))[:40]
        warnings.append(f"InstanceNumber '{shown}' left out of the SR (not an integer)")
    clean.InstanceNumber = number if number is not None and 0 <= number < 2**31 else 1
    for warning in warnings:
        logger.warning("instance %s: %s", source_uid, warning)
    return clean, warnings


def _raw(header: Any, keyword: str) -> str:
    """The value as text, or "" when it is absent or cannot even be read."""
    try:
        value = header.get(keyword)
    except Exception:  # a value pydicom cannot convert reads as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if not isinstance(value, str) and hasattr(value, "__iter__") and type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _problem(vr: str, value: str) -> str:
    from pydicom import config
    from pydicom.valuerep import validate_value

    if _CONTROL.search(value):
        return "control characters or more than one value"
    if vr == "CS" and value.strip() not in _SEXES:
        return "not M, F or O"
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError) as exc:
        return str(exc).split(" Please see")[0].rstrip(".")
    return ""


def _integer(header: Any, keyword: str) -> int | None:
    text = _raw(header, keyword).strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,10}", text):
        return None
    return int(text)

"""The export stage (installed as ``medvit_edge.export``; needs the ``[export]`` extra)."""

from .config import INT8_PRESETS, ExportConfig, Tolerance
from .run import ExportResult, ExportValidationError, export

__all__ = ["INT8_PRESETS", "ExportConfig", "ExportResult", "ExportValidationError", "Tolerance", "export"]

"""The export stage (installed as ``medvit_edge.export``; needs the ``[export]`` extra).

Names resolve lazily, so ``medvit_edge.export.config`` (options and defaults for the CLI) imports
without torch or onnx.
"""

from medvit_edge.lazy import lazy_getattr

_LAZY = {
    "ExportConfig": ".config",
    "Int8Config": ".config",
    "ExportResult": ".run",
    "ExportValidationError": ".run",
    "Exporter": ".run",
    "export": ".run",
}
__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

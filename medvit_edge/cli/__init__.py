"""The ``medvit-edge`` command line: thin click adapters (one module per group of commands) that
build a stage's config and call the library. ``main`` is the click group."""

from medvit_edge.cli.app import configure_logging, main
from medvit_edge.cli.common import require

__all__ = ["configure_logging", "main", "require"]

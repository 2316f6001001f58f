"""Lazy package attributes: ``import medvit_edge.train`` (or ``.export``, or ``medvit_edge``)
stays instant and torch-free, and a name's module is imported the first time it is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` from ``table[name]`` (a module, absolute or
    relative to ``package``)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name], package), name)

    return __getattr__


def import_optional(*modules: str, hint: str, error: type[Exception] | None = None) -> Any:
    """Import ``modules`` in turn and return the first; when one is missing, raise ``error``
    (``UserError``, exit 2, by default) with ``hint``: the ``pip install`` line of its extra."""
    from medvit_edge.errors import UserError

    try:
        found = [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        raise (error or UserError)(hint) from exc
    return found[0]

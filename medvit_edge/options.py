"""One source per option: choices come from ``Literal`` aliases, defaults from config dataclasses.

The click commands derive their choices and shown defaults from here, and every config
dataclass calls ``validate_literals`` in ``__post_init__``, so a value read from a YAML file
(``precision: bf61``) is refused exactly like the same typo on the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from medvit_edge.errors import UserError


def literal_values(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` (or ``Literal | None``) annotation, else None."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [literal_values(arg) for arg in typing.get_args(annotation)]
        if any(part is not None for part in parts):
            allowed: list[Any] = []
            for arg, part in zip(typing.get_args(annotation), parts):
                allowed.extend(part if part is not None else ([None] if arg is type(None) else []))
            return tuple(allowed)
    return None


def validate_literals(instance: Any) -> None:
    """Raise ``UserError`` when a ``Literal``-typed field of a config holds another value."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        allowed = literal_values(hints.get(field.name))
        value = getattr(instance, field.name)
        if allowed is not None and value not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise UserError(f"{field.name}: {value!r} is not one of: {shown}")


def field_default(config_class: type, name: str) -> Any:
    """The default of one field of a config dataclass (what the CLI shows and uses)."""
    field = config_class.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise KeyError(f"{config_class.__name__}.{name} has no default")


def choices(alias: Any) -> list[str]:
    """The values of a ``Literal`` alias, for ``click.Choice``."""
    values = literal_values(alias)
    if values is None:
        raise TypeError(f"{alias!r} is not a Literal")
    return [str(v) for v in values if v is not None]

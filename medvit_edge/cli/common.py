"""What every command shares: the missing-extra check and small option helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from medvit_edge.errors import EXIT_UNUSABLE
from medvit_edge.options import field_default

EXTRA_MODULES = {
    "train": ("torch", "torchvision", "transformers", "accelerate", "matplotlib"),
    "export": ("torch", "transformers", "optimum", "onnx", "onnxruntime"),
    "runtime": ("onnxruntime",),
    "ray": ("onnxruntime", "ray"),
}
EXTRA_FOR = {"train": "train", "export": "export,cpu", "runtime": "cpu", "ray": "ray,cpu"}


class MissingExtra(click.ClickException):
    exit_code = EXIT_UNUSABLE


def require(stage: str) -> None:
    """Exit 2 with the install line when the stage's optional dependencies are missing."""
    missing = [m for m in EXTRA_MODULES[stage] if importlib.util.find_spec(m) is None]
    if missing:
        extra = EXTRA_FOR[stage]
        hint = (
            "'medvit-edge[cpu]' (or [gpu] on an NVIDIA machine)"
            if stage == "runtime"
            else f"'medvit-edge[{extra}]'"
        )
        raise MissingExtra(
            f"this command needs packages that are not installed: {', '.join(missing)}.\n"
            f"Install it with: pip install {hint}"
        )


def only_given(**values: Any) -> dict[str, Any]:
    """Only the options the user set (None means 'not given'), so config files and defaults win."""
    return {key: value for key, value in values.items() if value is not None}


def default_text(config: type, name: str) -> str:
    return f"[default: {field_default(config, name)}]"


def existing_path(flag: str, help_text: str) -> Any:
    """An option naming a file or folder that must exist (click says which, with exit 2)."""
    return click.option(flag, type=click.Path(exists=True, path_type=Path), help=help_text)


def new_path_option(flag: str, help_text: str, folder: bool) -> Any:
    """An option naming a folder (``folder=True``) or a file that the command will write."""
    kind = click.Path(file_okay=not folder, dir_okay=folder, path_type=Path)
    return click.option(flag, type=kind, help=help_text)


def config_default(flag: str, config: type, field: str, kind: type, help_text: str) -> Any:
    """An option whose default is the config dataclass's (shown in --help)."""
    return click.option(
        flag, type=kind, default=field_default(config, field), show_default=True, help=help_text
    )

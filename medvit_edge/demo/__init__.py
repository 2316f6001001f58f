"""The offline demo and its synthetic phantom data: a module group of their own, outside the
runtime's import path (the runtime never imports them)."""

from .run import DemoConfig, DemoResult, demo

__all__ = ["DemoConfig", "DemoResult", "demo"]

"""The offline demo (phantom data from medvit_edge.io.phantom, train, export, infer): a module
group of its own, outside the runtime's import path (the runtime never imports it)."""

from .run import DemoConfig, DemoResult, demo

__all__ = ["DemoConfig", "DemoResult", "demo"]

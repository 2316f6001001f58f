"""The training stage (installed as ``medvit_edge.train``; needs the ``[train]`` extra)."""

from .config import COOKBOOK_DATA, COOKBOOK_MODEL, TrainConfig
from .run import TrainResult, train

__all__ = ["COOKBOOK_DATA", "COOKBOOK_MODEL", "TrainConfig", "TrainResult", "train"]

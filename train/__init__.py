"""The training stage (installed as ``medvit_edge.train``; needs the ``[train]`` extra).

Names resolve lazily, so ``medvit_edge.train.config`` (options and defaults for the CLI) imports
without torch.
"""

from medvit_edge.lazy import lazy_getattr

_LAZY = {
    "COOKBOOK_DATA": ".config",
    "COOKBOOK_MODEL": ".config",
    "TrainConfig": ".config",
    "TrainResult": ".run",
    "train": ".run",
}
__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

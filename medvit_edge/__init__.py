"""medvit-edge: ViT classifiers for medical images, from fine-tuning to an edge runtime.

The runtime (``Classifier``, preprocessing, metadata) needs only numpy, Pillow and one
onnxruntime build; training and export live in ``medvit_edge.train`` and ``medvit_edge.export``
and need the ``[train]`` / ``[export]`` extras. Nothing heavy is imported here.
"""

from __future__ import annotations

import pkgutil

# train/ and export/ are mapped into this package at install time. When the source tree's
# medvit_edge/ shadows an installed copy (running from the repo root), this lets Python find
# the installed medvit_edge.train / medvit_edge.export too.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from medvit_edge.lazy import lazy_getattr

if TYPE_CHECKING:  # what type checkers and the API reference see; at run time _LAZY imports them
    from medvit_edge.errors import ModelLoadError as ModelLoadError
    from medvit_edge.errors import UserError as UserError
    from medvit_edge.runtime.classifier import Classifier as Classifier
    from medvit_edge.runtime.classifier import Prediction as Prediction
    from medvit_edge.runtime.metadata import ModelMetadata as ModelMetadata
    from medvit_edge.runtime.preprocess import PreprocessSpec as PreprocessSpec
    from medvit_edge.runtime.variants import VARIANTS as VARIANTS

_LAZY = {
    "Classifier": "medvit_edge.runtime.classifier",
    "Prediction": "medvit_edge.runtime.classifier",
    "ModelLoadError": "medvit_edge.errors",
    "UserError": "medvit_edge.errors",
    "PreprocessSpec": "medvit_edge.runtime.preprocess",
    "preprocess": "medvit_edge.runtime.preprocess",
    "ModelMetadata": "medvit_edge.runtime.metadata",
    "VARIANTS": "medvit_edge.runtime.variants",
}

__all__ = ["__version__", *_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY)

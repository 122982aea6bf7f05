"""PyTorch models of H2G-Net (training extra): patch classifiers and refinement networks.

Importing a name from here imports torch; the ONNX-Runtime inference core never
does.  Names are resolved lazily so ``python -m h2gnet.train.models.unets``
runs without importing the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from h2gnet.train.models.classifier import PatchClassifier, build_classifier
    from h2gnet.train.models.common import calibrate_batchnorm, keras_style_count, parameter_count
    from h2gnet.train.models.unets import Refiner, build_refiner

_EXPORTS = {
    "PatchClassifier": "h2gnet.train.models.classifier",
    "build_classifier": "h2gnet.train.models.classifier",
    "Refiner": "h2gnet.train.models.unets",
    "build_refiner": "h2gnet.train.models.unets",
    "calibrate_batchnorm": "h2gnet.train.models.common",
    "keras_style_count": "h2gnet.train.models.common",
    "parameter_count": "h2gnet.train.models.common",
}

__all__ = [  # noqa: RUF022 - the names of _EXPORTS, written out for linters
    "PatchClassifier", "Refiner", "build_classifier", "build_refiner", "calibrate_batchnorm", "keras_style_count",
    "parameter_count",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""textclf: train, tune, compare and serve text classifiers behind one Predictor.

The package is layered: ``textclf.core`` (config, formats, metrics, registry, the Predictor
contract, meta, integrity) < ``textclf.families`` < ``textclf.services`` (runs, search,
tracking, queue, compare, serving, export) < ``textclf.cli``. The names below are imported on
first use, so ``import textclf`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from textclf import _aliases

_aliases.install()

__version__ = "0.1.0"

#: public name -> "module:attr"
_LAZY = {
    "Predictor": "textclf.core.predictor:Predictor",
    "load_predictor": "textclf.core.loading:load_predictor",
    "load": "textclf.services.estimator:load",
    "TextClassifier": "textclf.services.estimator:TextClassifier",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'textclf' has no attribute {name!r}")
    module, attr = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value

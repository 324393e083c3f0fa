"""The module paths of textclf before its layered layout (v1), kept importable.

Plug-in files written for v1 (and copied into the model directories they trained, which must
keep loading) import ``textclf.registry``, ``textclf.training``, ``textclf.tuning`` and so on.
Each old name is an alias of its module in the layered package: ``import textclf.registry``
gives the very module object ``textclf.core.registry`` is, so state such as the family registry
is shared. Nothing inside textclf imports these names (an import-linter contract checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: v1 module (under ``textclf.``) -> its module now
ALIASES = {
    "atomic": "core.atomic", "errors": "core.errors", "config": "core.config", "data": "core.data",
    "metrics": "core.metrics", "registry": "core.registry", "predictor": "core.predictor", "meta": "core.meta",
    "integrity": "core.integrity", "tempfiles": "core.tempfiles", "progress": "core.progress",
    "class_weights": "core.class_weights", "torch_common": "core.torch_common", "precision": "core.precision",
    "training": "core.training", "tuning": "core.tuning", "onnx_backend": "core.onnx_runtime",
    "thresholds": "services.compare.thresholds", "leaderboard": "services.compare.leaderboard",
    "report": "services.compare.report", "ensemble": "services.compare.ensemble", "tracking": "services.tracking",
    "run_queue": "services.queue", "experiments": "services.experiments", "serving": "services.serving",
    "onnx_export": "services.export",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``textclf.<v1 name>`` (and its submodules) to the module of the layered package."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("textclf."):
            return None
        head, _, rest = fullname[len("textclf."):].partition(".")
        if head not in ALIASES:
            return None
        new = "textclf." + ALIASES[head] + (f".{rest}" if rest else "")
        if importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())

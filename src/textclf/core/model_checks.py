"""Checks a loader runs on what it read, so that a model directory that does not hold together is one line.

A deserialized object of the wrong type (a "classifier" without ``predict_proba``) or a model
whose outputs disagree with ``meta.json``'s ``labels`` would otherwise fail later, at predict
time, with an ``AttributeError``/``KeyError``/shape traceback, or predict wrong labels in silence.
Every loader calls these right after reading its file (the scikit-learn pipelines, the embeddings
classifier, the SetFit head, the ensemble's stacker, the LSTM and BERT heads, fastText's labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textclf.core.errors import ModelError


def _labels_text(labels: Sequence[Any]) -> str:
    shown = ", ".join(map(str, list(labels)[:5]))
    return shown + (", ..." if len(labels) > 5 else "")


def check_loaded_object(obj: Any, path: str | Path, methods: Sequence[str] = ("predict_proba",),
                        what: str = "classifier", attributes: Sequence[str] = ()) -> Any:
    """``obj`` when it has every callable in ``methods`` and every attribute in ``attributes``; returns ``obj``.

    Else a ModelError naming ``path``, what the file should hold (``what``: ``classifier``,
    ``pipeline``, ``stacker``...) and the type it holds instead.
    """
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    missing += [a for a in attributes if not hasattr(obj, a)]
    if missing:
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        raise ModelError(f"{path}: expected a {what} with {', '.join([*methods, *attributes])}, found a {kind} without "
                         f"{', '.join(missing)}; the file does not belong to this model")
    return obj


def check_label_count(path: str | Path, n_outputs: int, labels: Sequence[Any]) -> None:
    """A ModelError unless a model with ``n_outputs`` classes matches meta.json's ``labels`` (one output each)."""
    if int(n_outputs) != len(labels):
        raise ModelError(f"{path}: the model has {n_outputs} classes but meta.json lists {len(labels)} label(s) "
                         f"({_labels_text(labels)}); meta.json and the model do not belong together")


def check_label_indices(obj: Any, path: str | Path, labels: Sequence[Any]) -> None:
    """A ModelError unless ``obj.classes_`` are label indices ``0 .. len(labels)-1`` (the embeddings/SetFit heads)."""
    classes = getattr(obj, "classes_", None)
    try:
        indices = [int(c) for c in classes] if classes is not None else None
    except (TypeError, ValueError):
        indices = None
    if indices is None or any(c != i for c, i in zip(indices, classes, strict=True)):
        raise ModelError(f"{path}: the classifier's classes_ are not label indices; the file does not belong to this model")
    if any(i < 0 or i >= len(labels) for i in indices):
        raise ModelError(f"{path}: the classifier has classes {_labels_text(indices)} but meta.json lists "
                         f"{len(labels)} label(s) ({_labels_text(labels)}); meta.json and the model do not belong together")


def check_label_names(path: str | Path, classes: Sequence[Any], labels: Sequence[Any]) -> None:
    """A ModelError when the model has a class that meta.json's ``labels`` lacks (a scikit-learn pipeline's classes_)."""
    unknown = [str(c) for c in classes if str(c) not in {str(label) for label in labels}]
    if unknown:
        raise ModelError(f"{path}: the model has classes ({_labels_text([str(c) for c in classes])}) that meta.json's "
                         f"labels ({_labels_text(labels)}) lack: {_labels_text(unknown)}; "
                         "meta.json and the model do not belong together")

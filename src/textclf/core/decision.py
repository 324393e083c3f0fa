"""The decision rule every Predictor applies: ``argmax(log p + offsets)`` with the per-class offsets of meta.json.

The offsets are tuned by ``textclf tune-thresholds`` (:mod:`textclf.services.compare.thresholds`);
this module only reads and applies them, so loading a model needs nothing from the services layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textclf.core.errors import ModelError

#: meta.json key holding the tuned offsets and how they were found
META_KEY = "thresholds"
#: probabilities are clipped to this before the log, so a zero probability stays finite
EPS = 1e-12

def log_proba(proba: np.ndarray) -> np.ndarray:
    """``log(max(p, EPS))`` elementwise."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, None))


def decide(proba: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Index of the predicted class of every row: ``argmax(p)``, or ``argmax(log p + offsets)`` when given."""
    proba = np.asarray(proba)
    if offsets is None:
        return proba.argmax(axis=1)
    return (log_proba(proba) + np.asarray(offsets, dtype=np.float64)).argmax(axis=1)


def offsets_from_meta(meta: dict, labels: Sequence[str]) -> np.ndarray | None:
    """The offsets a ``meta.json`` stores, in ``labels`` order, or None when it stores none."""
    block = meta.get(META_KEY)
    if not block:
        return None
    offsets = block.get("offsets") if isinstance(block, dict) else None
    if not isinstance(offsets, dict) or set(offsets) != set(labels):
        raise ModelError(f"meta.json: {META_KEY}.offsets must map every label ({', '.join(labels)}) to a number; "
                         f"rerun textclf tune-thresholds (or --reset)")
    try:
        return np.array([float(offsets[label]) for label in labels], dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"meta.json: {META_KEY}.offsets holds a value that is not a number") from None

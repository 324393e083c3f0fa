"""The decision rule every Predictor applies: ``argmax(log p + offsets)`` with the per-class offsets of meta.json.

Multi-label models (``meta.json`` ``"task": "multilabel"``) instead predict every label whose
independent probability reaches its threshold: the per-label ones ``textclf tune-thresholds``
stored (``thresholds.per_label``), else the config's global ``decision.threshold`` (default 0.5);
``decision.at_least_one`` (off by default) adds the most probable label to a text that got none.

The offsets and thresholds are tuned by ``textclf tune-thresholds`` (:mod:`textclf.services.compare.thresholds`);
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
#: a multi-label model's global threshold when its config names none
DEFAULT_THRESHOLD = 0.5

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


def decide_multilabel(proba: np.ndarray, thresholds: np.ndarray | float, at_least_one: bool = False) -> np.ndarray:
    """Boolean ``(n, L)`` matrix of the labels predicted for every row: ``p >= threshold`` (per label or one for all).

    ``at_least_one``: a row with no label above its threshold gets its most probable label.
    """
    proba = np.asarray(proba, dtype=np.float64)
    chosen = proba >= np.asarray(thresholds, dtype=np.float64)
    if at_least_one and len(proba) and proba.shape[1]:
        empty = ~chosen.any(axis=1)
        chosen[np.flatnonzero(empty), proba[empty].argmax(axis=1)] = True
    return chosen


def decision_settings(meta: dict) -> tuple[float, bool]:
    """The config's global ``decision.threshold`` and ``decision.at_least_one`` (0.5 and off when it has none)."""
    block = (meta.get("config") or {}).get("decision") or {}
    try:
        threshold = float(block.get("threshold", DEFAULT_THRESHOLD))
    except (TypeError, ValueError):
        raise ModelError("meta.json: config.decision.threshold is not a number") from None
    return threshold, bool(block.get("at_least_one", False))


def thresholds_from_meta(meta: dict, labels: Sequence[str]) -> tuple[np.ndarray, bool] | None:
    """A multi-label model's tuned ``(per-label thresholds in labels order, at_least_one)``, or None when none are stored."""
    block = meta.get(META_KEY)
    if not block:
        return None
    per_label = block.get("per_label") if isinstance(block, dict) else None
    if not isinstance(per_label, dict) or set(per_label) != set(labels):
        raise ModelError(f"meta.json: {META_KEY}.per_label must map every label ({', '.join(labels)}) to a threshold; "
                         f"rerun textclf tune-thresholds (or --reset)")
    try:
        values = np.array([float(per_label[label]) for label in labels], dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"meta.json: {META_KEY}.per_label holds a value that is not a number") from None
    return values, bool(block.get("at_least_one", decision_settings(meta)[1]))

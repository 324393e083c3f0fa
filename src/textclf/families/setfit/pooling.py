"""``encoder.chunk_pooling: auto`` for the setfit family: pool the windows every way, keep the best on valid.

With ``long_text: chunk`` the tuned encoder's windows of train and valid are encoded once. Each pooling
(:data:`CANDIDATES`: ``mean`` first, so a tie keeps the default) pools them, a head is fitted on the pooled
train rows and scored on the pooled valid rows (:func:`.head.valid_score`: macro-F1, or micro-F1 for label
sets), and the best is kept (:func:`pick`): a later candidate must beat the best so far by more than half a
valid document's worth (``0.5 / len(valid)``), so a difference no valid document makes is a tie. No pooling
wins everywhere (benchmarks/README.md, "Long documents: SetFit chunk vs truncate"), and the head is the cheap
part of a SetFit fit: the contrastive stage and the encoding are shared, so choosing costs two more head
fits. The model records the pooling chosen (``encoder.chunk_pooling`` in meta.json, which prediction reads)
and every candidate's score (``long_text.pooling_choice``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclf.families.common.chunking import ChunkSettings, pool_windows
from textclf.families.setfit.head import LogregHead, TorchHead, valid_metric, valid_score
from textclf.families.setfit.model import embed_windows

log = logging.getLogger(__name__)

#: the poolings ``auto`` tries, in the order that breaks ties
CANDIDATES = ("mean", "length", "max")


@dataclass
class PoolingChoice:
    """What :func:`choose_pooling` kept: the settings with the chosen pooling, its fitted head, the pooled
    train/valid rows, the chunk statistics of both splits, the meta.json record of the choice and the seconds
    spent fitting the heads (all candidates)."""

    chunking: ChunkSettings
    head: TorchHead | LogregHead
    x_train: np.ndarray
    x_valid: np.ndarray
    stats_train: dict
    stats_valid: dict
    record: dict
    head_seconds: float


def choose_pooling(model: Any, train_texts: Sequence[str], valid_texts: Sequence[str], batch_size: int,
                   chunking: ChunkSettings, new_head: Callable[[int], TorchHead | LogregHead],
                   y_train: np.ndarray, y_valid: np.ndarray) -> PoolingChoice:
    """Fit a head (``new_head(dim)``, the same seed each time) on every pooling of the train windows and keep the
    pooling whose head scores best on the valid windows pooled the same way (ties, within ``0.5 / len(valid)``: the
    earlier of :data:`CANDIDATES`). With no valid rows there is nothing to choose on: ``mean``."""
    w_train, v_train = embed_windows(model, train_texts, batch_size, chunking)
    w_valid, v_valid = embed_windows(model, valid_texts, batch_size, chunking)
    candidates = CANDIDATES if len(y_valid) else CANDIDATES[:1]
    tolerance = 0.5 / max(1, len(y_valid))
    scores: dict[str, float] = {}
    fitted = {}
    head_seconds = 0.0
    for how in candidates:
        x_train = pool_windows(w_train, v_train, how, normalize=True)
        x_valid = pool_windows(w_valid, v_valid, how, normalize=True)
        start = time.monotonic()
        head = new_head(x_train.shape[1]).fit(x_train, y_train, x_valid, y_valid)
        head_seconds += time.monotonic() - start
        scores[how] = round(valid_score(head, x_valid, y_valid), 5) if len(y_valid) else 0.0
        fitted[how] = (head, x_train, x_valid)
    how = pick(scores, tolerance)
    head, x_train, x_valid = fitted[how]
    metric = valid_metric(head)
    log.info("setfit: chunk_pooling auto -> %s (%s)", how,
             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) if len(y_valid) else "no valid rows")
    record = {"chosen": how, "metric": metric, "scores": scores if len(y_valid) else {},
              "tie_tolerance": round(tolerance, 6)}
    return PoolingChoice(chunking.with_pooling(how), head, x_train, x_valid, w_train.stats(), w_valid.stats(), record,
                         head_seconds)


def pick(scores: dict[str, float], tolerance: float) -> str:
    """The first of ``scores`` (in order) unless a later one beats the best so far by more than ``tolerance``."""
    names = list(scores)
    kept = names[0]
    for how in names[1:]:
        if scores[how] > scores[kept] + tolerance:
            kept = how
    return kept

"""Search-trial memo: the valid-split probabilities of every evaluated trial, kept beside the embeddings.

A search trial is a pure function of its inputs: the train and valid vectors (named by their
embedding-cache keys), the training labels and rows, the classifier, its parameters, the
balancing and the seed. The memo stores the trial's valid probabilities under the sha256 of all
of them (plus the scikit-learn version), in ``<cache root>/trials/<key>.npy``. A second search on
the same data (a rerun after a crash before the refit, a study extended with more trials, the
same combination in another sweep or on another worker sharing the cache) loads each trial it has
already evaluated instead of fitting it again; any change of data, labels, rows, parameters or
seed is a different key. Writes are atomic (temp file + rename), so concurrent workers are safe.
``search.memo: false`` turns it off; ``textclf embed rm --all`` clears it with the embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.atomic import atomic_replace_file

log = logging.getLogger(__name__)

#: subdirectory of the embedding cache root holding the memo
SUBDIR = "trials"


def trial_key(vector_keys: dict[str, str], labels: Sequence[str], y_train: np.ndarray, rows: np.ndarray | None,
              classifier: str, params: dict, balance: bool, seed: int) -> str:
    """The sha256 naming one trial's result (every input that changes the fitted classifier is part of it)."""
    import sklearn

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(y_train, dtype=np.int64).tobytes())
    if y_train.ndim == 2:  # a label indicator matrix (multi-label)
        h.update(f"multilabel{y_train.shape}".encode())
    if rows is not None:
        h.update(b"rows")
        h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    doc = {"train": vector_keys["train"], "valid": vector_keys["valid"], "labels": list(labels), "y_rows": h.hexdigest(),
           "classifier": classifier, "params": params, "balance": bool(balance), "seed": int(seed),
           "sklearn": sklearn.__version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class TrialMemo:
    """Valid probabilities of evaluated trials under ``<root>/trials``."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / SUBDIR

    def path(self, key: str) -> Path:
        """The ``.npy`` file of ``key``."""
        return self.dir / f"{key}.npy"

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The stored probabilities of ``key`` when present and of ``shape``; None otherwise (a miss)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            proba = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("trial memo %s unreadable (%s): refitting", key[:12], exc)
            return None
        return proba if proba.shape == shape else None

    def save(self, key: str, proba: np.ndarray) -> None:
        """Store ``proba`` under ``key`` atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        proba = np.ascontiguousarray(proba, dtype=np.float64)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, proba, allow_pickle=False)

        atomic_replace_file(write, self.path(key))

    def count(self) -> tuple[int, int]:
        """``(entries, bytes)`` held."""
        files = list(self.dir.glob("*.npy")) if self.dir.is_dir() else []
        return len(files), sum(f.stat().st_size for f in files)

    def clear(self) -> int:
        """Delete every stored trial (and stray temp files); returns how many were removed."""
        if not self.dir.is_dir():
            return 0
        n = 0
        for path in self.dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                n += path.suffix == ".npy"
        return n

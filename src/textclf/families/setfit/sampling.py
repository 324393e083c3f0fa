"""Which texts SetFit trains on: the few-shot subset, and contrastive pairs/triplets drawn from the labels.

Every sampler here is linear in the number of texts N, whatever the number of classes: rows are
grouped by class once (a stable argsort), then each draw is an O(1) index arithmetic on that
grouping. For every text, ``per_text`` (SetFit's ``num_iterations``, R) positives are drawn from its
own class and R negatives from all other classes, so there are exactly ``2·R·N`` pairs (``R·N``
triplets), never the ``N²`` of all pairs. Everything is vectorised NumPy and deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from textclf.core.data import balanced_downsample
from textclf.core.errors import ConfigError, DataError


def few_shot_indices(labels: Sequence[str], per_class: int | None, seed: int = 13) -> list[int]:
    """Indices of ``per_class`` rows of every class (all rows of a smaller class), in the original order.

    ``None`` keeps every row. Deterministic for a seed (the same draw as
    :func:`textclf.core.data.balanced_downsample` with ``per_class``).
    """
    if per_class is None:
        return list(range(len(labels)))
    if int(per_class) < 1:
        raise ConfigError(f"data.per_class: expected a positive number of examples per class or null, got {per_class!r}")
    return balanced_downsample(labels, seed=seed, per_class=int(per_class))


@dataclass
class ClassGroups:
    """Rows grouped by class: ``order`` lists row indices class by class; class ``c`` spans ``start[c]:start[c]+size[c]``.

    ``codes[i]`` is row i's class, ``pos[i]`` its position inside ``order``.
    """

    codes: np.ndarray
    order: np.ndarray
    start: np.ndarray
    size: np.ndarray
    pos: np.ndarray

    @classmethod
    def from_labels(cls, labels: Sequence) -> ClassGroups:
        """Group ``labels`` (any hashable values, or integer codes) by class in O(N log N) time and O(N) memory."""
        _, codes = np.unique(np.asarray(labels), return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        order = np.argsort(codes, kind="stable")
        size = np.bincount(codes)
        start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
        pos = np.empty_like(order)
        pos[order] = np.arange(len(order))
        return cls(codes, order, start, size, pos)

    def __len__(self) -> int:
        return len(self.codes)


def _check(groups: ClassGroups, per_text: int) -> None:
    if per_text < 1:
        raise ConfigError(f"pairs.per_text: expected at least 1, got {per_text}")
    if len(groups.size) < 2:
        raise DataError("train", "contrastive pairs need at least 2 classes")


def draw_positives(groups: ClassGroups, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every anchor row, another row of its class (the anchor itself when its class has one row)."""
    c = groups.codes[anchors]
    n = groups.size[c]
    own = groups.pos[anchors] - groups.start[c]
    u = np.floor(rng.random(len(anchors)) * np.maximum(n - 1, 1)).astype(np.int64)
    u = np.where(n > 1, u + (u >= own), own)  # skip the anchor's own slot
    return groups.order[groups.start[c] + u]


def draw_negatives(groups: ClassGroups, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every anchor row, a uniformly drawn row of any other class."""
    c = groups.codes[anchors]
    n = groups.size[c]
    u = np.floor(rng.random(len(anchors)) * (len(groups) - n)).astype(np.int64)
    u = u + np.where(u >= groups.start[c], n, 0)  # jump over the anchor's class block
    return groups.order[u]


def sample_pairs(labels: Sequence, per_text: int, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left, right, similar)``: ``2·per_text·N`` pairs of row indices, shuffled, with 1.0 (same class) or 0.0.

    Every row is the left side of ``per_text`` positive and ``per_text`` negative pairs.
    """
    groups = ClassGroups.from_labels(labels)
    _check(groups, per_text)
    rng = np.random.default_rng(seed)
    anchors = np.tile(np.arange(len(groups), dtype=np.int64), per_text)
    left = np.concatenate([anchors, anchors])
    right = np.concatenate([draw_positives(groups, anchors, rng), draw_negatives(groups, anchors, rng)])
    similar = np.concatenate([np.ones(len(anchors)), np.zeros(len(anchors))]).astype(np.float32)
    perm = rng.permutation(len(left))
    return left[perm], right[perm], similar[perm]


def sample_triplets(labels: Sequence, per_text: int, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(anchor, positive, negative)``: ``per_text·N`` triplets of row indices, shuffled."""
    groups = ClassGroups.from_labels(labels)
    _check(groups, per_text)
    rng = np.random.default_rng(seed)
    anchors = np.tile(np.arange(len(groups), dtype=np.int64), per_text)
    positives = draw_positives(groups, anchors, rng)
    negatives = draw_negatives(groups, anchors, rng)
    perm = rng.permutation(len(anchors))
    return anchors[perm], positives[perm], negatives[perm]


def sample_texts(labels: Sequence, per_text: int, seed: int = 13) -> np.ndarray:
    """``per_text`` shuffled passes over all rows (``per_text·N`` row indices) for in-batch triplet losses."""
    groups = ClassGroups.from_labels(labels)
    _check(groups, per_text)
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(len(groups)) for _ in range(per_text)])

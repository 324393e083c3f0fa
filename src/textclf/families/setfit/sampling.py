"""Which texts SetFit trains on: the few-shot subset, and contrastive pairs/triplets drawn from the labels.

Every sampler here is linear in the number of texts N, whatever the number of classes: rows are
grouped by class once (a stable argsort), then each draw is an O(1) index arithmetic on that
grouping. For every text, ``per_text`` (SetFit's ``num_iterations``, R) positives are drawn from its
own class and R negatives from all other classes, so there are exactly ``2·R·N`` pairs (``R·N``
triplets), never the ``N²`` of all pairs. Everything is vectorised NumPy and deterministic for a seed.

Label sets (multi-label data: a ``(N, L)`` 0/1 indicator matrix instead of one label a row). Two
texts are a *positive* pair when they share a label (or both have none) and a *negative* pair when
their sets are disjoint: SetFit's own multi-label pairs use shared labels, and equal sets would
leave most texts of a 5-label problem with only a handful of partners (2^L possible sets). A
positive is drawn by picking one of the anchor's labels uniformly, then another text carrying it
(rows are grouped per label, the empty set being a group of its own). A negative is drawn by
rejection: a few rounds of uniform draws, each kept when disjoint; an anchor whose draws all
overlapped (a text carrying nearly every label) gets no negative, so there are at most ``2·R·N`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from textclf.core.data import balanced_downsample
from textclf.core.errors import ConfigError, DataError

#: rounds of uniform draws for the negatives of label sets (an anchor still without one gets none)
NEGATIVE_ROUNDS = 8


def few_shot_indices(labels: Sequence, per_class: int | None, seed: int = 13) -> list[int]:
    """Indices of ``per_class`` rows of every class (all rows of a smaller class), in the original order.

    ``None`` keeps every row. Deterministic for a seed (the same draw as
    :func:`textclf.core.data.balanced_downsample` with ``per_class``). Label sets (rows that are
    tuples): see :func:`few_shot_label_sets`.
    """
    if per_class is None:
        return list(range(len(labels)))
    if int(per_class) < 1:
        raise ConfigError(f"data.per_class: expected a positive number of examples per class or null, got {per_class!r}")
    if len(labels) and isinstance(labels[0], tuple | list):
        return few_shot_label_sets(labels, int(per_class), seed)
    return balanced_downsample(labels, seed=seed, per_class=int(per_class))


def few_shot_label_sets(label_sets: Sequence[Sequence[str]], per_label: int, seed: int = 13) -> list[int]:
    """Rows giving every label (and the empty set, as one more "label") ``per_label`` texts, in the original order.

    The rows are visited in a seeded random order and a row is kept while any of its labels still
    has fewer than ``per_label`` texts; its other labels count it too, so a label may get more than
    ``per_label`` texts (co-occurrence) but never fewer than it has, up to ``per_label``.
    """
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    chosen = []
    for i in rng.permutation(len(label_sets)).tolist():
        keys = list(label_sets[i]) or [""]  # "": the empty set (a label is never empty)
        if any(counts.get(k, 0) < per_label for k in keys):
            chosen.append(i)
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
    return sorted(chosen)


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


@dataclass
class LabelSetGroups:
    """Rows of a label indicator matrix grouped per label: ``members`` (one entry per (row, label) pair, the
    empty set a label of its own) grouped by :class:`ClassGroups`; ``first[i]``/``count[i]`` span row i's entries."""

    y: np.ndarray
    rows: np.ndarray
    groups: ClassGroups
    first: np.ndarray
    count: np.ndarray

    @classmethod
    def from_indicator(cls, y: np.ndarray) -> LabelSetGroups:
        """Group the rows of the 0/1 matrix ``y`` (``(N, L)``) by label in O(N·L) time."""
        y = np.asarray(y).astype(bool)
        full = np.column_stack([y, ~y.any(axis=1)])  # column L: the empty set
        rows, labels = np.nonzero(full)  # row-major: each row's entries are consecutive
        count = full.sum(axis=1).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        return cls(y, rows.astype(np.int64), ClassGroups.from_labels(labels), first, count)

    def __len__(self) -> int:
        return len(self.y)


def _check_sets(sets: LabelSetGroups, per_text: int) -> None:
    if per_text < 1:
        raise ConfigError(f"pairs.per_text: expected at least 1, got {per_text}")


def draw_set_positives(sets: LabelSetGroups, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every anchor row, another row sharing one of its labels (picked uniformly), or another empty-set row."""
    entry = sets.first[anchors] + np.floor(rng.random(len(anchors)) * sets.count[anchors]).astype(np.int64)
    return sets.rows[draw_positives(sets.groups, entry, rng)]


def draw_set_negatives(sets: LabelSetGroups, anchors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(kept anchors, negatives)``: rows whose label set is disjoint from the anchor's (rejection sampling)."""
    out = np.full(len(anchors), -1, dtype=np.int64)
    empty = ~sets.y.any(axis=1)
    todo = np.arange(len(anchors))
    for _ in range(NEGATIVE_ROUNDS):
        if not len(todo):
            break
        a = anchors[todo]
        b = rng.integers(0, len(sets), len(todo))
        ok = ~(sets.y[a] & sets.y[b]).any(axis=1) & ~(empty[a] & empty[b])
        out[todo[ok]] = b[ok]
        todo = todo[~ok]
    kept = out >= 0
    if len(anchors) and not kept.any():
        raise DataError("train", "contrastive pairs need texts with disjoint label sets; every text drawn shares a label")
    return anchors[kept], out[kept]


def sample_set_pairs(y: np.ndarray, per_text: int, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left, right, similar)`` of a label indicator matrix ``y``: per row ``per_text`` positives (a shared label)
    and up to ``per_text`` negatives (disjoint sets), shuffled."""
    sets = LabelSetGroups.from_indicator(y)
    _check_sets(sets, per_text)
    rng = np.random.default_rng(seed)
    anchors = np.tile(np.arange(len(sets), dtype=np.int64), per_text)
    neg_left, negatives = draw_set_negatives(sets, anchors, rng)
    left = np.concatenate([anchors, neg_left])
    right = np.concatenate([draw_set_positives(sets, anchors, rng), negatives])
    similar = np.concatenate([np.ones(len(anchors)), np.zeros(len(neg_left))]).astype(np.float32)
    perm = rng.permutation(len(left))
    return left[perm], right[perm], similar[perm]


def sample_set_triplets(y: np.ndarray, per_text: int, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(anchor, positive, negative)`` of a label indicator matrix: up to ``per_text·N`` triplets, shuffled."""
    sets = LabelSetGroups.from_indicator(y)
    _check_sets(sets, per_text)
    rng = np.random.default_rng(seed)
    anchors = np.tile(np.arange(len(sets), dtype=np.int64), per_text)
    kept, negatives = draw_set_negatives(sets, anchors, rng)
    positives = draw_set_positives(sets, kept, rng)
    perm = rng.permutation(len(kept))
    return kept[perm], positives[perm], negatives[perm]


def sample_pairs(labels: Sequence, per_text: int, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left, right, similar)``: ``2·per_text·N`` pairs of row indices, shuffled, with 1.0 (same class) or 0.0.

    Every row is the left side of ``per_text`` positive and ``per_text`` negative pairs. A 2-D
    ``labels`` is a label indicator matrix (:func:`sample_set_pairs`).
    """
    if np.ndim(labels) == 2:
        return sample_set_pairs(np.asarray(labels), per_text, seed)
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
    """``(anchor, positive, negative)``: ``per_text·N`` triplets of row indices, shuffled (2-D ``labels``:
    :func:`sample_set_triplets`)."""
    if np.ndim(labels) == 2:
        return sample_set_triplets(np.asarray(labels), per_text, seed)
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

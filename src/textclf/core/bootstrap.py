"""Percentile bootstrap confidence intervals of the scores textclf reports (``scipy.stats.bootstrap``).

One home for the leaderboard's intervals and the model card's (:mod:`textclf.core.card`): the rows
are resampled with replacement ``n_boot`` times (seeded), the statistic is scored on every resample
at once (vectorised counts), and the interval is the percentiles ``(1 - level) / 2`` and
``(1 + level) / 2``. scipy rather than a hand-written loop: it owns the resampling, batching and
the interval methods, and is already a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 1000
SEED = 13
#: bootstrap resamples scored at once (bounds the memory of the vectorised statistic)
BOOT_BATCH = 100


def _percentile_ci(data: tuple[np.ndarray, ...], statistic, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """``scipy.stats.bootstrap`` over the rows of ``data`` (resampled together), percentile method, seeded."""
    from scipy.stats import bootstrap

    result = bootstrap(data, statistic, n_resamples=n_boot, batch=BOOT_BATCH, vectorized=True, paired=True,
                       confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def bootstrap_ci(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], n_boot: int = N_BOOT,
                 seed: int = SEED, level: float = 0.95, beta: float = 1.0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of macro F-beta: ``scipy.stats.bootstrap``, rows resampled in pairs, seeded.

    The statistic is :func:`textclf.core.metrics.fbeta_from_counts` on every resample at once
    (scikit-learn's macro F-beta, vectorised); a prediction outside ``labels`` counts only towards
    its row's support. Empty data or ``n_boot <= 0``: ``(nan, nan)``; one row: its score twice.
    """
    from textclf.core.metrics import class_counts, fbeta_from_counts

    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    t = np.fromiter((index[v] for v in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((index.get(v, -1) for v in y_pred), dtype=np.int64, count=len(y_pred))
    if len(t) == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))

    def statistic(t_sample: np.ndarray, p_sample: np.ndarray, axis: int = -1) -> np.ndarray:
        return fbeta_from_counts(*class_counts(t_sample, p_sample, k), beta)

    if len(t) == 1:  # every resample of one row is that row (scipy asks for two)
        score = float(statistic(t, p))
        return (score, score)
    return _percentile_ci((t, p), statistic, n_boot, seed, level)


def bootstrap_ci_micro(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], n_boot: int = N_BOOT,
                       seed: int = SEED, level: float = 0.95, beta: float = 1.0) -> tuple[float, float]:
    """Percentile bootstrap CI of micro F-beta over label sets: ``scipy.stats.bootstrap``, rows resampled, seeded.

    Micro F-beta depends on the rows only through their summed counts, so every row becomes three
    numbers (correctly predicted, predicted and true labels) resampled together (``paired``).
    Empty data or ``n_boot <= 0``: ``(nan, nan)``; one row: its score twice.
    """
    tp = np.array([len(set(t) & set(p)) for t, p in zip(y_true, y_pred, strict=True)], dtype=np.float64)
    pred = np.array([len(set(p)) for p in y_pred], dtype=np.float64)
    true = np.array([len(set(t)) for t in y_true], dtype=np.float64)
    if len(tp) == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    b2 = beta * beta

    def statistic(tp_s: np.ndarray, pred_s: np.ndarray, true_s: np.ndarray, axis: int = -1) -> np.ndarray:
        num = (1 + b2) * tp_s.sum(axis=axis)
        denom = b2 * true_s.sum(axis=axis) + pred_s.sum(axis=axis)
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 0.0)

    if len(tp) == 1:
        score = float(statistic(tp, pred, true))
        return (score, score)
    return _percentile_ci((tp, pred, true), statistic, n_boot, seed, level)


def bootstrap_ci_accuracy(y_true: Sequence[str], y_pred: Sequence[str], n_boot: int = N_BOOT, seed: int = SEED,
                          level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of accuracy (the share of rows predicted right), rows resampled, seeded.

    Empty data or ``n_boot <= 0``: ``(nan, nan)``; one row: its score twice.
    """
    right = np.array([t == p for t, p in zip(y_true, y_pred, strict=True)], dtype=np.float64)
    if len(right) == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    if len(right) == 1:
        return (float(right[0]), float(right[0]))
    return _percentile_ci((right,), lambda r, axis=-1: r.mean(axis=axis), n_boot, seed, level)


def pairs_from_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The (true, predicted) rows a confusion matrix counts (rows: true, columns: predicted), grouped by cell.

    Every bootstrap here resamples rows independently, so the rows rebuilt from a ``meta.json``
    confusion matrix give the interval of the rows it was counted on (their order does not matter).
    """
    y_true: list[str] = []
    y_pred: list[str] = []
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            y_true += [labels[i]] * int(count)
            y_pred += [labels[j]] * int(count)
    return y_true, y_pred


#: up to this many rows :func:`confusion_ci` runs the leaderboard's scipy bootstraps on the rebuilt rows
SCIPY_MAX_ROWS = 10_000
#: resampled confusion-matrix cells held at once by the multinomial draw (bounds its memory)
CELLS_AT_ONCE = 10_000_000


def confusion_ci(matrix: Sequence[Sequence[int]], labels: Sequence[str], n_boot: int = N_BOOT, seed: int = SEED,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """95 % percentile bootstrap CIs of ``accuracy`` and ``macro_f1`` of the rows a confusion matrix counts.

    Up to :data:`SCIPY_MAX_ROWS` rows: :func:`bootstrap_ci_accuracy` and :func:`bootstrap_ci` (scipy) on
    the rows rebuilt by :func:`pairs_from_confusion`. Above, scipy's resampling of every row costs
    ``n_boot * rows`` (seconds for 10,000 rows, a minute for 200,000, on every meta.json write), so the same bootstrap is
    drawn by cell: rows with the same (true, predicted) pair are interchangeable, and resampling
    ``n`` rows with replacement gives multinomial counts over the cells (numpy's
    ``Generator.multinomial``), ``k * k`` numbers a resample whatever ``n``; the percentiles are
    taken as scipy's percentile method takes them.
    """
    from textclf.core.metrics import fbeta_from_counts

    m = np.asarray(matrix, dtype=np.int64)
    n, k = int(m.sum()), len(m)
    if n == 0 or n_boot <= 0:
        return {"accuracy": (float("nan"), float("nan")), "macro_f1": (float("nan"), float("nan"))}
    if n <= SCIPY_MAX_ROWS:
        y_true, y_pred = pairs_from_confusion(matrix, labels)
        return {"accuracy": bootstrap_ci_accuracy(y_true, y_pred, n_boot, seed, level),
                "macro_f1": bootstrap_ci(y_true, y_pred, labels, n_boot, seed, level)}
    rng = np.random.default_rng(seed)
    step = max(1, CELLS_AT_ONCE // (k * k))
    acc, f1 = [], []
    for start in range(0, n_boot, step):
        draws = rng.multinomial(n, m.ravel() / n, size=min(step, n_boot - start)).reshape(-1, k, k)
        tp = np.diagonal(draws, axis1=1, axis2=2)
        acc.append(tp.sum(axis=1) / n)
        f1.append(fbeta_from_counts(tp, draws.sum(axis=1), draws.sum(axis=2), 1.0))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {name: tuple(float(x) for x in np.percentile(np.concatenate(values), q))
            for name, values in (("accuracy", acc), ("macro_f1", f1))}

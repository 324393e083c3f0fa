"""Multiclass decision thresholds: per-class additive offsets on log-probabilities, tuned for macro F-beta.

scikit-learn tunes a decision threshold for binary problems only. Here every class ``k`` gets an
offset ``o_k`` and a model predicts ``argmax_k(log p_k + o_k)``; all zeros is the plain argmax.
:func:`tune_offsets` finds offsets on a validation split by coordinate search:

* start from all zeros (the untuned model) and its valid macro F-beta;
* for one class at a time, with the other offsets fixed, every sample has a break point: the
  offset above which it flips to that class. The search scores every interval between
  consecutive break points at once (cumulative counts, so one class costs O(n log n + n K)) and
  takes the middle of the best interval (the one nearest the current offset on ties);
* the move is kept only when the real decision rule scores strictly higher on valid, so the
  tuned score is >= the untuned one by construction;
* rounds over all classes repeat until a round changes nothing (or ``max_rounds``).

That search takes any strict valid improvement, however small, and so over-fits a small split
(one or two flipped documents). ``cv`` (``textclf tune-thresholds --cv``, default 5) guards it:
:func:`cross_validate_offsets` runs the same search on each training part of a stratified, seeded
k-fold split of valid and decides the held-out part with those offsets; the offsets tuned on all of
valid are kept only when that pooled out-of-fold macro F-beta beats the untuned one, otherwise
the model keeps the plain argmax (all zeros). Either way the stored valid score is >= the untuned
one. ``--cv 0`` is the plain search.

A multi-label model gets a global and per-label probability thresholds instead, tuned for micro
F-beta by :mod:`textclf.services.compare.label_thresholds`; :func:`tune_thresholds` picks by the
model's task.

The offsets live in the model directory's ``meta.json`` under ``"thresholds"`` (written
atomically by :func:`save_thresholds`), and :class:`textclf.core.predictor.Predictor` applies them in
``predict`` for every family; ``predict_proba`` is never changed.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textclf.core.data import first_unknown_label
from textclf.core.decision import EPS, META_KEY, decide, log_proba, offsets_from_meta  # noqa: F401  (re-exported)
from textclf.core.errors import DataError
from textclf.core.metrics import fbeta_from_counts

#: offsets stay within +-MAX_OFFSET nats (beyond that a class is simply always / never predicted)
MAX_OFFSET = 30.0
#: ``textclf tune-thresholds`` defaults: macro F0.5 (precision-leaning), 5-fold out-of-fold check
DEFAULT_BETA = 0.5
DEFAULT_CV = 5


# --------------------------------------------------------------------------- scoring
def label_indices(labels: Sequence[str], label_order: Sequence[str], path: str | Path = "",
                  line_numbers: Sequence[int] | None = None) -> np.ndarray:
    """``labels`` as indices into ``label_order``; a label the model does not know is a one-line DataError
    naming the file line of the first such row (``line_numbers``: the dataset's)."""
    index = {label: i for i, label in enumerate(label_order)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        first = first_unknown_label(labels, index, line_numbers)
        raise DataError(path or "data", f"label(s) {', '.join(map(repr, unknown))} unknown to the model "
                        f"(its labels: {', '.join(label_order)})", first[1] if first else None)
    return np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))


def macro_fbeta(y: np.ndarray, pred: np.ndarray, n_classes: int, beta: float = 1.0) -> float:
    """Macro F-beta of integer labels over ``n_classes`` classes: ``sklearn.metrics.fbeta_score``, zero_division=0.

    No samples: 0 (scikit-learn refuses empty input). The break-point search scores its many
    candidate offsets with :func:`fbeta_from_counts` (the same numbers, vectorised); every score
    it reports comes from here.
    """
    from sklearn.metrics import fbeta_score

    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    return float(fbeta_score(y, pred, beta=beta, average="macro", labels=np.arange(n_classes), zero_division=0))


def stratified_folds(y: np.ndarray, k: int, seed: int = 13) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified ``(train, held-out)`` index pairs: ``sklearn.model_selection.StratifiedKFold``, shuffled with ``seed``.

    Every class is spread over the folds as evenly as it divides and fold sizes differ by at most
    one; which document lands in which fold is scikit-learn's (seeded) choice. Earlier versions
    dealt each class round-robin by hand, so their folds, and out-of-fold scores, were other ones
    (as valid a split).
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train, held) for train, held in splitter.split(np.zeros((len(y), 1)), y)]


def n_folds(y: np.ndarray, cv: int) -> int:
    """Folds a stratified split can have: ``cv`` capped by the smallest class present (0 or 1: no CV possible)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64)) if len(y) else np.zeros(0, dtype=np.int64)
    present = counts[counts > 0]
    return int(min(cv, present.min())) if len(present) else 0


# --------------------------------------------------------------------------- search
@dataclass
class TuneResult:
    """Outcome of :func:`tune_offsets`: offsets in class order, valid score before and after, rounds run.

    ``cv`` holds the out-of-fold check (:func:`cross_validate_offsets`) when one ran.
    """

    offsets: np.ndarray
    before: float
    after: float
    rounds: int
    moves: int
    cv: dict | None = None


def _best_offset_for_class(logp: np.ndarray, offsets: np.ndarray, y: np.ndarray, k: int, beta: float) -> float | None:
    """The offset of class ``k`` (others fixed) with the highest macro F-beta under the interval model, or None."""
    n, n_classes = logp.shape
    z = logp + offsets
    z_other = z.copy()
    z_other[:, k] = -np.inf
    other = z_other.argmax(axis=1)
    # sample i is predicted k iff logp[i, k] + o_k > z[i, other_i], i.e. o_k > m_i
    m = z_other[np.arange(n), other] - logp[:, k]
    order = np.argsort(m, kind="stable")
    m_sorted = m[order]
    cuts = np.unique(m_sorted)
    candidates = np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1.0]])
    candidates = np.clip(candidates, -MAX_OFFSET, MAX_OFFSET)
    candidates = np.unique(candidates)
    switched = np.searchsorted(m_sorted, candidates, side="left")  # samples predicted k at each candidate
    eye = np.eye(n_classes, dtype=np.int64)
    y_sorted, other_sorted = y[order], other[order]
    onehot_other = eye[other_sorted]
    hit_other = onehot_other * (y_sorted == other_sorted)[:, None]
    zero = np.zeros((1, n_classes), dtype=np.int64)
    cum_other = np.vstack([zero, np.cumsum(onehot_other, axis=0)])
    cum_hit_other = np.vstack([zero, np.cumsum(hit_other, axis=0)])
    cum_true_k = np.concatenate([[0], np.cumsum(y_sorted == k)])
    pred = onehot_other.sum(axis=0)[None, :] - cum_other[switched]
    tp = hit_other.sum(axis=0)[None, :] - cum_hit_other[switched]
    pred[:, k] += switched
    tp[:, k] += cum_true_k[switched]
    true = np.bincount(y, minlength=n_classes)
    scores = fbeta_from_counts(tp, pred, true[None, :], beta)
    best = scores.max()
    ties = np.flatnonzero(scores >= best - 1e-12)
    # the best-scoring run of consecutive intervals nearest the current offset; its middle keeps the widest margin
    nearest = ties[np.argmin(np.abs(candidates[ties] - offsets[k]))]
    tied = set(ties.tolist())
    first = last = int(nearest)
    while first - 1 in tied:
        first -= 1
    while last + 1 in tied:
        last += 1
    return float((candidates[first] + candidates[last]) / 2)


def tune_offsets(proba: np.ndarray, y: np.ndarray, beta: float = 1.0, max_rounds: int = 20,
                 start: np.ndarray | None = None, cv: int = 0, seed: int = 13) -> TuneResult:
    """Per-class offsets on ``log proba`` that maximise macro F-beta of ``y`` (integer labels); never lower it.

    ``start`` (default zeros) is where the search begins; its score is the baseline that every
    accepted move must beat strictly. ``cv >= 2``: keep the offsets only when the same search,
    cross-validated on ``cv`` stratified folds (seed ``seed``), beats ``start`` out of fold;
    otherwise return ``start`` unchanged (``result.cv`` says which).
    """
    result = _search_offsets(proba, y, beta, max_rounds, start)
    if cv < 2 or result.moves == 0:
        return result
    check = cross_validate_offsets(proba, y, beta, cv, seed, max_rounds, start)
    if check is None:
        return result
    result.cv = check
    if not check["accepted"]:
        result.offsets = np.zeros(len(result.offsets)) if start is None else np.asarray(start, dtype=np.float64).copy()
        result.after, result.moves = result.before, 0
    return result


def cross_validate_offsets(proba: np.ndarray, y: np.ndarray, beta: float = 1.0, cv: int = 5, seed: int = 13,
                           max_rounds: int = 20, start: np.ndarray | None = None) -> dict | None:
    """Out-of-fold macro F-beta of the offset search: tuned on each training part, deciding its held-out part.

    Returns ``{"folds", "seed", "oof_before", "oof_after", "accepted"}`` (accepted: after > before),
    or None when a class has fewer than 2 examples (no stratified split).
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = n_folds(y, cv)
    if k < 2:
        return None
    n_classes = proba.shape[1]
    base = np.zeros(n_classes) if start is None else np.asarray(start, dtype=np.float64)
    pred = np.empty(len(y), dtype=np.int64)
    for train, held in stratified_folds(y, k, seed):
        offsets = _search_offsets(proba[train], y[train], beta, max_rounds, base).offsets
        pred[held] = decide(proba[held], offsets)
    before = macro_fbeta(y, decide(proba, base), n_classes, beta)
    after = macro_fbeta(y, pred, n_classes, beta)
    return {"folds": k, "seed": seed, "oof_before": before, "oof_after": after, "accepted": bool(after > before + 1e-12)}


def _search_offsets(proba: np.ndarray, y: np.ndarray, beta: float, max_rounds: int,
                    start: np.ndarray | None) -> TuneResult:
    """The plain coordinate search of :func:`tune_offsets` (every strict valid improvement is taken)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, n_classes = proba.shape
    offsets = np.zeros(n_classes) if start is None else np.asarray(start, dtype=np.float64).copy()
    logp = log_proba(proba)
    before = current = macro_fbeta(y, decide(proba, offsets), n_classes, beta)
    rounds = moves = 0
    if n == 0 or n_classes < 2:
        return TuneResult(offsets, before, current, rounds, moves)
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is reported
        changed = False
        for k in range(n_classes):
            candidate = _best_offset_for_class(logp, offsets, y, k, beta)
            if candidate is None or candidate == offsets[k]:
                continue
            trial = offsets.copy()
            trial[k] = candidate
            score = macro_fbeta(y, (logp + trial).argmax(axis=1), n_classes, beta)
            if score > current + 1e-12:  # the real decision rule must improve: never lower the score
                offsets, current, changed = trial, score, True
                moves += 1
        if not changed:
            break
    return TuneResult(offsets, before, current, rounds, moves)


# --------------------------------------------------------------------------- model directories
def tune_thresholds(model_path: str | Path, valid_path: str | Path, beta: float = DEFAULT_BETA, data_format: str | None = None,
                    text_column: str = "text", label_column: str = "label", max_rounds: int = 20,
                    batch_size: int = 1024, save: bool = True, cv: int = DEFAULT_CV, seed: int = 13) -> dict:
    """Tune offsets of the model at ``model_path`` on ``valid_path`` and store them in its meta.json.

    ``cv`` folds (0: none) check the search out of fold first (see the module docstring).
    Returns the ``thresholds`` block (offsets by label, beta, valid score before/after, the
    out-of-fold check under ``"cv"``, ...). A multi-label model gets per-label and global
    thresholds for micro F-beta (:mod:`textclf.services.compare.label_thresholds`) in the same block.
    """
    from textclf.core.data import batched, labelled_format, read_labelled, sha256_datasets, sha256_files
    from textclf.core.loading import _resolve, load_predictor
    from textclf.core.metrics import beta_name
    from textclf.services.compare.label_thresholds import indicator_matrix, thresholds_block

    if beta <= 0:
        raise DataError(valid_path, f"--beta must be > 0, got {beta:g}")
    model_dir, _ = _resolve(model_path)
    predictor = load_predictor(model_dir, thresholds=False)
    ds = read_labelled(valid_path, data_format, text_column, label_column, min_classes=0, task=predictor.task,
                       label_separator=predictor.label_separator)
    y = indicator_matrix(ds.labels, predictor.labels, valid_path, ds.line_numbers) if predictor.multilabel else \
        label_indices(ds.labels, predictor.labels, valid_path, ds.line_numbers)
    probas = [predictor.predict_proba(batch) for batch in batched(ds.texts, batch_size)]
    proba = np.vstack(probas) if probas else np.zeros((0, len(predictor.labels)))
    valid_sha = sha256_files([valid_path]) if labelled_format(valid_path, data_format).files else sha256_datasets([ds])
    if predictor.multilabel:
        block = {**thresholds_block(predictor, proba, y, beta, cv, seed, max_rounds), "valid_path": str(valid_path),
                 "valid_sha256": valid_sha, "n_valid": len(ds),
                 "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        if save:
            save_thresholds(model_dir, block)
        return block
    result = tune_offsets(proba, y, beta, max_rounds, cv=cv, seed=seed)
    before_acc = float(np.mean(decide(proba) == y)) if len(y) else 0.0
    after_acc = float(np.mean(decide(proba, result.offsets) == y)) if len(y) else 0.0
    block = {
        "offsets": {label: float(o) for label, o in zip(predictor.labels, result.offsets, strict=True)},
        "beta": float(beta),
        "metric": f"macro_{beta_name(beta)}",
        "valid_path": str(valid_path),
        "valid_sha256": valid_sha,
        "n_valid": len(ds),
        "valid_before": result.before,
        "valid_after": result.after,
        "valid_accuracy_before": before_acc,
        "valid_accuracy_after": after_acc,
        "rounds": result.rounds,
        "moves": result.moves,
        "cv": result.cv,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if save:
        save_thresholds(model_dir, block)
    return block


def save_thresholds(model_dir: str | Path, block: dict | None) -> Path:
    """Store (``None``: remove) the thresholds block in ``model_dir/meta.json``, rewriting it atomically."""
    from textclf.core.meta import read_meta, write_meta

    meta = read_meta(model_dir)
    if block is None:
        meta.pop(META_KEY, None)
    else:
        meta[META_KEY] = block
    return write_meta(model_dir, meta)

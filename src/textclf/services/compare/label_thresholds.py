"""Multi-label decision thresholds: one global threshold plus one per label, tuned for micro F-beta.

A multi-label model predicts label ``k`` for a text when its probability ``p_k >= t_k``
(:func:`textclf.core.decision.decide_multilabel`). :func:`tune_label_thresholds` finds the ``t_k``
on a validation split, in two stages:

* **global**: one ``t`` for every label, the best micro F-beta over every cut between two distinct
  probabilities of valid (sorted once, cumulative counts; the middle of the best gap);
* **per label**: from the global one, for one label at a time with the others fixed, the cut of
  that label's column with the best micro F-beta of all labels (the same cumulative counts);
  rounds over the labels repeat until a round changes nothing (or ``max_rounds``).

Like the multiclass offsets (:mod:`textclf.services.compare.thresholds`) a move is kept only when
the real decision rule scores strictly higher on valid, and ``cv`` guards against over-fitting a
small split: each stage is rerun on the training part of ``cv`` seeded folds of valid
(``sklearn.model_selection.KFold``: scikit-learn has no stratified split for label sets) and decides
the held-out part. The tuned global threshold is kept only when its pooled out-of-fold micro
F-beta beats the model's untuned threshold, and the per-label ones only when theirs beats the
global one out of fold; otherwise every label gets the global (or the untuned) threshold.

The thresholds are stored under ``"thresholds"`` in ``meta.json`` (``per_label``, ``global``), as
the multiclass offsets are, and every Predictor applies them; ``predict_proba`` never changes.
"""

from __future__ import annotations

import numpy as np

from textclf.core.data import first_unknown_label
from textclf.core.decision import decide_multilabel
from textclf.core.errors import DataError

#: thresholds are kept inside this range (HIGH, above any probability: the label is never predicted)
LOW, HIGH = 1e-6, 1.0 + 1e-6


def micro_fbeta(y: np.ndarray, chosen: np.ndarray, beta: float = 1.0) -> float:
    """Micro F-beta of boolean indicator matrices: ``sklearn.metrics.fbeta_score(average="micro", zero_division=0)``."""
    from sklearn.metrics import fbeta_score

    y, chosen = np.asarray(y, dtype=bool), np.asarray(chosen, dtype=bool)
    if y.size == 0:
        return 0.0
    return float(fbeta_score(y, chosen, beta=beta, average="micro", zero_division=0))


def _fbeta(tp: np.ndarray, pred: np.ndarray, true: float, beta: float) -> np.ndarray:
    """Micro F-beta from total counts (vectorised over candidate cuts); 0 where nothing is true or predicted."""
    b2 = beta * beta
    denom = b2 * true + pred
    return np.where(denom > 0, (1 + b2) * tp / np.where(denom > 0, denom, 1.0), 0.0)


def _best_cut(scores: np.ndarray, y: np.ndarray, beta: float, tp0: float, pred0: float, true: float) -> float | None:
    """The threshold on ``scores`` (one flat column, or all of them) with the best micro F-beta.

    ``tp0``/``pred0``: true and predicted positives that the other labels contribute. Returns the
    middle of the best gap between two distinct scores (or just above the top / below the bottom).
    """
    if scores.size == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, hit = scores[order], y[order].astype(np.int64)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last index of each run of equal scores
    tp = tp0 + np.r_[0, np.cumsum(hit)[last]]  # predicting none, then every score >= each distinct value
    pred = pred0 + np.r_[0, last + 1]
    best = int(np.argmax(_fbeta(tp.astype(np.float64), pred.astype(np.float64), true, beta)))
    values = s[last]
    if best == 0:  # predict none of them: above the top score
        return float((values[0] + 1.0) / 2) if values[0] < 1.0 else HIGH
    upper = values[best - 1]
    lower = values[best] if best < len(values) else 0.0
    return float(np.clip((upper + lower) / 2, LOW, HIGH))


def tune_global(proba: np.ndarray, y: np.ndarray, beta: float, start: float) -> float:
    """The one threshold for every label with the best micro F-beta on (``proba``, ``y``); ``start`` unless it strictly improves."""
    cut = _best_cut(proba.ravel(), y.ravel(), beta, 0.0, 0.0, float(y.sum()))
    if cut is None or micro_fbeta(y, proba >= cut, beta) <= micro_fbeta(y, proba >= start, beta) + 1e-12:
        return start
    return cut


def tune_per_label(proba: np.ndarray, y: np.ndarray, beta: float, start: np.ndarray, max_rounds: int = 20) -> tuple[np.ndarray, int, int]:
    """Per-label thresholds from ``start`` by coordinate search on micro F-beta; returns (thresholds, rounds, moves)."""
    thresholds = np.asarray(start, dtype=np.float64).copy()
    current = micro_fbeta(y, proba >= thresholds, beta)
    true = float(y.sum())
    rounds = moves = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is reported
        changed = False
        for k in range(proba.shape[1]):
            chosen = proba >= thresholds
            others = np.ones(proba.shape[1], dtype=bool)
            others[k] = False
            tp0 = float((chosen[:, others] & y[:, others]).sum())
            cut = _best_cut(proba[:, k], y[:, k], beta, tp0, float(chosen[:, others].sum()), true)
            if cut is None or cut == thresholds[k]:
                continue
            trial = thresholds.copy()
            trial[k] = cut
            score = micro_fbeta(y, proba >= trial, beta)
            if score > current + 1e-12:  # the real decision rule must improve
                thresholds, current, changed = trial, score, True
                moves += 1
        if not changed:
            break
    return thresholds, rounds, moves


def tune_label_thresholds(proba: np.ndarray, y: np.ndarray, beta: float = 1.0, start: float = 0.5, cv: int = 5,
                          seed: int = 13, max_rounds: int = 20) -> dict:
    """Global and per-label thresholds for ``proba`` (n, L) and the boolean gold matrix ``y`` (see the module docstring).

    Returns ``{"global", "per_label" (array), "before", "after", "rounds", "moves", "cv"}``;
    ``before``/``after``: valid micro F-beta at ``start`` and with the kept thresholds.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    n, n_labels = proba.shape
    glob = tune_global(proba, y, beta, start)
    per_label, rounds, moves = tune_per_label(proba, y, beta, np.full(n_labels, glob), max_rounds)
    check = None
    folds = min(cv, n)
    if cv >= 2 and folds >= 2:
        from sklearn.model_selection import KFold

        oof_global = np.zeros_like(y)
        oof_label = np.zeros_like(y)
        for train, held in KFold(n_splits=folds, shuffle=True, random_state=seed).split(proba):
            g = tune_global(proba[train], y[train], beta, start)
            t, _, _ = tune_per_label(proba[train], y[train], beta, np.full(n_labels, g), max_rounds)
            oof_global[held] = proba[held] >= g
            oof_label[held] = proba[held] >= t
        before = micro_fbeta(y, proba >= start, beta)
        after_global, after_label = micro_fbeta(y, oof_global, beta), micro_fbeta(y, oof_label, beta)
        keep_global = after_global > before + 1e-12
        keep_label = after_label > max(after_global if keep_global else before, before) + 1e-12
        check = {"folds": folds, "seed": seed, "oof_before": before, "oof_global": after_global,
                 "oof_after": after_label, "global_accepted": bool(keep_global), "accepted": bool(keep_label)}
        if not keep_global:
            glob = start
        if not keep_label:
            per_label, moves = np.full(n_labels, glob), 0
    return {"global": float(glob), "per_label": per_label, "before": micro_fbeta(y, proba >= start, beta),
            "after": micro_fbeta(y, proba >= per_label, beta), "rounds": rounds, "moves": moves, "cv": check}


def indicator_matrix(label_sets, label_order, path="", line_numbers=None) -> np.ndarray:
    """Label sets as a boolean (n, L) matrix in ``label_order``; a label the model does not know is a one-line DataError
    naming the file line of the first such row (``line_numbers``: the dataset's)."""
    index = {label: i for i, label in enumerate(label_order)}
    unknown = sorted({label for row in label_sets for label in row} - set(index))
    if unknown:
        first = first_unknown_label(label_sets, index, line_numbers)
        raise DataError(path or "data", f"label(s) {', '.join(map(repr, unknown))} unknown to the model "
                        f"(its labels: {', '.join(label_order)})", first[1] if first else None)
    y = np.zeros((len(label_sets), len(label_order)), dtype=bool)
    for i, row in enumerate(label_sets):
        y[i, [index[label] for label in row]] = True
    return y


def thresholds_block(predictor, proba: np.ndarray, y: np.ndarray, beta: float, cv: int, seed: int, max_rounds: int) -> dict:
    """The ``thresholds`` block of a multi-label model's meta.json tuned on (``proba``, ``y``) (without the valid-file fields)."""
    from textclf.core.decision import decision_settings
    from textclf.core.metrics import beta_name

    start, at_least_one = decision_settings(predictor.meta)
    result = tune_label_thresholds(proba, y, beta, start, cv, seed, max_rounds)

    def subset(thresholds) -> float:  # subset accuracy under the real rule (at_least_one included)
        return float(np.mean(np.all(decide_multilabel(proba, thresholds, at_least_one) == y, axis=1))) if len(y) else 0.0
    return {
        "task": "multilabel",
        "global": result["global"],
        "per_label": {label: float(t) for label, t in zip(predictor.labels, result["per_label"], strict=True)},
        "at_least_one": at_least_one,
        "beta": float(beta),
        "metric": f"micro_{beta_name(beta)}",
        "untuned_threshold": start,
        "valid_before": result["before"],
        "valid_after": result["after"],
        "valid_accuracy_before": subset(start),
        "valid_accuracy_after": subset(result["per_label"]),
        "rounds": result["rounds"],
        "moves": result["moves"],
        "cv": result["cv"],
    }

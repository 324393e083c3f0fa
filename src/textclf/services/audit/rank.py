"""Ranking likely label errors: cleanlab's confident learning, and near-duplicate texts with different labels.

Multi-class: :func:`cleanlab.filter.find_label_issues` on the families' averaged out-of-fold
probabilities flags the rows, ranked by self-confidence (the probability of the given label);
:func:`cleanlab.rank.get_label_quality_scores` orders every row the same way (the benchmark's
top-N). Multi-label: :func:`cleanlab.multilabel_classification.filter.find_multilabel_issues_per_class`
flags (row, label) pairs: a label given that the models doubt, or one missing that they see.
cleanlab runs with ``n_jobs=1``: its default forks a process pool, which can deadlock in a process
that holds threads (a server, a browser driver) and gains nothing at these sizes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from textclf.core.data import Dataset

LABEL_ISSUE, DUPLICATE = "label_issue", "conflicting_duplicate"


@dataclass
class Issue:
    """One suspect: the row (0-based index into the data), why, the suggestion and the evidence."""

    row: int
    kind: str
    given: str
    suggested: str
    self_confidence: float
    votes: dict[str, str] = field(default_factory=dict)
    label: str = ""  # multi-label: the label in question
    duplicates: list[int] = field(default_factory=list)


def normalise(text: str) -> str:
    """The text compared for near-duplicates: NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def duplicate_groups(texts: list[str]) -> list[list[int]]:
    """Groups (two rows or more) of rows whose normalised texts are equal."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        groups[normalise(text)].append(i)
    return [rows for key, rows in groups.items() if key and len(rows) > 1]


def quality_order(given: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Every row, most suspect first: cleanlab's self-confidence label quality, ascending (ties by row)."""
    from cleanlab.rank import get_label_quality_scores

    scores = get_label_quality_scores(given, proba, method="self_confidence")
    return np.lexsort((np.arange(len(given)), scores))


def flagged_rows(given: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """cleanlab's label issues (confident learning, prune by noise rate), ranked by self-confidence."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(given, proba, return_indices_ranked_by="self_confidence", n_jobs=1), dtype=int)


def suggestion(p: np.ndarray, given: int) -> int:
    """The most likely label; when that is the given one, the runner-up."""
    order = np.argsort(-p, kind="stable")
    return int(order[0] if order[0] != given else order[1])


def multiclass_issues(ds: Dataset, labels: list[str], proba: np.ndarray, votes: dict[str, np.ndarray]) -> list[Issue]:
    """Label issues (cleanlab, ranked) then conflicting near-duplicates of a multi-class dataset."""
    index = {label: j for j, label in enumerate(labels)}
    given = np.array([index[label] for label in ds.labels])

    def vote(i: int) -> dict[str, str]:
        return {name: labels[int(np.argmax(p[i]))] for name, p in votes.items()}

    out = [Issue(int(i), LABEL_ISSUE, ds.labels[i], labels[suggestion(proba[i], given[i])], float(proba[i, given[i]]), vote(i))
           for i in flagged_rows(given, proba)]
    for group in duplicate_groups(ds.texts):
        if len({ds.labels[i] for i in group}) < 2:
            continue
        best = labels[int(np.argmax(proba[group].sum(axis=0)))]
        for i in group:
            if ds.labels[i] != best:
                out.append(Issue(i, DUPLICATE, ds.labels[i], best, float(proba[i, given[i]]), vote(i),
                                 duplicates=[j for j in group if j != i]))
    return out


def multilabel_issues(ds: Dataset, labels: list[str], proba: np.ndarray, votes: dict[str, np.ndarray]) -> list[Issue]:
    """Per-label issues of a multi-label dataset (cleanlab's multi-label mode), most suspect first."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    index = {label: j for j, label in enumerate(labels)}
    given = [[index[label] for label in row] for row in ds.labels]
    ranked, _, _ = find_multilabel_issues_per_class(given, proba, return_indices_ranked_by="self_confidence", n_jobs=1)
    found = []
    for k, rows in enumerate(ranked):
        for i in rows:
            i = int(i)
            has = labels[k] in ds.labels[i]
            conf = float(proba[i, k] if has else 1.0 - proba[i, k])
            new = sorted(set(ds.labels[i]) - {labels[k]}) if has else sorted({*ds.labels[i], labels[k]})
            vote = {name: "|".join(labels[j] for j in np.flatnonzero(p[i] >= 0.5)) for name, p in votes.items()}
            found.append(Issue(i, LABEL_ISSUE, "|".join(ds.labels[i]), "|".join(new), conf, vote, label=labels[k]))
    found.sort(key=lambda issue: (issue.self_confidence, issue.row))
    return found


def _normalised(p: np.ndarray) -> np.ndarray:
    row_sum = p.sum(axis=1, keepdims=True)
    return np.divide(p, row_sum, out=np.full_like(p, 1.0 / p.shape[1]), where=row_sum > 0)


def _nll(p: np.ndarray, given: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(given)), given], 1e-12, None))))


def tempered(p: np.ndarray, given: np.ndarray) -> np.ndarray:
    """``p`` temperature-scaled to the lowest out-of-fold log-loss on the given labels (the core's temperature fit,
    :func:`textclf.core.calibration.fit_method`: one parameter, scipy's bounded minimiser)."""
    from textclf.core.calibration import fit_method

    p = _normalised(p)
    return fit_method("temperature", p, given, [str(j) for j in range(p.shape[1])], "multiclass").apply(p)


def combine(family_proba: dict[str, np.ndarray], given: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The families' out-of-fold probabilities averaged: each temperature-scaled, then weighted to the lowest log-loss.

    A plain mean lets an over-confident or weak member swamp a better one; the temperature (one per
    family) and the simplex weights (scipy, fitted on the given labels: a handful of parameters,
    no room to learn the noise) keep the average at least as good as its best member.
    """
    from scipy.optimize import minimize
    from scipy.special import softmax

    names = list(family_proba)
    scaled = np.stack([tempered(family_proba[n], given) for n in names])
    if len(names) == 1:
        return scaled[0], {names[0]: 1.0}
    fit = minimize(lambda z: _nll(np.tensordot(softmax(z), scaled, axes=1), given), np.zeros(len(names)), method="Nelder-Mead")
    w = softmax(fit.x)
    return np.tensordot(w, scaled, axes=1), {n: round(float(x), 4) for n, x in zip(names, w, strict=True)}


def find_issues(ds: Dataset, labels: list[str],
                family_proba: dict[str, np.ndarray]) -> tuple[list[Issue], np.ndarray, dict[str, float]]:
    """The suspects of ``ds``, the averaged out-of-fold probabilities they were found on and the families' weights
    (:func:`combine`; multi-label: the plain mean per label)."""
    if ds.multilabel:
        proba = np.mean(list(family_proba.values()), axis=0)
        return multilabel_issues(ds, labels, proba, family_proba), proba, {n: 1 / len(family_proba) for n in family_proba}
    index = {label: j for j, label in enumerate(labels)}
    proba, weights = combine(family_proba, np.array([index[label] for label in ds.labels]))
    return multiclass_issues(ds, labels, proba, family_proba), proba, weights

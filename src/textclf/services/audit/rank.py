"""Ranking likely label errors: cleanlab's confident learning, and near-duplicate texts with different labels.

Multi-class: :func:`cleanlab.filter.find_label_issues` on the families' averaged out-of-fold
probabilities flags the rows, ranked by self-confidence (the probability of the given label);
:func:`cleanlab.rank.get_label_quality_scores` orders every row the same way (the benchmark's
top-N). Multi-label: :func:`cleanlab.multilabel_classification.filter.find_multilabel_issues_per_class`
flags (row, label) pairs: a label given that the models doubt, or one missing that they see.
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

    return np.asarray(find_label_issues(given, proba, return_indices_ranked_by="self_confidence"), dtype=int)


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
    ranked, _, _ = find_multilabel_issues_per_class(given, proba, return_indices_ranked_by="self_confidence")
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


def find_issues(ds: Dataset, labels: list[str], family_proba: dict[str, np.ndarray]) -> tuple[list[Issue], np.ndarray]:
    """The suspects of ``ds`` and the averaged out-of-fold probabilities they were found on."""
    proba = np.mean(list(family_proba.values()), axis=0)
    if ds.multilabel:
        return multilabel_issues(ds, labels, proba, family_proba), proba
    row_sum = proba.sum(axis=1, keepdims=True)
    proba = np.divide(proba, row_sum, out=np.full_like(proba, 1.0 / proba.shape[1]), where=row_sum > 0)
    return multiclass_issues(ds, labels, proba, family_proba), proba

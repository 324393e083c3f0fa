"""A scikit-learn classifier's probabilities with one column per label index (for the embeddings and SetFit heads)."""

from __future__ import annotations

import numpy as np


def proba_in_label_order(clf, x: np.ndarray, n_labels: int, multilabel: bool = False) -> np.ndarray:
    """``clf.predict_proba(x)`` with one column per label index ``0..n_labels-1`` (classes the fit never saw get 0).

    ``multilabel``: ``clf`` was fitted on a label indicator matrix; the independent per-label
    probabilities (:func:`textclf.core.sklearn_model.multilabel_proba`).
    """
    if multilabel:
        from textclf.core.sklearn_model import multilabel_proba

        return multilabel_proba(clf, x, n_labels)
    proba = clf.predict_proba(x)
    out = np.zeros((len(x), n_labels), dtype=np.float64)
    out[:, np.asarray(clf.classes_, dtype=int)] = proba
    return out

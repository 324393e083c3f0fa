"""textclf.core.metrics against scikit-learn on random and real predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from textclf.core.metrics import classification_metrics, fbeta_score, format_report


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_labels", [2, 5])
def test_matches_sklearn(seed, n_labels):
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(n_labels)]
    y_true = list(rng.choice(labels, 300, p=np.linspace(1, 3, n_labels) / np.linspace(1, 3, n_labels).sum()))
    y_pred = [t if rng.random() < 0.6 else rng.choice(labels) for t in y_true]
    if n_labels == 5:
        y_pred = [p if p != "c4" else "c3" for p in y_pred]  # a class never predicted: zero division
    m = classification_metrics(y_true, y_pred, labels)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for beta, name in ((1.0, "f1"), (0.5, "f0.5")):
        for avg in ("macro", "micro", "weighted"):
            expected = skm.fbeta_score(y_true, y_pred, beta=beta, average=avg, labels=labels, zero_division=0)
            assert m[f"{avg}_{name}"] == pytest.approx(expected), (avg, name)
            assert fbeta_score(y_true, y_pred, beta, avg, labels) == pytest.approx(expected)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert m["per_class"][label]["precision"] == pytest.approx(p[i])
        assert m["per_class"][label]["recall"] == pytest.approx(r[i])
        assert m["per_class"][label]["f1"] == pytest.approx(f[i])
        assert m["per_class"][label]["support"] == s[i]
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_any_beta():
    y_true = ["a", "a", "b", "b", "b"]
    y_pred = ["a", "b", "b", "b", "a"]
    m = classification_metrics(y_true, y_pred, betas=(2.0,))
    assert m["macro_f2"] == pytest.approx(skm.fbeta_score(y_true, y_pred, beta=2.0, average="macro"))


def test_report_mentions_everything():
    m = classification_metrics(["x", "y", "y"], ["x", "y", "x"])
    text = format_report(m, title="valid")
    for needle in ("valid", "precision", "f0.5", "macro avg", "weighted avg", "confusion matrix", "accuracy"):
        assert needle in text

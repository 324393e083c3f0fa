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


@pytest.fixture(scope="module")
def real_predictions(tweets):
    """Labels and predicted probabilities of a TF-IDF + logistic regression on the embedded tweets test split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from textclf.core.data import read_labelled

    train, test = read_labelled(tweets["train"]), read_labelled(tweets["test"])
    vectorizer = TfidfVectorizer(min_df=2)
    model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(train.texts), train.labels)
    proba = model.predict_proba(vectorizer.transform(test.texts))
    return list(model.classes_), test.labels, proba


def test_metrics_of_a_real_split_are_sklearns_exactly(real_predictions):
    labels, y_true, proba = real_predictions
    y_pred = [labels[i] for i in proba.argmax(axis=1)]
    m = classification_metrics(y_true, y_pred, labels, betas=(1.0, 0.5, 2.0))
    assert m["n"] == len(y_true) and m["accuracy"] == skm.accuracy_score(y_true, y_pred)
    for beta, name in ((1.0, "f1"), (0.5, "f0.5"), (2.0, "f2")):
        for avg in ("macro", "micro", "weighted"):
            assert m[f"{avg}_{name}"] == skm.fbeta_score(y_true, y_pred, beta=beta, average=avg, labels=labels, zero_division=0)
    for avg in ("macro", "weighted"):
        assert m[f"{avg}_precision"] == skm.precision_score(y_true, y_pred, average=avg, labels=labels, zero_division=0)
        assert m[f"{avg}_recall"] == skm.recall_score(y_true, y_pred, average=avg, labels=labels, zero_division=0)
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert 0.6 < m["macro_f1"] < 1.0  # a real model: neither chance nor perfect


def test_count_formula_equals_sklearn_bit_for_bit(real_predictions):
    from textclf.core.metrics import class_counts, fbeta_from_counts
    from textclf.services.compare.thresholds import macro_fbeta

    labels, y_true, proba = real_predictions
    y = np.array([labels.index(v) for v in y_true])
    pred = proba.argmax(axis=1)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(y)) < 0.3, rng.integers(0, 4, len(y)), pred)  # 4 classes: two never true
    unknown = np.where(rng.random(len(y)) < 0.1, -1, pred)  # -1: a prediction outside the labels, a miss of its row
    for p, k in ((pred, 2), (noisy, 4), (unknown, 2)):
        for beta in (0.5, 1.0, 2.0):
            expected = skm.fbeta_score(y, p, beta=beta, average="macro", labels=list(range(k)), zero_division=0)
            assert float(fbeta_from_counts(*class_counts(y, p, k), beta)) == expected
            if p.min() >= 0:
                assert macro_fbeta(y, p, k, beta) == expected
    stacked = np.stack([pred, noisy % 2, unknown])  # leading axes: one score per row
    scores = fbeta_from_counts(*class_counts(np.stack([y] * 3), stacked, 2), 1.0)
    assert scores.tolist() == [float(fbeta_from_counts(*class_counts(y, row, 2), 1.0)) for row in stacked]


def test_unknown_labels_are_left_out_and_empty_input_scores_zero():
    # a prediction outside ``labels`` drops its pair (as the confusion matrix does); accuracy still counts it
    m = classification_metrics(["a", "a", "b", "b"], ["a", "zz", "b", "a"], ["a", "b"])
    assert m["accuracy"] == 0.5
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "f0.5": pytest.approx(5 / 9),
                                   "support": 1}
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]
    empty = classification_metrics([], [], ["a", "b"])
    assert empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0 and empty["confusion_matrix"] == [[0, 0], [0, 0]]
    assert fbeta_score([], [], 1.0, "weighted", ["a", "b"]) == 0.0
    one = classification_metrics(["x", "x"], ["x", "x"])  # one label: no scikit-learn 1x1 warning, all perfect
    assert one["macro_f1"] == 1.0 and one["confusion_matrix"] == [[2]]
    with pytest.raises(ValueError, match="unknown average 'samples'; use macro, micro or weighted"):
        fbeta_score(["a"], ["a"], average="samples")

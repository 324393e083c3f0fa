"""scikit-learn classifiers over embeddings: ``logreg``, ``linear_svm``, ``knn``, ``mlp``, ``hgb``.

Each is built from a params dict (``classifiers.<name>`` in families/embeddings/config.json; the search
space holds ``<name>.<param>`` entries). ``knn`` is :class:`CosineKNN`: cosine similarity on
L2-normalised vectors and distance-weighted votes, computed exactly by brute force.

Multi-label (``y`` a label indicator matrix): ``logreg``, ``linear_svm`` and ``hgb`` are wrapped in
scikit-learn's ``OneVsRestClassifier`` (one binary classifier a label); ``mlp`` is multi-label
natively (one sigmoid output a label, scikit-learn's MLPClassifier on indicator targets); ``knn``
votes per label (the weighted share of the neighbours carrying each label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from textclf.core.errors import ConfigError

CLASSIFIERS = ("logreg", "linear_svm", "knn", "mlp", "hgb")
KNN_EPS = 1e-6


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class CosineKNN(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity, votes weighted by ``1 / (cosine distance + eps)``.

    ``predict_proba(x)[i, c]`` is the sum of the weights of the ``k`` most similar training rows of
    class ``c`` divided by the sum over all ``k``: exactly what a brute-force loop over the training set
    gives (``1 - cos`` is the cosine distance; ``eps`` keeps an exact duplicate finite). Ties at the
    k-th similarity are broken by training-row order. Fitted on a label indicator matrix (multi-label),
    ``predict_proba(x)[i, l]`` is the weighted share of the ``k`` neighbours that carry label ``l``
    (``classes_`` are the label indices).
    """

    def __init__(self, n_neighbors: int = 15, eps: float = KNN_EPS, chunk_size: int = 1024):
        self.n_neighbors = n_neighbors
        self.eps = eps
        self.chunk_size = chunk_size

    def fit(self, x: np.ndarray, y: Sequence) -> CosineKNN:
        """Store the normalised training rows and their class indices (or label indicator rows)."""
        y = np.asarray(y)
        if y.ndim == 2:
            self.classes_, self.y_ = np.arange(y.shape[1]), y.astype(np.float64)
        else:
            self.classes_, self.y_ = np.unique(y, return_inverse=True)
        self.x_ = l2_normalize(x)
        self.n_features_in_ = self.x_.shape[1]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Distance-weighted vote shares of the k most cosine-similar training rows."""
        q = l2_normalize(x)
        k = max(1, min(int(self.n_neighbors), len(self.y_)))
        out = np.zeros((len(q), len(self.classes_)), dtype=np.float64)
        for start in range(0, len(q), self.chunk_size):
            sims = q[start:start + self.chunk_size] @ self.x_.T
            # stable sort of -similarity: ties keep training order, like a brute-force loop
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            top_sims = np.take_along_axis(sims, top, axis=1)
            weights = 1.0 / (np.clip(1.0 - top_sims, 0.0, None) + self.eps)
            block = out[start:start + self.chunk_size]
            if self.y_.ndim == 2:  # per-label votes: weights times the neighbours' indicator rows
                block += np.einsum("nk,nkl->nl", weights, self.y_[top])
                block /= weights.sum(axis=1, keepdims=True)
                continue
            for j in range(k):
                np.add.at(block, (np.arange(len(block)), self.y_[top[:, j]]), weights[:, j])
        return out if self.y_.ndim == 2 else out / out.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The class with the largest vote share (multi-label: the indicator of the labels with a share >= 0.5)."""
        if self.y_.ndim == 2:
            return (self.predict_proba(x) >= 0.5).astype(int)
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


def make_classifier(name: str, params: dict, seed: int = 13, n_train: int | None = None,
                    min_class_count: int | None = None, multilabel: bool = False) -> BaseEstimator:
    """A fresh scikit-learn estimator ``name`` with ``params`` (unknown params raise ConfigError).

    ``multilabel``: an estimator for a label indicator matrix (one-vs-rest where the classifier has
    no multi-output of its own; ``min_class_count`` is then the smallest class of any label's binary problem).
    """
    from textclf.core.sklearn_model import one_vs_rest

    clf = _make(name, dict(params), seed, n_train, min_class_count)
    return clf if name in ("knn", "mlp") else one_vs_rest(clf, multilabel)


def _make(name: str, p: dict, seed: int, n_train: int | None, min_class_count: int | None) -> BaseEstimator:
    try:
        if name == "logreg":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=p.pop("C", 1.0), max_iter=p.pop("max_iter", 2000), class_weight=p.pop("class_weight", None),
                                      random_state=seed, **p)
        if name == "linear_svm":
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.svm import LinearSVC

            cv = p.pop("cv", 3)
            if min_class_count is not None:
                cv = max(2, min(cv, min_class_count))
            svm = LinearSVC(C=p.pop("C", 1.0), class_weight=p.pop("class_weight", None), random_state=seed, **p)
            return CalibratedClassifierCV(svm, cv=cv, method="sigmoid")
        if name == "knn":
            return CosineKNN(n_neighbors=p.pop("n_neighbors", 15), **p)
        if name == "mlp":
            from sklearn.neural_network import MLPClassifier

            hidden = p.pop("hidden_layer_sizes", 256)
            hidden = tuple(hidden) if isinstance(hidden, list | tuple) else (int(hidden),)
            early = p.pop("early_stopping", True) and (n_train is None or n_train >= 50)
            return MLPClassifier(hidden_layer_sizes=hidden, alpha=p.pop("alpha", 1e-4),
                                 learning_rate_init=p.pop("learning_rate_init", 1e-3), max_iter=p.pop("max_iter", 200),
                                 early_stopping=early, random_state=seed, **p)
        if name == "hgb":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(learning_rate=p.pop("learning_rate", 0.1), max_iter=p.pop("max_iter", 200),
                                                  max_leaf_nodes=p.pop("max_leaf_nodes", 31),
                                                  l2_regularization=p.pop("l2_regularization", 0.0), random_state=seed, **p)
    except TypeError as exc:
        raise ConfigError(f"classifier {name!r}: bad parameter ({exc})") from None
    raise ConfigError(f"classifier: unknown {name!r}; known: {', '.join(CLASSIFIERS)}")

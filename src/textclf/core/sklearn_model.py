"""A Predictor over a fitted scikit-learn pipeline (texts in, ``predict_proba`` out), saved as ``model.skops``.

A family whose model is a scikit-learn pipeline (the example plug-ins ``tfidf_logreg`` and
``svm_char``) subclasses :class:`SklearnPredictor`, sets ``kind`` and returns
``MyPredictor.from_pipeline(pipeline, context.output_dir, splits.labels)`` from its ``fit``: saving,
loading and putting the probability columns in the model's label order happen here once.

Multi-label (``splits.task == "multilabel"``): :func:`targets` gives the label indicator matrix to
fit on, :func:`one_vs_rest` wraps a single-output classifier in scikit-learn's
``OneVsRestClassifier`` (one binary classifier a label), and :func:`multilabel_proba` turns any
multi-output ``predict_proba`` (OvR's ``(n, L)`` array, or the list of per-label ``(n, 2)`` arrays of
``KNeighborsClassifier``) into independent per-label probabilities in label order; the pipeline's
``classes_`` are then the label indices ``0..L-1``.

The pipeline is saved with skops, which rebuilds only trusted types (:mod:`textclf.core.skops_io`);
a ``model.joblib`` written by an older textclf (a pickle) loads only with ``--trust-code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.model_checks import check_label_indices, check_label_names
from textclf.core.predictor import Predictor
from textclf.core.skops_io import load_sklearn, save_sklearn

MODEL_FILE = "model.skops"
LEGACY_FILE = "model.joblib"


def label_indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """The ``(n, len(labels))`` 0/1 matrix of ``label_sets``, columns in ``labels`` order (scikit-learn's MultiLabelBinarizer)."""
    from sklearn.preprocessing import MultiLabelBinarizer

    return MultiLabelBinarizer(classes=list(labels)).fit_transform(label_sets)


def targets(ds, labels: Sequence[str]):
    """What a scikit-learn estimator fits on for dataset ``ds``: its labels, or their indicator matrix when multi-label."""
    return label_indicator(ds.labels, labels) if ds.multilabel else list(ds.labels)


def one_vs_rest(estimator, multilabel: bool):
    """``estimator`` itself (multi-class), or a ``OneVsRestClassifier`` of it: one binary copy a label (multi-label)."""
    if not multilabel:
        return estimator
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(estimator)


def multilabel_proba(estimator, x, n_labels: int) -> np.ndarray:
    """Independent per-label probabilities ``(n, n_labels)`` of an estimator fitted on a label indicator matrix.

    ``predict_proba`` gives an ``(n, L)`` array (OneVsRestClassifier, MLPClassifier) or a list of one
    ``(n, k)`` array a label (KNeighborsClassifier, the forests): the column of class 1 is taken, 0 for a
    label whose training column had no 1.
    """
    proba = estimator.predict_proba(x)
    if isinstance(proba, list):
        columns = []
        for p, classes in zip(proba, estimator.classes_, strict=True):
            ones = np.flatnonzero(np.asarray(classes) == 1)
            columns.append(p[:, ones[0]] if len(ones) else np.zeros(len(p)))
        proba = np.column_stack(columns) if columns else np.zeros((len(x), 0))
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1:] != (n_labels,):
        raise ModelError(f"the classifier gives {proba.shape[1:]} probability columns for {n_labels} labels")
    return proba


class SklearnPredictor(Predictor):
    """A fitted scikit-learn pipeline with ``predict_proba`` and ``classes_``, behind textclf's Predictor."""

    #: type names (beyond skops' defaults and textclf's own list) a subclass's pipeline holds and trusts
    trusted_types: tuple[str, ...] = ()

    def __init__(self, model_dir: str | Path, meta: dict, pipeline):
        super().__init__(model_dir, meta)
        self.pipeline = pipeline
        if self.multilabel:  # fitted on the indicator matrix: classes_ are the label indices
            self.columns = list(range(len(self.labels)))
            return
        classes = [str(c) for c in pipeline.classes_]
        #: column of ``self.labels[i]`` in the pipeline's output (-1: a label the pipeline never saw)
        self.columns = [classes.index(label) if label in classes else -1 for label in self.labels]

    @classmethod
    def from_pipeline(cls, pipeline, model_dir: str | Path, labels: Sequence[str], task: str = "multiclass",
                      config: dict | None = None) -> SklearnPredictor:
        """Save ``pipeline`` as ``model_dir/model.skops`` (atomically) and return the Predictor over it.

        ``task`` and ``config`` (its ``decision`` block) are the run's: a multi-label pipeline is
        evaluated on label sets before meta.json exists.
        """
        save_sklearn(pipeline, Path(model_dir) / MODEL_FILE)
        return cls(model_dir, {"labels": list(labels), "kind": cls.kind, "task": task, "config": config or {}}, pipeline)

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> SklearnPredictor:
        """Load ``model.skops`` (or the legacy ``model.joblib``, or ``model_file``) of a model directory."""
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ModelError(f"{path}: {cls.kind} model file not found")
        pipeline = load_sklearn(path, also=cls.trusted_types, what="scikit-learn pipeline", attributes=("classes_",))
        if meta.get("task") == "multilabel":
            check_label_indices(pipeline, path, meta["labels"])
        else:
            check_label_names(path, pipeline.classes_, meta["labels"])
        return cls(model_dir, meta, pipeline)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (multi-label: independent per-label ones), columns in ``self.labels`` order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if len(texts) == 0:
            return out
        if self.multilabel:
            return multilabel_proba(self.pipeline, list(texts), len(self.labels))
        proba = self.pipeline.predict_proba(list(texts))
        for i, column in enumerate(self.columns):
            if column >= 0:
                out[:, i] = proba[:, column]
        return out

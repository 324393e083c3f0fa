"""A Predictor over a fitted scikit-learn pipeline (texts in, ``predict_proba`` out), saved as ``model.skops``.

A family whose model is a scikit-learn pipeline (the example plug-ins ``tfidf_logreg`` and
``svm_char``) subclasses :class:`SklearnPredictor`, sets ``kind`` and returns
``MyPredictor.from_pipeline(pipeline, context.output_dir, splits.labels)`` from its ``fit``: saving,
loading and putting the probability columns in the model's label order happen here once.

The pipeline is saved with skops, which rebuilds only trusted types (:mod:`textclf.core.skops_io`);
a ``model.joblib`` written by an older textclf (a pickle) loads only with ``--trust-code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.model_checks import check_label_names
from textclf.core.predictor import Predictor
from textclf.core.skops_io import load_sklearn, save_sklearn

MODEL_FILE = "model.skops"
LEGACY_FILE = "model.joblib"


class SklearnPredictor(Predictor):
    """A fitted scikit-learn pipeline with ``predict_proba`` and ``classes_``, behind textclf's Predictor."""

    #: type names (beyond skops' defaults and textclf's own list) a subclass's pipeline holds and trusts
    trusted_types: tuple[str, ...] = ()

    def __init__(self, model_dir: str | Path, meta: dict, pipeline):
        super().__init__(model_dir, meta)
        self.pipeline = pipeline
        classes = [str(c) for c in pipeline.classes_]
        #: column of ``self.labels[i]`` in the pipeline's output (-1: a label the pipeline never saw)
        self.columns = [classes.index(label) if label in classes else -1 for label in self.labels]

    @classmethod
    def from_pipeline(cls, pipeline, model_dir: str | Path, labels: Sequence[str]) -> SklearnPredictor:
        """Save ``pipeline`` as ``model_dir/model.skops`` (atomically) and return the Predictor over it."""
        save_sklearn(pipeline, Path(model_dir) / MODEL_FILE)
        return cls(model_dir, {"labels": list(labels), "kind": cls.kind}, pipeline)

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> SklearnPredictor:
        """Load ``model.skops`` (or the legacy ``model.joblib``, or ``model_file``) of a model directory."""
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ModelError(f"{path}: {cls.kind} model file not found")
        pipeline = load_sklearn(path, also=cls.trusted_types, what="scikit-learn pipeline", attributes=("classes_",))
        check_label_names(path, pipeline.classes_, meta["labels"])
        return cls(model_dir, meta, pipeline)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``self.labels`` order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if len(texts) == 0:
            return out
        proba = self.pipeline.predict_proba(list(texts))
        for i, column in enumerate(self.columns):
            if column >= 0:
                out[:, i] = proba[:, column]
        return out

"""A Predictor over a fitted scikit-learn pipeline (texts in, ``predict_proba`` out), saved as ``model.joblib``.

A family whose model is a scikit-learn pipeline (the example plug-ins ``tfidf_logreg`` and
``svm_char``) subclasses :class:`SklearnPredictor`, sets ``kind`` and returns
``MyPredictor.from_pipeline(pipeline, context.output_dir, splits.labels)`` from its ``fit``: saving,
loading and putting the probability columns in the model's label order happen here once.

joblib is scikit-learn's own persistence format (a pickle): ``load_predictor`` announces the
pickle and checks its SHA-256 against meta.json before loading it (:mod:`textclf.core.integrity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.atomic import atomic_replace_file
from textclf.core.errors import ModelError
from textclf.core.model_checks import check_label_names, check_loaded_object
from textclf.core.predictor import Predictor

MODEL_FILE = "model.joblib"


class SklearnPredictor(Predictor):
    """A fitted scikit-learn pipeline with ``predict_proba`` and ``classes_``, behind textclf's Predictor."""

    def __init__(self, model_dir: str | Path, meta: dict, pipeline):
        super().__init__(model_dir, meta)
        self.pipeline = pipeline
        classes = [str(c) for c in pipeline.classes_]
        #: column of ``self.labels[i]`` in the pipeline's output (-1: a label the pipeline never saw)
        self.columns = [classes.index(label) if label in classes else -1 for label in self.labels]

    @classmethod
    def from_pipeline(cls, pipeline, model_dir: str | Path, labels: Sequence[str]) -> SklearnPredictor:
        """Save ``pipeline`` as ``model_dir/model.joblib`` (atomically) and return the Predictor over it."""
        import joblib

        atomic_replace_file(lambda tmp: joblib.dump(pipeline, tmp), Path(model_dir) / MODEL_FILE)
        return cls(model_dir, {"labels": list(labels), "kind": cls.kind}, pipeline)

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> SklearnPredictor:
        """Load ``model.joblib`` (or ``model_file``) of a model directory."""
        import joblib

        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ModelError(f"{path}: {cls.kind} model file not found")
        pipeline = check_loaded_object(joblib.load(path), path, what="scikit-learn pipeline", attributes=("classes_",))
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

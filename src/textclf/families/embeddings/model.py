"""The embeddings family's Predictor: embed raw text with the recorded encoder, then the saved classifier.

A model directory holds ``classifier.skops`` (the fitted scikit-learn estimator, saved with skops,
atomically), ``tfidf_svd.skops`` when the encoder is the fitted TF-IDF + SVD baseline, and
``meta.json`` whose ``encoder`` block names the sentence encoder (name, weight hash, max length,
pooling, normalisation) so it is rebuilt the same way at prediction time. Models written by older
versions hold ``*.joblib`` pickles instead, which load only with ``--trust-code``
(:mod:`textclf.core.skops_io`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.predictor import Predictor
from textclf.families.common.encoders import load_encoder
from textclf.families.common.sklearn_proba import proba_in_label_order

KIND = "embeddings"
CLASSIFIER_FILE = "classifier.skops"
#: the family's own estimator classes a saved classifier may hold (trusted by skops when loading)
TRUSTED_TYPES = ("textclf.families.embeddings.classifiers.CosineKNN",)


def save_classifier(clf, model_dir: str | Path) -> Path:
    """Write ``clf`` to ``model_dir/classifier.skops`` atomically (temp file + rename)."""
    from textclf.core.skops_io import save_sklearn

    return save_sklearn(clf, Path(model_dir) / CLASSIFIER_FILE)


class EmbeddingsPredictor(Predictor):
    """Sentence encoder (or TF-IDF + SVD) + scikit-learn classifier behind the shared Predictor interface."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, encoder, classifier):
        super().__init__(model_dir, meta)
        self.encoder = encoder
        self.classifier = classifier
        self.known: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> EmbeddingsPredictor:
        """Load ``classifier.skops`` (or ``model_file``) and rebuild the encoder ``meta.json`` records.

        The device is ``device``, else ``$TEXTCLF_DEVICE``, else auto (a model trained on a GPU loads on a CPU).
        """
        from textclf.core.meta import read_meta
        from textclf.core.model_checks import check_label_indices
        from textclf.core.skops_io import load_sklearn

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", CLASSIFIER_FILE)
        if not path.exists():
            raise ModelError(f"{path}: embeddings classifier file not found")
        if "encoder" not in meta:
            raise ModelError(f"{Path(model_dir) / 'meta.json'}: no encoder block; not an embeddings model directory")
        classifier = load_sklearn(path, also=TRUSTED_TYPES, attributes=("classes_",))
        check_label_indices(classifier, path, meta["labels"])
        return cls(model_dir, meta, load_encoder(model_dir, meta["encoder"], device=device), classifier)

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Reuse these already computed vectors for these texts (training evaluates valid/test without re-encoding)."""
        self.known.update(zip(texts, vectors, strict=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The feature matrix of ``texts``: remembered rows reused, the rest encoded (no disk cache here)."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.known]
        if not missing:
            return np.stack([self.known[t] for t in texts])
        fresh = self.encoder.encode(missing, progress=False, desc="predict")
        if not self.known:
            if len(missing) == len(texts):
                return fresh
            lookup = dict(zip(missing, fresh, strict=True))
        else:
            lookup = {**self.known, **dict(zip(missing, fresh, strict=True))}
        return np.stack([lookup[t] for t in texts])

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (multi-label: independent per-label ones), columns in ``self.labels`` order."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return proba_in_label_order(self.classifier, self.embed(texts), len(self.labels), self.multilabel)

"""Training the embeddings family (contract v2): encode once per run (through the cache), fit a classifier.

:func:`fit` is the family's entry: the core's :mod:`textclf.core.fit_flow` runs the Optuna search
with the hooks of :mod:`.search` (encoder x classifier x its hyper-parameters x balance x training
files), refits the best point, evaluates it and writes meta.json. Train/valid/test are encoded by
each encoder at most once per run: the :class:`Features` of a run live in ``context.shared``, so
every trial and the refit reuse them (sentence encoders through the disk cache, so a rerun or
another process loads the vectors); ``tfidf_svd`` is fitted on the train texts (cached too).

A search trial fits the classifier and returns a :class:`TrialPredictor` holding its valid
probabilities, which the search-trial memo (:mod:`.trial_memo`, ``search.memo``) stores; a trial
evaluated before (same vectors, labels, rows, classifier, params, balance, seed) is not refitted.
The final fit saves ``classifier.joblib`` (+ ``tfidf_svd.joblib``) and returns an
:class:`~textclf.families.embeddings.model.EmbeddingsPredictor` that remembers the valid/test
vectors, so the core's evaluation re-encodes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.data import Dataset, balanced_downsample
from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import FILES_KEY
from textclf.core.predictor import Predictor
from textclf.core.training import Splits, fitted_meta
from textclf.families.common.cache import EmbeddingCache
from textclf.families.common.encoders import TFIDF_FILE, TFIDF_SVD, make_encoder
from textclf.families.common.sklearn_proba import proba_in_label_order
from textclf.families.embeddings.classifiers import make_classifier
from textclf.families.embeddings.model import CLASSIFIER_FILE, KIND, EmbeddingsPredictor, save_classifier
from textclf.families.embeddings.trial_memo import TrialMemo, trial_key

log = logging.getLogger(__name__)

#: the ``context.shared`` key of the run's :class:`Features` (one per encoding setting)
SHARED_KEY = "embeddings.features"
#: the config blocks that change the vectors an encoder gives (not the encoder's name: Features holds every encoder)
ENCODING_KEYS = ("encoder", "tfidf_svd", "device", "seed")


class Features:
    """Each encoder's train/valid/test matrices, computed on first use and kept for the run."""

    def __init__(self, cfg: dict, splits: Splits):
        self.cfg = cfg
        self.splits = splits
        self.encoders: dict[str, object] = {}
        self.matrices: dict[str, dict[str, np.ndarray]] = {}
        self.cache_keys: dict[str, dict[str, str]] = {}
        self.chunk_stats: dict[str, dict[str, dict]] = {}

    def get(self, name: str) -> dict[str, np.ndarray]:
        """``{"train": X, "valid": X, "test": X}`` (test only when there is a test split) for encoder ``name``."""
        if name in self.matrices:
            return self.matrices[name]
        enc = make_encoder(name, self.cfg)
        parts = {"train": self.splits.train, "valid": self.splits.valid}
        if self.splits.test is not None:
            parts["test"] = self.splits.test
        out: dict[str, np.ndarray] = {}
        start = time.monotonic()
        expand = None
        if self.splits.train.weights is not None:  # soft labels repeat each text once a class: encode each text once
            unique = list(dict.fromkeys(self.splits.train.texts))
            index = {text: i for i, text in enumerate(unique)}
            expand = np.fromiter((index[t] for t in self.splits.train.texts), dtype=np.int64, count=len(self.splits.train))
            parts["train"] = Dataset(unique, [None] * len(unique), self.splits.train.path)
        cache = EmbeddingCache() if self.cfg.get("encoder", {}).get("cache", True) else None
        keys = {}
        if name == TFIDF_SVD and cache is None:
            enc.fit(parts["train"].texts)
            out = {part: enc.encode(ds.texts, desc=part) for part, ds in parts.items()}
        elif name == TFIDF_SVD:  # the fitted pipeline and its vectors are cached too (keyed by params + train texts)
            fit_key = enc.fit_cached(parts["train"].texts, cache)
            for part, ds in parts.items():
                out[part], keys[part], _ = enc.encode_cached(ds.texts, cache, fit_key, desc=part)
        else:
            for part, ds in parts.items():
                if cache is None:
                    out[part] = enc.encode(ds.texts, desc=part)
                else:
                    out[part], keys[part], _ = enc.encode_cached(ds.texts, cache, desc=part)
            if enc.chunking.chunk:
                self.chunk_stats[name] = {part: enc.chunk_stats(ds.texts) for part, ds in parts.items()}
        if expand is not None:
            out["train"] = out["train"][expand]
        self.cache_keys[name] = keys
        log.info("encoder %s: features %s in %.1fs", name, {k: v.shape for k, v in out.items()}, time.monotonic() - start)
        self.encoders[name] = enc
        self.matrices[name] = out
        return out


def run_features(cfg: dict, splits: Splits, shared: dict) -> Features:
    """The run's :class:`Features` for ``cfg``'s encoding settings, kept in ``shared`` (``context.shared``).

    Every trial and the refit of a run (and every combination of a sweep worker) get the same
    object, so each encoder encodes the splits once; another encoding setting (``encoder.max_length``,
    ``tfidf_svd.*``) or other splits get their own.
    """
    settings = {k: cfg.get(k) for k in ENCODING_KEYS}
    settings["encoder"] = {k: v for k, v in (settings["encoder"] or {}).items() if k != "name"}
    key = (id(splits), json.dumps(settings, sort_keys=True, default=str))
    runs = shared.setdefault(SHARED_KEY, {})
    if key not in runs:
        runs[key] = Features(cfg, splits)
    return runs[key]


def label_indices(splits: Splits, labels: list) -> np.ndarray:
    """Labels as indices into ``splits.labels`` (label sets: their indicator matrix, columns in ``splits.labels`` order)."""
    if splits.multilabel:
        from textclf.core.sklearn_model import label_indicator

        return label_indicator(labels, splits.labels)
    index = {label: i for i, label in enumerate(splits.labels)}
    return np.asarray([index[label] for label in labels], dtype=int)


def fit_classifier(x: np.ndarray, y: np.ndarray, splits: Splits, name: str, params: dict, balance: bool, seed: int,
                   rows: np.ndarray | None = None):
    """Fit classifier ``name`` on ``(x, y)`` (only ``rows`` when given), first cut to the smallest class size when ``balance``.

    ``splits.train.weights`` (distillation's soft labels) are passed as ``sample_weight``; a
    classifier without it (knn) is a one-line ConfigError.
    """
    weights = None if splits.train.weights is None else np.asarray(splits.train.weights, dtype=np.float64)
    if rows is not None:
        x, y = x[rows], y[rows]
        weights = None if weights is None else weights[rows]
    if y.ndim == 2:
        if weights is not None:
            raise ConfigError("per-row weights (soft labels) are for multi-class data only")
        return _fit_multilabel(x, y, name, params, balance, seed)
    if len(np.unique(y)) < 2:
        raise ConfigError(f"the chosen training rows hold {len(np.unique(y))} class(es); need at least 2")
    if balance:
        keep = balanced_downsample([splits.labels[i] for i in y], seed=seed)
        x, y = x[keep], y[keep]
        weights = None if weights is None else weights[keep]
    counts = np.bincount(y, minlength=len(splits.labels))
    clf = make_classifier(name, params, seed=seed, n_train=len(y), min_class_count=int(counts[counts > 0].min()))
    if weights is None:
        clf.fit(x, y)
        return clf
    from sklearn.utils.validation import has_fit_parameter

    if not has_fit_parameter(clf, "sample_weight"):
        raise ConfigError(f"classifier {name} does not take per-row weights (the teacher's soft labels); use logreg, "
                          "linear_svm, mlp or hgb")
    clf.fit(x, y, sample_weight=weights)
    return clf


def _fit_multilabel(x: np.ndarray, y: np.ndarray, name: str, params: dict, balance: bool, seed: int):
    """Fit classifier ``name`` on a label indicator matrix ``y`` (one-vs-rest, or the classifier's own multi-output)."""
    if balance:
        raise ConfigError("balance: downsampling to the smallest class is multi-class only; set balance=false for label sets")
    positives = y.sum(axis=0)
    binary = np.minimum(positives, len(y) - positives)
    smallest = int(binary[binary > 0].min()) if (binary > 0).any() else 1
    clf = make_classifier(name, params, seed=seed, n_train=len(y), min_class_count=smallest, multilabel=True)
    clf.fit(x, y)
    return clf


def train_file_choices(n_files: int) -> list[str]:
    """The training-set make-ups a search picks from when several ``--train_path`` files are given.

    Up to 4 files: every non-empty subset (``"0+2"`` = the first and third file); more files: the first
    k files for every k (the number of datasets to sample from). One file: nothing to choose.
    """
    if n_files < 2:
        return []
    if n_files <= 4:
        subsets = [[i for i in range(n_files) if mask >> i & 1] for mask in range(1, 2 ** n_files)]
        subsets.sort(key=lambda sub: (-len(sub), sub))
    else:
        subsets = [list(range(k)) for k in range(n_files, 0, -1)]
    return ["+".join(map(str, sub)) for sub in subsets]


def file_indices(splits: Splits, files: str | None) -> list[int] | None:
    """The training-file indices ``files`` names (``"0+2"``: the first and third ``--train_path``); None means all."""
    if files is None or files == "":
        return None
    n = max(1, len(splits.train_sources))
    try:
        chosen = sorted({int(i) for i in str(files).split("+")})
    except ValueError:
        chosen = [-1]
    if chosen[0] < 0 or chosen[-1] >= n:
        raise ConfigError(f"train_files {files!r}: expected training-file indices joined by '+' (0..{n - 1}, one per "
                          "--train_path in order)")
    return chosen


def train_rows(splits: Splits, files: str | None) -> np.ndarray | None:
    """Indices of the train rows from the files ``files`` names (``"0+2"``); None means every row."""
    chosen = file_indices(splits, files)
    if chosen is None:
        return None
    return np.flatnonzero(np.isin(np.asarray(splits.train_source_ids), chosen))


def choice(cfg: dict) -> dict:
    """The encoder, classifier, its params, balance and training files ``cfg`` asks for."""
    clf = cfg["classifier"]
    if clf not in cfg["classifiers"]:
        raise ConfigError(f"classifier {clf!r}: no classifiers.{clf} block in the config; known: {', '.join(cfg['classifiers'])}")
    return {"encoder": cfg["encoder"]["name"], "classifier": clf, "params": dict(cfg["classifiers"][clf]),
            "balance": bool(cfg["balance"]), "train_files": cfg.get("train_files")}


class TrialPredictor(Predictor):
    """A search trial's result: its valid probabilities (fitted now or from the trial memo).

    The core scores a trial on valid only; any other text goes to the fitted predictor (``fallback``),
    which a trial loaded from the memo does not have.
    """

    kind = KIND

    def __init__(self, meta: dict, texts: Sequence[str], proba: np.ndarray, fallback: Predictor | None = None):
        super().__init__(".", meta)
        self.known = dict(zip(texts, proba, strict=True))
        self.fallback = fallback

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None) -> Predictor:
        """Never: a search trial is not saved."""
        raise ModelError(f"{model_dir}: a search trial's predictor is not saved")

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The remembered valid probabilities (others from the fitted predictor), columns in ``labels`` order."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        if all(t in self.known for t in texts):
            return np.stack([self.known[t] for t in texts])
        if self.fallback is None:
            raise ModelError("a search trial loaded from the trial memo knows only its valid probabilities")
        return self.fallback.predict_proba(texts)


def trial_memo(cfg: dict) -> TrialMemo | None:
    """The search-trial memo beside the embedding cache, or None (``search.memo`` or ``encoder.cache`` false)."""
    if cfg["search"].get("memo", True) and cfg.get("encoder", {}).get("cache", True):
        return TrialMemo(EmbeddingCache().root)
    return None


def fit_trial(features: Features, splits: Splits, pick: dict, y_train: np.ndarray, rows: np.ndarray | None,
              context, meta: dict) -> TrialPredictor:
    """One search trial: its valid probabilities from the trial memo when it was evaluated before, else a fit."""
    import optuna

    if rows is not None and len(np.unique(y_train[rows])) < 2:
        raise optuna.TrialPruned(f"training files {pick['train_files']} hold fewer than 2 classes")
    x = features.get(pick["encoder"])
    keys = features.cache_keys.get(pick["encoder"], {})
    # the memo key holds the texts and labels, not per-row weights: a weighted (distilled) run does not use it
    memo = trial_memo(features.cfg) if "train" in keys and "valid" in keys and splits.train.weights is None else None
    key, shape = None, (len(splits.valid.labels), len(splits.labels))
    if memo is not None:
        key = trial_key(keys, splits.labels, y_train, rows, pick["classifier"], pick["params"], pick["balance"], context.seed)
        proba = memo.load(key, shape)
        if proba is not None:
            context.trial.set_user_attr("memo_hit", True)
            log.info("trial %d: valid probabilities from the search-trial memo (search.memo)", context.trial.number)
            return TrialPredictor(meta, splits.valid.texts, proba)
    clf = fit_classifier(x["train"], y_train, splits, pick["classifier"], pick["params"], pick["balance"], context.seed, rows)
    proba = proba_in_label_order(clf, x["valid"], len(splits.labels), splits.multilabel)
    if key is not None:
        memo.save(key, proba)
    encoder = features.encoders[pick["encoder"]]
    fitted = EmbeddingsPredictor(context.output_dir, {**meta, "encoder": encoder.describe()}, encoder, clf)
    return TrialPredictor(meta, splits.valid.texts, proba, fallback=fitted)


def fit(cfg: dict, splits: Splits, context) -> Predictor:
    """Fit the configured encoder + classifier on train (family contract v2); a search trial is scored on valid only.

    The final fit (``context.final``) writes ``classifier.joblib`` (+ ``tfidf_svd.joblib``) and returns
    an :class:`EmbeddingsPredictor` remembering the valid/test vectors; its ``fit_info`` gives meta.json
    the encoder record, classifier, params, balance, cache keys, training files and fit seconds.
    """
    pick = choice(cfg)
    features = run_features(cfg, splits, context.shared)
    y_train = label_indices(splits, splits.train.labels)
    rows = train_rows(splits, pick["train_files"])
    if not context.final:
        return fit_trial(features, splits, pick, y_train, rows, context, fitted_meta(KIND, cfg, splits))
    x = features.get(pick["encoder"])
    out = Path(context.output_dir)
    start = time.monotonic()
    clf = fit_classifier(x["train"], y_train, splits, pick["classifier"], pick["params"], pick["balance"], context.seed, rows)
    fit_seconds = time.monotonic() - start
    log.info("fitted %s on %s features in %.1fs", pick["classifier"], pick["encoder"], fit_seconds)
    save_classifier(clf, out)
    encoder = features.encoders[pick["encoder"]]
    files = [CLASSIFIER_FILE]
    if pick["encoder"] == TFIDF_SVD:
        encoder.save(out)
        files.append(TFIDF_FILE)
    record = encoder.describe()
    predictor = EmbeddingsPredictor(out, {**fitted_meta(KIND, cfg, splits), "encoder": record}, encoder, clf)
    predictor.remember(splits.valid.texts, x["valid"])
    if splits.test is not None:
        predictor.remember(splits.test.texts, x["test"])
    indices = file_indices(splits, pick["train_files"])
    chosen = None if indices is None else [splits.train_sources[i].path for i in indices]
    predictor.fit_info = {"model_file": CLASSIFIER_FILE, "encoder": record, "classifier": pick["classifier"],
                          "params": pick["params"], "balance": pick["balance"],
                          "cache_keys": features.cache_keys.get(pick["encoder"], {}), "train_files": chosen,
                          "fit_seconds": fit_seconds, FILES_KEY: files}
    if pick["encoder"] in features.chunk_stats:
        predictor.fit_info["long_text"] = {**encoder.chunking.record(), "max_length": record["max_length"],
                                           "splits": features.chunk_stats[pick["encoder"]]}
    return predictor

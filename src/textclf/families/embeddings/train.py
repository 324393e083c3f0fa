"""Training the embeddings family: encode once (through the cache), fit classifiers, optionally search, save.

Train/valid/test are encoded by each encoder at most once per run (sentence encoders through the
disk cache, so a rerun or another trial loads the vectors); ``tfidf_svd`` is fitted on the train
texts. Without ``search.n_trials``/``timeout`` the configured encoder + classifier is fitted; with
them an Optuna study picks encoder x classifier x its hyper-parameters x balance-by-downsampling on
valid. The best is refitted on train, saved (``classifier.joblib``, ``tfidf_svd.joblib``) and
evaluated by :func:`textclf.core.training.finish_run`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import optuna

from textclf.core.data import balanced_downsample
from textclf.core.errors import ConfigError
from textclf.core.integrity import FILES_KEY, files_block
from textclf.core.metrics import classification_metrics, direction, metric_value
from textclf.core.training import Splits, finish_run
from textclf.core.tuning import (
    best_trial,
    finish_search,
    make_storage,
    open_study,
    record_worker,
    run_search,
    search_summary,
    start_points,
    suggest,
    wants_search,
)
from textclf.families.common.cache import EmbeddingCache
from textclf.families.common.encoders import TFIDF_FILE, TFIDF_SVD, make_encoder
from textclf.families.common.sklearn_proba import proba_in_label_order
from textclf.families.embeddings.classifiers import make_classifier
from textclf.families.embeddings.model import CLASSIFIER_FILE, KIND, EmbeddingsPredictor, save_classifier
from textclf.families.embeddings.trial_memo import TrialMemo, trial_key

log = logging.getLogger(__name__)

PACKAGES = ("sentence-transformers", "scikit-learn", "torch", "transformers")


class Features:
    """Each encoder's train/valid/test matrices, computed on first use and kept for the run."""

    def __init__(self, cfg: dict, splits: Splits):
        self.cfg = cfg
        self.splits = splits
        self.encoders: dict[str, object] = {}
        self.matrices: dict[str, dict[str, np.ndarray]] = {}
        self.cache_keys: dict[str, dict[str, str]] = {}

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
        cache = EmbeddingCache() if self.cfg.get("encoder", {}).get("cache", True) else None
        keys = {}
        if name == TFIDF_SVD and cache is None:
            enc.fit(self.splits.train.texts)
            out = {part: enc.encode(ds.texts, desc=part) for part, ds in parts.items()}
        elif name == TFIDF_SVD:  # the fitted pipeline and its vectors are cached too (keyed by params + train texts)
            fit_key = enc.fit_cached(self.splits.train.texts, cache)
            for part, ds in parts.items():
                out[part], keys[part], _ = enc.encode_cached(ds.texts, cache, fit_key, desc=part)
        else:
            for part, ds in parts.items():
                if cache is None:
                    out[part] = enc.encode(ds.texts, desc=part)
                else:
                    out[part], keys[part], _ = enc.encode_cached(ds.texts, cache, desc=part)
        self.cache_keys[name] = keys
        log.info("encoder %s: features %s in %.1fs", name, {k: v.shape for k, v in out.items()}, time.monotonic() - start)
        self.encoders[name] = enc
        self.matrices[name] = out
        return out


def label_indices(splits: Splits, labels: list[str]) -> np.ndarray:
    """Labels as indices into ``splits.labels``."""
    index = {label: i for i, label in enumerate(splits.labels)}
    return np.asarray([index[label] for label in labels], dtype=int)


def fit_classifier(x: np.ndarray, y: np.ndarray, splits: Splits, name: str, params: dict, balance: bool, seed: int,
                   rows: np.ndarray | None = None):
    """Fit classifier ``name`` on ``(x, y)`` (only ``rows`` when given), first cut to the smallest class size when ``balance``."""
    if rows is not None:
        x, y = x[rows], y[rows]
    if len(np.unique(y)) < 2:
        raise ConfigError(f"the chosen training rows hold {len(np.unique(y))} class(es); need at least 2")
    if balance:
        keep = balanced_downsample([splits.labels[i] for i in y], seed=seed)
        x, y = x[keep], y[keep]
    counts = np.bincount(y, minlength=len(splits.labels))
    clf = make_classifier(name, params, seed=seed, n_train=len(y), min_class_count=int(counts[counts > 0].min()))
    clf.fit(x, y)
    return clf


def valid_metrics(clf, x: np.ndarray, splits: Splits) -> dict:
    """Classification metrics of ``clf`` on the valid matrix."""
    return proba_metrics(proba_in_label_order(clf, x, len(splits.labels)), splits)


def proba_metrics(proba: np.ndarray, splits: Splits) -> dict:
    """Classification metrics of valid probabilities (one column per label, in ``splits.labels`` order)."""
    preds = [splits.labels[i] for i in proba.argmax(axis=1)]
    return classification_metrics(splits.valid.labels, preds, splits.labels)


def trial_valid_proba(features: Features, splits: Splits, y_train: np.ndarray, choice: dict, seed: int,
                      rows: np.ndarray | None, memo: TrialMemo | None) -> tuple[np.ndarray, bool]:
    """Valid probabilities of one search trial, from the trial memo when it was evaluated before; ``(proba, hit)``."""
    x = features.get(choice["encoder"])
    keys = features.cache_keys.get(choice["encoder"], {})
    key = None
    if memo is not None and "train" in keys and "valid" in keys:
        key = trial_key(keys, splits.labels, y_train, rows, choice["classifier"], choice["params"], choice["balance"], seed)
        proba = memo.load(key, (len(splits.valid.labels), len(splits.labels)))
        if proba is not None:
            return proba, True
    clf = fit_classifier(x["train"], y_train, splits, choice["classifier"], choice["params"], choice["balance"], seed, rows)
    proba = proba_in_label_order(clf, x["valid"], len(splits.labels))
    if key is not None:
        memo.save(key, proba)
    return proba, False


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


def train_rows(splits: Splits, files: str | None) -> np.ndarray | None:
    """Indices of the train rows from the files ``files`` names (``"0+2"``); None means every row."""
    if not files:
        return None
    chosen = {int(i) for i in str(files).split("+")}
    ids = np.asarray(splits.train_source_ids)
    return np.flatnonzero(np.isin(ids, sorted(chosen)))


def choice_from(cfg: dict, params: dict) -> dict:
    """Encoder, classifier, its params, balance and training files from (flat) search params over the config's defaults."""
    clf = params.get("classifier", cfg["classifier"])
    if clf not in cfg["classifiers"]:
        raise ConfigError(f"classifier {clf!r}: no classifiers.{clf} block in the config; known: {', '.join(cfg['classifiers'])}")
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(clf + ".")}
    return {"encoder": params.get("encoder", cfg["encoder"]["name"]), "classifier": clf,
            "params": {**cfg["classifiers"][clf], **own}, "balance": bool(params.get("balance", cfg["balance"])),
            "train_files": params.get("train_files")}


def search(cfg: dict, splits: Splits, features: Features, output_dir: Path) -> tuple[optuna.Study, dict]:
    """Run (or resume) the Optuna study over encoder x classifier x hyper-parameters x balance; return it and the best choice.

    ``search.space`` entries without a dot (``encoder``, ``classifier``, ``balance``) are sampled every
    trial; ``<classifier>.<param>`` entries only when that classifier is chosen (a conditional space).
    With several training files (and ``search.train_files`` true) ``train_files`` picks which of them
    to fit on (:func:`train_file_choices`); a pick with fewer than two classes is pruned.
    The configured choice is queued as the first trial of a new study.
    """
    s = cfg["search"]
    space = s["space"]
    top = {k: v for k, v in space.items() if "." not in k}
    files = train_file_choices(len(splits.train_sources)) if s.get("train_files", True) else []
    if files:
        top["train_files"] = {"type": "categorical", "choices": files}
    storage = make_storage(s["storage"], output_dir)
    study = open_study(s["study_name"], storage, seed=cfg["seed"], direction=direction(s["metric"]))
    if not study.get_trials(deepcopy=False):
        clf = cfg["classifier"]
        configured = {"encoder": cfg["encoder"]["name"], "classifier": clf, "balance": cfg["balance"],
                      **({"train_files": files[0]} if files else {}),
                      **{f"{clf}.{name}": value for name, value in cfg["classifiers"].get(clf, {}).items()}}
        for point in start_points({**space, **top}, [configured]):  # the configured choice, as far as it fits the space
            study.enqueue_trial(point, skip_if_exists=True)
    y_train = label_indices(splits, splits.train.labels)
    use_cache = s.get("memo", True) and cfg.get("encoder", {}).get("cache", True)
    memo = TrialMemo(EmbeddingCache().root) if use_cache else None

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        params = suggest(trial, top)
        clf_name = params.get("classifier", cfg["classifier"])
        params.update(suggest(trial, {k: v for k, v in space.items() if k.startswith(clf_name + ".")}))
        choice = choice_from(cfg, params)
        rows = train_rows(splits, choice["train_files"])
        if rows is not None and len({y_train[i] for i in rows}) < 2:
            raise optuna.TrialPruned(f"training files {choice['train_files']} hold fewer than 2 classes")
        proba, hit = trial_valid_proba(features, splits, y_train, choice, cfg["seed"] + trial.number, rows, memo)
        metrics = proba_metrics(proba, splits)
        trial.set_user_attr("valid_accuracy", metrics["accuracy"])
        if hit:
            trial.set_user_attr("memo_hit", True)
        return metric_value(metrics, s["metric"])

    run_search(study, objective, s["n_trials"], s["timeout"], s["n_jobs"], output_dir)
    hits = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("memo_hit"))
    if hits:
        log.info("%d trial(s) came from the search-trial memo (search.memo) instead of a fit", hits)
    return study, choice_from(cfg, best_trial(study).params)


def train(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False) -> Path:
    """Encode, (search,) refit the best classifier on train, save the model directory; return it.

    With ``search.refit`` false only the search runs (SLURM workers). The study always resumes and
    the embeddings come from the cache, so ``resume`` changes nothing.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    s = cfg["search"]
    features = Features(cfg, splits)
    extra: dict = {}
    choice = choice_from(cfg, {})
    if wants_search(s):
        study, choice = search(cfg, splits, features, output_dir)
        finish_search(study, output_dir)
        if not s["refit"]:
            return output_dir
        extra["search"] = search_summary(study, s["storage"], output_dir, s["metric"])
    fit_and_save(cfg, splits, features, choice, output_dir, **extra)
    return output_dir


def fit_and_save(cfg: dict, splits: Splits, features: Features, choice: dict, output_dir: str | Path, echo: bool = True,
                 **extra) -> tuple[dict, EmbeddingsPredictor, float]:
    """Refit ``choice`` (see :func:`choice_from`) on train, save the model directory and evaluate it.

    Writes ``classifier.joblib`` (+ ``tfidf_svd.joblib``), ``metrics.txt`` and ``meta.json`` (``extra``
    goes into meta.json) into ``output_dir``; returns ``(meta, predictor, fit seconds)``. The predictor
    remembers the valid/test vectors, so evaluating it re-encodes nothing. ``textclf sweep`` calls this
    once per encoder x classifier combination.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    x = features.get(choice["encoder"])
    y_train = label_indices(splits, splits.train.labels)
    start = time.monotonic()
    clf = fit_classifier(x["train"], y_train, splits, choice["classifier"], choice["params"], choice["balance"], cfg["seed"],
                         train_rows(splits, choice.get("train_files")))
    fit_seconds = time.monotonic() - start
    log.info("fitted %s on %s features in %.1fs", choice["classifier"], choice["encoder"], fit_seconds)
    save_classifier(clf, output_dir)
    encoder = features.encoders[choice["encoder"]]
    if choice["encoder"] == TFIDF_SVD:
        encoder.save(output_dir)
    record = encoder.describe()
    predictor = EmbeddingsPredictor(output_dir, {"labels": splits.labels, "kind": KIND, "encoder": record}, encoder, clf)
    predictor.remember(splits.valid.texts, x["valid"])
    if splits.test is not None:
        predictor.remember(splits.test.texts, x["test"])
    meta = finish_run(output_dir, predictor, splits, cfg, PACKAGES, echo=echo, model_file=CLASSIFIER_FILE, encoder=record,
                      classifier=choice["classifier"], params=choice["params"], balance=choice["balance"],
                      cache_keys=features.cache_keys.get(choice["encoder"], {}),
                      **{FILES_KEY: files_block(output_dir, [CLASSIFIER_FILE, TFIDF_FILE])},
                      train_files=[splits.train_sources[int(i)].path for i in choice["train_files"].split("+")]
                      if choice.get("train_files") else None, **extra)
    return meta, predictor, fit_seconds

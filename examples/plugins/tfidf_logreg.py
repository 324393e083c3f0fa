"""A textclf model family in one file: TF-IDF word n-grams + logistic regression (scikit-learn).

This is an example plug-in: it is not part of the textclf package, it registers a family called
``tfidf_logreg`` when textclf imports it with ``--code``. Needs scikit-learn
(``pip install 'textclf[sklearn]'``).

Run it on the embedded dataset::

    # list the families (this one shows up with "plug-in: .../tfidf_logreg.py")
    textclf families --code examples/plugins/tfidf_logreg.py

    # train with the defaults below (seconds on a CPU)
    textclf train --code examples/plugins/tfidf_logreg.py tfidf_logreg \\
        --train_path data/tweets_sentiment/train.csv --valid_path data/tweets_sentiment/valid.csv \\
        --test_path data/tweets_sentiment/test.csv --output_dir models/tfidf_logreg

    # Optuna search on valid macro-F1 (10 trials), then refit the best params on train
    textclf train --code examples/plugins/tfidf_logreg.py tfidf_logreg --n_trials 10 ...same paths...
    textclf tune --code examples/plugins/tfidf_logreg.py tfidf_logreg --n_trials 10 ...same paths...

    # any config key: --set model.C=30 --set model.class_weight=null --set search.metric=accuracy

    # the model directory carries a copy of this file (plugin/tfidf_logreg.py, named in meta.json),
    # so predict/evaluate need no --code (they print a one-line warning that it runs that code)
    textclf predict --model_path models/tfidf_logreg --input_path texts.txt --output_path labels.txt
    textclf evaluate --model_path models/tfidf_logreg --data_path data/tweets_sentiment/test.csv

What a family provides (see :mod:`textclf.core.registry`): a ``train(cfg, splits, output_dir, resume)``
function that writes the model directory and ends with :func:`textclf.core.training.finish_run`
(metrics.txt and meta.json), a :class:`textclf.core.predictor.Predictor` subclass whose ``kind`` is the
family's name, and the default config (here the ``CONFIG`` dict; every key a user may set must
exist in it). The search uses textclf's Optuna helpers (:mod:`textclf.core.tuning`), so it resumes,
shares a ``--storage`` between workers and writes ``trials.csv`` like the built-in families.

The saved pipeline holds only scikit-learn objects (no function from this file), so the
``model.joblib`` loads wherever the same scikit-learn version is installed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.atomic import atomic_replace_file
from textclf.core.errors import ConfigError, ModelError
from textclf.core.predictor import Predictor
from textclf.core.registry import Family, Option, register_family

log = logging.getLogger(__name__)

NAME = "tfidf_logreg"
MODEL_FILE = "model.joblib"
#: distributions whose versions meta.json records
PACKAGES = ("scikit-learn", "joblib")

#: The default config; ``--config FILE`` and ``--set key=value`` are checked against it.
CONFIG: dict = {
    "seed": 13,
    "data": {
        "format": None,  # csv/tsv/jsonl/fasttext; None: from the file extension
        "text_column": "text",
        "label_column": "label",
        "reader": None,  # a registered reader's name (data.reader), e.g. one from another --code file
    },
    "model": {
        "C": 10.0,  # inverse L2 regularisation strength of the logistic regression
        "ngram_max": 2,  # word n-grams from 1 to ngram_max
        "min_df": 1,  # drop n-grams found in fewer training documents
        "max_features": None,  # keep only the most frequent n-grams (None: all)
        "class_weight": "balanced",  # None or "balanced" (weights inversely proportional to class frequency)
        "max_iter": 1000,
    },
    "search": {
        "n_trials": 0,  # 0 and timeout None: no search, train with the model block
        "timeout": None,
        "n_jobs": 1,
        "storage": None,  # None: a journal file OUTPUT_DIR/study.journal
        "study_name": NAME,
        "metric": "macro_f1",  # any metric of textclf.core.metrics.classification_metrics, on valid
        "refit": True,  # False: search only (workers sharing a storage), no model written
    },
}

#: The Optuna search space (the ``suggest`` format of :func:`textclf.core.tuning.suggest`); becomes ``search.space``.
SEARCH_SPACE: dict = {
    "C": {"type": "float", "low": 0.1, "high": 1000.0, "log": True},
    "ngram_max": {"type": "int", "low": 1, "high": 2},
    "min_df": {"type": "int", "low": 1, "high": 3},
    # Optuna accepts None among categorical choices; it comes back as None (JSON null in meta.json)
    "class_weight": {"type": "categorical", "choices": [None, "balanced"]},
}


# --------------------------------------------------------------------------- model
def build_pipeline(params: dict, seed: int):
    """The scikit-learn pipeline for one set of ``model`` params (imported here: listing families stays light)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    class_weight = params.get("class_weight")
    if class_weight not in (None, "balanced"):
        raise ConfigError(f"model.class_weight: expected null or \"balanced\", got {class_weight!r}")
    vectorizer = TfidfVectorizer(
        ngram_range=(1, int(params["ngram_max"])),
        sublinear_tf=True,
        min_df=params["min_df"],
        max_features=params.get("max_features"),
        strip_accents="unicode",
    )
    classifier = LogisticRegression(C=float(params["C"]), class_weight=class_weight,
                                    max_iter=int(params.get("max_iter", 1000)), random_state=seed)
    return Pipeline([("tfidf", vectorizer), ("logreg", classifier)])


def fit(params: dict, texts: Sequence[str], labels: Sequence[str], seed: int):
    """Fit a fresh pipeline on ``texts``/``labels``."""
    pipeline = build_pipeline(params, seed)
    pipeline.fit(list(texts), list(labels))
    return pipeline


class TfidfLogRegPredictor(Predictor):
    """A fitted TF-IDF + logistic regression pipeline behind textclf's Predictor interface."""

    kind = NAME

    def __init__(self, model_dir: str | Path, meta: dict, pipeline):
        super().__init__(model_dir, meta)
        self.pipeline = pipeline
        classes = [str(c) for c in pipeline.classes_]
        # column of self.labels[i] in the pipeline's output (-1: a label the pipeline never saw)
        self._columns = [classes.index(label) if label in classes else -1 for label in self.labels]

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> TfidfLogRegPredictor:
        """Load ``model.joblib`` (or ``model_file``) from a model directory."""
        import joblib

        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ModelError(f"{path}: tfidf_logreg model file not found")
        return cls(model_dir, meta, joblib.load(path))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``self.labels`` order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if len(texts) == 0:
            return out
        proba = self.pipeline.predict_proba(list(texts))
        for i, column in enumerate(self._columns):
            if column >= 0:
                out[:, i] = proba[:, column]
        return out


# --------------------------------------------------------------------------- search
def valid_score(pipeline, splits, metric: str) -> tuple[float, dict]:
    """``metric`` (and all metrics) of ``pipeline`` on the validation split."""
    from textclf.core.metrics import classification_metrics, metric_value

    predictions = [str(p) for p in pipeline.predict(splits.valid.texts)]
    metrics = classification_metrics(splits.valid.labels, predictions, splits.labels)
    return metric_value(metrics, metric), metrics


def check_metric(metric: str, labels: list[str]) -> None:
    """A one-line error for a metric name textclf does not compute (before any trial runs)."""
    from textclf.core.metrics import classification_metrics, metric_value

    try:
        metric_value(classification_metrics(labels, labels, labels), metric)
    except KeyError as exc:
        raise ConfigError(f"search.metric: {exc.args[0]}") from None


def search(cfg: dict, splits, output_dir: Path):
    """Run (or resume) the Optuna study on valid; return it and the best params merged over ``cfg["model"]``.

    Every trial fits on train and scores on valid. The study lives in ``search.storage``
    (default ``OUTPUT_DIR/study.journal``), so a rerun or another worker continues it.
    """
    import optuna

    from textclf.core.metrics import direction
    from textclf.core.tuning import best_trial, make_storage, open_study, record_worker, run_search, suggest

    s = cfg["search"]
    check_metric(s["metric"], splits.labels)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(s["storage"], output_dir)
    study = open_study(s["study_name"], storage, seed=cfg["seed"], direction=direction(s["metric"]))

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        params = {**cfg["model"], **suggest(trial, s["space"])}
        score, metrics = valid_score(fit(params, splits.train.texts, splits.train.labels, cfg["seed"]), splits, s["metric"])
        trial.set_user_attr("valid_accuracy", metrics["accuracy"])
        return score

    run_search(study, objective, s["n_trials"] or None, s["timeout"], s.get("n_jobs", 1), output_dir)
    return study, {**cfg["model"], **best_trial(study).params}


# --------------------------------------------------------------------------- train
def train(cfg: dict, splits, output_dir: str | Path, resume: bool = False) -> Path:
    """Search (when ``search.n_trials``/``search.timeout`` is set), fit on train, save, evaluate; returns the model dir.

    ``resume`` changes nothing: fitting takes seconds and a study always resumes from its storage.
    With ``search.refit`` false only the search runs (trials.csv and plots, no model, no meta.json).
    """
    import joblib

    from textclf.core.training import finish_run
    from textclf.core.tuning import finish_search, search_summary

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    s = cfg["search"]
    params = copy.deepcopy(cfg["model"])
    extra: dict = {}
    if s["n_trials"] or s["timeout"]:
        study, params = search(cfg, splits, output_dir)
        finish_search(study, output_dir)
        if not s["refit"]:
            return output_dir
        extra["search"] = search_summary(study, s["storage"], output_dir, s["metric"])
        log.info("best params on valid: %s", params)
    pipeline = fit(params, splits.train.texts, splits.train.labels, cfg["seed"])
    atomic_replace_file(lambda tmp: joblib.dump(pipeline, tmp), output_dir / MODEL_FILE)
    predictor = TfidfLogRegPredictor(output_dir, {"labels": splits.labels, "kind": NAME}, pipeline)
    finish_run(output_dir, predictor, splits, cfg, PACKAGES, model_file=MODEL_FILE, params=params,
               vocabulary_size=len(pipeline.named_steps["tfidf"].vocabulary_), **extra)
    return output_dir


FAMILY = register_family(Family(
    name=NAME,
    description="TF-IDF word 1-2 grams + logistic regression (scikit-learn), Optuna-tunable; an example plug-in",
    kind="linear",
    train=train,
    predictor=TfidfLogRegPredictor,
    config=CONFIG,
    search_space=SEARCH_SPACE,
    requires=("sklearn",),
    extra="sklearn",
    options=(
        Option("--metric", "search.metric", str, "Validation metric the search maximises: macro_f1 (default), accuracy, ..."),
        Option("--n_jobs", "search.n_jobs", int, "Parallel trials in this process."),
    ),
))

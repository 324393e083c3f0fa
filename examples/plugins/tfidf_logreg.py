"""A textclf model family in one file: TF-IDF word n-grams + logistic regression (scikit-learn).

An example plug-in (family contract v2): it gives only the model — ``fit`` and its config — and
textclf's core does the Optuna search on valid, the refit, the evaluation and meta.json::

    textclf train --code examples/plugins/tfidf_logreg.py tfidf_logreg \\
        --train_path data/tweets_sentiment/train.csv --valid_path data/tweets_sentiment/valid.csv \\
        --test_path data/tweets_sentiment/test.csv --output_dir models/tfidf_logreg [--n_trials 10]
    textclf predict --trust-code --model_path models/tfidf_logreg --input_path texts.txt --output_path labels.txt

Any key below can be set with ``--set model.C=30``; ``search.*`` (n_trials, timeout, storage,
metric, refit, ...) are the core's. The model directory carries a copy of this file, so
``predict`` needs no ``--code``, but runs that copy only with ``--trust-code`` (the pipeline itself is
saved with skops: no pickle). On label sets (multi-label data) the logistic regression is one-vs-rest.
"""

from __future__ import annotations

from textclf.core.errors import ConfigError
from textclf.core.registry import Family, Option, register_family
from textclf.core.sklearn_model import MODEL_FILE, SklearnPredictor, one_vs_rest, targets

NAME = "tfidf_logreg"

#: The default config; ``--config FILE`` and ``--set key=value`` are checked against it.
CONFIG: dict = {
    "model": {
        "C": 10.0,  # inverse L2 regularisation strength of the logistic regression
        "ngram_max": 2,  # word n-grams from 1 to ngram_max
        "char_ngram_max": 0,  # 0: words only; else also character n-grams (within words) of char_ngram_min..char_ngram_max
        "char_ngram_min": 2,
        "min_df": 1,  # drop n-grams found in fewer training documents
        "max_features": None,  # keep only the most frequent n-grams (None: all)
        "class_weight": "balanced",  # None or "balanced"
        "max_iter": 1000,
    },
}

#: The Optuna search space (the JSON form of :func:`textclf.core.tuning.suggest`), keys under ``model``.
SEARCH_SPACE: dict = {
    "C": {"type": "float", "low": 0.1, "high": 1000.0, "log": True},
    "ngram_max": {"type": "int", "low": 1, "high": 2},
    "min_df": {"type": "int", "low": 1, "high": 3},
    "class_weight": {"type": "categorical", "choices": [None, "balanced"]},
}


class TfidfLogRegPredictor(SklearnPredictor):
    """The fitted TF-IDF + logistic regression pipeline."""

    kind = NAME


def fit(cfg: dict, splits, context) -> TfidfLogRegPredictor:
    """Fit TF-IDF + logistic regression on train; save it into ``context.output_dir``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    m = cfg["model"]
    if m["class_weight"] not in (None, "balanced"):
        raise ConfigError(f"model.class_weight: expected null or \"balanced\", got {m['class_weight']!r}")
    tfidf = TfidfVectorizer(ngram_range=(1, int(m["ngram_max"])), sublinear_tf=True, min_df=m["min_df"],
                            max_features=m["max_features"], strip_accents="unicode")
    if int(m["char_ngram_max"]) > 0:  # word and character n-grams side by side (scikit-learn's FeatureUnion)
        if not 1 <= int(m["char_ngram_min"]) <= int(m["char_ngram_max"]):
            raise ConfigError(f"model.char_ngram_min: expected 1..char_ngram_max ({m['char_ngram_max']}), got {m['char_ngram_min']!r}")
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(int(m["char_ngram_min"]), int(m["char_ngram_max"])),
                                sublinear_tf=True, min_df=m["min_df"], max_features=m["max_features"], strip_accents="unicode")
        tfidf = FeatureUnion([("words", tfidf), ("chars", chars)])
    pipeline = Pipeline([
        ("tfidf", tfidf),
        ("logreg", one_vs_rest(LogisticRegression(C=float(m["C"]), class_weight=m["class_weight"],
                                                  max_iter=int(m["max_iter"]), random_state=context.seed), splits.multilabel)),
    ]).fit(splits.train.texts, targets(splits.train, splits.labels))
    predictor = TfidfLogRegPredictor.from_pipeline(pipeline, context.output_dir, splits.labels, splits.task, cfg)
    features = pipeline.named_steps["tfidf"]
    parts = [t for _, t in features.transformer_list] if hasattr(features, "transformer_list") else [features]
    predictor.fit_info = {"model_file": MODEL_FILE, "vocabulary_size": sum(len(t.vocabulary_) for t in parts)}
    return predictor


FAMILY = register_family(Family(
    name=NAME,
    description="TF-IDF word 1-2 grams (+ char n-grams if asked) + logistic regression (scikit-learn), Optuna-tunable; an example plug-in",
    kind="linear",
    fit=fit,
    predictor=TfidfLogRegPredictor,
    config=CONFIG,
    search_space=SEARCH_SPACE,
    packages=("scikit-learn", "skops"),
    requires=("sklearn",),
    extra="sklearn",
    multilabel=True,
    explainer="textclf.core.linear_attribution:explain_pipeline",  # exact coefficient x TF-IDF value per word
    options=(
        Option("--metric", "search.metric", str, "Validation metric the search maximises: macro_f1 (default), accuracy, ..."),
        Option("--n_jobs", "search.n_jobs", int, "Parallel trials in this process."),
    ),
))

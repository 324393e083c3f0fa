"""A family in one file: a linear SVM on character n-grams (scikit-learn), calibrated to probabilities.

    textclf train --code examples/plugins/svm_char.py svm_char --train_path ... --valid_path ... --output_dir DIR
    textclf tune --code examples/plugins/svm_char.py svm_char --n_trials 10 ...   # the core's Optuna search
"""

from __future__ import annotations

from textclf.core.registry import Family, register_family
from textclf.core.sklearn_model import SklearnPredictor, one_vs_rest, targets

CONFIG = {"model": {"C": 0.5, "ngram_min": 2, "ngram_max": 5, "min_df": 2, "calibration_folds": 3}}


class SvmCharPredictor(SklearnPredictor):
    """Character n-gram TF-IDF + a linear SVM with sigmoid-calibrated probabilities."""

    kind = "svm_char"


def space(cfg: dict, trial) -> dict:
    """One search point: the SVM's C and the longest character n-gram."""
    return {"model.C": trial.suggest_float("C", 0.01, 10.0, log=True), "model.ngram_max": trial.suggest_int("ngram_max", 3, 6)}


def fit(cfg: dict, splits, context) -> SvmCharPredictor:
    """Fit the pipeline on train and save it into ``context.output_dir``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    m = cfg["model"]
    pipeline = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(m["ngram_min"], m["ngram_max"]), min_df=m["min_df"], sublinear_tf=True),
        one_vs_rest(CalibratedClassifierCV(LinearSVC(C=m["C"], random_state=context.seed), cv=m["calibration_folds"]),
                    splits.multilabel),  # label sets: one calibrated SVM a label
    ).fit(splits.train.texts, targets(splits.train, splits.labels))
    return SvmCharPredictor.from_pipeline(pipeline, context.output_dir, splits.labels, splits.task, cfg)


FAMILY = register_family(Family(
    name="svm_char",
    description="linear SVM on character 2-5 grams (scikit-learn), calibrated; an example plug-in",
    kind="linear",
    fit=fit,
    space=space,
    predictor=SvmCharPredictor,
    config=CONFIG,
    packages=("scikit-learn", "skops"),
    requires=("sklearn",),
    extra="sklearn",
    multilabel=True,
))

"""textclf.TextClassifier: the scikit-learn estimator over the families, on the real tweets data.

fastText (few epochs, dim 10, one thread, no search) and the embeddings family with the TF-IDF+SVD
encoder (no download, no embedding cache) keep every fit to about a second. Floors are set a
little below what real runs gave (full train split, scored on test).
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate
from sklearn.pipeline import Pipeline

import textclf
from textclf.cli import cli
from textclf.core.data import read_labelled
from textclf.core.errors import ConfigError, DataError, TextclfError
from textclf.core.loading import load_predictor

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DATA  # noqa: E402

FT = {"search.n_trials": 0, "model.epoch": 10, "model.lr": 0.5, "model.dim": 10, "model.thread": 1, "model.bucket": 50000}
EMB = {"encoder.name": "tfidf_svd", "encoder.cache": False, "tfidf_svd.n_components": 100, "tfidf_svd.max_features": 20000}
#: macro-F1 on test after fitting on train: fastText 0.706-0.719 (seeds 13, 1, 2), embeddings (tfidf_svd + logreg) 0.678
FLOORS = {"fasttext": 0.68, "embeddings": 0.65}


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return pd.read_csv(DATA / "train.csv")


@pytest.fixture(scope="module")
def test() -> pd.DataFrame:
    return pd.read_csv(DATA / "test.csv")


@pytest.fixture(scope="module")
def small(train) -> pd.DataFrame:
    """1500 training rows, for the estimators fitted many times (cross-validation, grid search)."""
    return train.iloc[:1500]


@pytest.fixture(scope="module")
def fitted(train) -> textclf.TextClassifier:
    return textclf.TextClassifier("fasttext", params=FT).fit(train.text, train.label)


def macro_f1(y_true, y_pred) -> float:
    return f1_score(list(y_true), list(y_pred), average="macro")


# --------------------------------------------------------------------------- 1. fit / predict / proba / floor
@pytest.mark.parametrize("family,params", [("fasttext", FT), pytest.param("embeddings", EMB, marks=pytest.mark.slow)])
def test_fit_predict_proba_and_floor(family, params, train, test):
    est = textclf.TextClassifier(family, params=params).fit(train.text, train.label)
    assert est.classes_.tolist() == ["negative", "positive"]
    pred = est.predict(test.text)
    proba = est.predict_proba(test.text)
    assert pred.shape == (len(test),) and proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert (est.classes_[proba.argmax(axis=1)] == pred).all()
    assert macro_f1(test.label, pred) >= FLOORS[family]
    assert est.score(test.text, test.label) == pytest.approx(float((pred == test.label.to_numpy()).mean()))
    assert est.predictor_.kind == family
    meta = json.loads((est.model_dir_ / "meta.json").read_text())
    assert meta["estimator"]["init"]["family"] == family and meta["data"]["train"] == "(X, y)"
    assert est.predict([]).shape == (0,) and est.predict_proba([]).shape == (0, 2)


def test_explicit_validation_and_integer_labels(train, test):
    """X_valid/y_valid replace the held-out rows; integer labels come back as integers, in sorted columns."""
    y = (train.label == "positive").astype(int).to_numpy() * 7  # labels 0 and 7: str order "0" < "7" as well
    y_valid = (test.label == "positive").astype(int).to_numpy() * 7
    est = textclf.TextClassifier("fasttext", params=FT).fit(train.text.tolist(), y, X_valid=test.text, y_valid=y_valid)
    assert est.classes_.tolist() == [0, 7] and est.classes_.dtype.kind == "i"
    assert json.loads((est.model_dir_ / "meta.json").read_text())["data"]["valid"] == "(X_valid, y_valid)"
    pred = est.predict(test.text)
    assert set(pred.tolist()) <= {0, 7}
    assert est.score(test.text, y_valid) > 0.7


# --------------------------------------------------------------------------- 2. Pipeline in cross_val_score
def test_pipeline_cross_val_score(small):
    pipe = Pipeline([("clf", textclf.TextClassifier("fasttext", params=FT))])
    scores = cross_val_score(pipe, small.text, small.label, cv=3, scoring="f1_macro")
    assert len(scores) == 3 and min(scores) >= 0.64, scores  # 0.688-0.703 in a real run


def test_cross_validate_in_worker_processes(small):
    """n_jobs=2: estimators travel to loky workers and, fitted, back (their model directory as a tar)."""
    result = cross_validate(textclf.TextClassifier("fasttext", params=FT), small.text, small.label, cv=2, n_jobs=2,
                            scoring="f1_macro", return_estimator=True)
    assert min(result["test_score"]) >= 0.6, result["test_score"]  # 0.655, 0.678 in a real run
    for est in result["estimator"]:
        assert est.model_dir_.is_dir() and est.predict(["what a lovely day"]).tolist()[0] in ("negative", "positive")


# --------------------------------------------------------------------------- 3. GridSearchCV over two families
@pytest.mark.slow  # GridSearchCV over two families, 3 folds each
def test_grid_search_over_two_families(small, test):
    base = textclf.TextClassifier(params={**{f"fasttext.{k}": v for k, v in FT.items()},
                                          **{f"embeddings.{k}": v for k, v in EMB.items()}})
    grid = [{"family": ["fasttext"], "fasttext.model.lr": [0.05, 0.5]},
            {"family": ["embeddings"], "embeddings.classifiers.logreg.C": [0.1, 10.0]}]
    search = GridSearchCV(base, grid, cv=2, scoring="f1_macro").fit(small.text, small.label)
    candidates = search.cv_results_["params"]
    assert [c["family"] for c in candidates] == ["fasttext", "fasttext", "embeddings", "embeddings"]
    assert set(search.best_params_) in ({"family", "fasttext.model.lr"}, {"family", "embeddings.classifiers.logreg.C"})
    best = search.best_estimator_
    assert best.family == search.best_params_["family"]
    assert best.predictor_.kind == best.family
    assert macro_f1(test.label, best.predict(test.text)) >= 0.6
    cfg = best.effective_config()
    key = next(k for k in search.best_params_ if k != "family").split(".", 1)[1]
    section, *rest = key.split(".")
    value = cfg[section]
    for part in rest:
        value = value[part]
    assert value == search.best_params_[f"{best.family}.{key}"]
    # the other family's settings are not applied: the effective configs differ in their own keys only
    assert "encoder" not in textclf.TextClassifier("fasttext", params=base.params).effective_config()


def test_grid_in_a_pipeline_with_sklearn_spelling(small):
    pipe = Pipeline([("clf", textclf.TextClassifier("fasttext", params=FT))])
    search = GridSearchCV(pipe, {"clf__model__epoch": [2, 10]}, cv=2, scoring="f1_macro").fit(small.text, small.label)
    assert search.best_estimator_.named_steps["clf"].params["model.epoch"] == search.best_params_["clf__model__epoch"]


# --------------------------------------------------------------------------- 4. save / load / CLI
def test_save_then_load_gives_identical_predictions(fitted, test, tmp_path):
    out = fitted.save(tmp_path / "model")
    again = textclf.load(out)
    assert again.get_params() == fitted.get_params()
    assert (again.predict(test.text) == fitted.predict(test.text)).all()
    np.testing.assert_allclose(again.predict_proba(test.text), fitted.predict_proba(test.text))
    predictor = load_predictor(out)
    assert predictor.predict(test.text.tolist()) == fitted.predict(test.text).tolist()
    pred_file = tmp_path / "pred.txt"
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(out), "--input_path", str(DATA / "test.csv"),
                                      "--output_path", str(pred_file)])
    assert result.exit_code == 0, result.output
    assert pred_file.read_text().splitlines() == fitted.predict(test.text).tolist()


def test_save_refuses_to_clobber(fitted, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(TextclfError) as exc:
        fitted.save(target)
    assert str(exc.value) == f"{target}: exists and is not a textclf model directory (no meta.json); save to a new or empty directory"
    assert (target / "notes.txt").read_text() == "mine"
    model = fitted.save(tmp_path / "m")
    with pytest.raises(TextclfError) as exc:
        fitted.save(model)
    assert str(exc.value) == f"{model}: holds a model already; save to a new directory, or pass overwrite=True to replace it"
    (model / "stale.txt").write_text("old")
    fitted.save(model, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in fitted.model_dir_.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp sibling left


def test_load_reads_a_cli_trained_model(tmp_path, test):
    out = tmp_path / "cli_ft"
    args = ["train", "fasttext", "--train_path", str(DATA / "train.csv"), "--valid_path", str(DATA / "valid.csv"),
            "--output_dir", str(out), *[arg for k, v in FT.items() for arg in ("--set", f"{k}={v}")]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    est = textclf.load(out)
    assert est.family == "fasttext" and est.config["model"]["dim"] == 10
    assert est.predict(test.text).tolist() == load_predictor(out).predict(test.text.tolist())
    refit = clone(est).fit(test.text, test.label)  # refits with the model's effective config
    assert refit.effective_config()["model"] == est.config["model"]


def test_pickle_carries_the_model_directory(fitted, test):
    blob = pickle.dumps(fitted)
    assert str(fitted.model_dir_).encode() not in blob
    again = pickle.loads(blob)
    assert again.model_dir_ != fitted.model_dir_ and again.model_dir_.is_dir()
    assert (again.predict(test.text) == fitted.predict(test.text)).all()
    deep = copy.deepcopy(fitted)
    np.testing.assert_allclose(deep.predict_proba(test.text), fitted.predict_proba(test.text))


@pytest.mark.slow  # trains an embeddings model and round-trips it through joblib
def test_joblib_round_trip_and_temp_dir_removed(small, train, test, tmp_path):
    est = textclf.TextClassifier("embeddings", params=EMB).fit(small.text, small.label)
    joblib.dump(est, tmp_path / "est.joblib")
    again = joblib.load(tmp_path / "est.joblib")
    np.testing.assert_allclose(again.predict_proba(test.text), est.predict_proba(test.text))
    root = again.model_dir_.parent
    del again
    assert not root.exists()
    first = est.model_dir_.parent
    est.fit(train.text[:500], train.label[:500])  # a refit replaces (and removes) the old directory
    assert not first.exists() and est.model_dir_.is_dir()


# --------------------------------------------------------------------------- 5. bad input, same words as a file
CASES = [
    ("empty text", [("good", "a"), ("  ", "b"), ("bad", "b")], 1, "empty text"),
    ("empty label", [("good", "a"), ("fine", None), ("bad", "b")], 1, "empty label"),
    ("NaN text", [("good", "a"), ("fine", "b"), (float("nan"), "b")], 2, "text must be a string, found number"),
    ("float label", [("good", "a"), ("fine", 1.5), ("bad", "b")], 1, "label must be a string or integer, found float"),
    ("bool label", [("good", True), ("fine", "a"), ("bad", "b")], 0, "label must be a string or integer, found bool"),
    ("one class", [("good", "a"), ("fine", "a")], None, "found 1 class(es) (a); need at least 2"),
]


@pytest.mark.parametrize("name,rows,row,problem", CASES, ids=[c[0] for c in CASES])
def test_bad_rows_read_as_in_a_file(name, rows, row, problem, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    with pytest.raises(DataError) as from_file:
        read_labelled(path)
    line = None if row is None else row + 1
    assert str(from_file.value) == (f"{path}: {problem}" if line is None else f"{path}:{line}: {problem}")
    with pytest.raises(DataError) as in_memory:
        textclf.TextClassifier("fasttext", params=FT).fit([t for t, _ in rows], [label for _, label in rows])
    assert in_memory.value.problem == from_file.value.problem
    assert str(in_memory.value) == (f"(X, y): {problem}" if row is None else f"(X, y) row {row}: {problem}")


def test_other_in_memory_mistakes(train):
    est = textclf.TextClassifier("fasttext", params=FT)
    X, y = train.text[:50].tolist(), train.label[:50].tolist()
    cases = [
        (lambda: est.fit(X, y[:-1]), "(X, y): X holds 50 texts but y holds 49 labels"),
        (lambda: est.fit("one text", y), "(X, y): X must be a sequence with one entry per row (a list, a 1-D array or a "
                                         "Series), got str"),
        (lambda: est.fit(np.array([X, X]), y), "(X, y): X must hold one entry per row (1-D), got shape (2, 50)"),
        (lambda: est.fit(X, y, X_valid=X[:5]), "(X_valid, y_valid): got X_valid alone; pass both or neither"),
        (lambda: est.fit(X, y, X_valid=["so so"], y_valid=["meh"]),
         "(X_valid, y_valid) row 0: label 'meh' does not occur in the training data (X, y) (train labels: negative, "
         "positive)"),
    ]
    for call, message in cases:
        with pytest.raises(DataError) as exc:
            call()
        assert str(exc.value) == message
    with pytest.raises(ConfigError) as exc:
        textclf.TextClassifier("fasttext", params={"model.epcoh": 3}).fit(X, y)
    assert str(exc.value).startswith("params 'model.epcoh': unknown key 'model.epcoh'; valid keys: model.lr, model.epoch")
    with pytest.raises(ConfigError) as exc:
        textclf.TextClassifier("no_such_family").fit(X, y)
    assert str(exc.value).startswith("unknown model family 'no_such_family'; known: ")
    with pytest.raises(ConfigError) as exc:
        textclf.TextClassifier(valid_size=1.5).fit(X, y)
    assert str(exc.value) == "valid_size 1.5: expected a fraction between 0 and 1 (or pass X_valid and y_valid)"


def test_predict_checks_texts(fitted):
    assert fitted.predict(["", "fine"]).shape == (2,)  # an empty text is predicted, as an empty input line is
    with pytest.raises(DataError) as exc:
        fitted.predict(["fine", None])
    assert str(exc.value) == "X row 1: text must be a string, found null"
    with pytest.raises(NotFittedError):
        textclf.TextClassifier().predict(["fine"])


# --------------------------------------------------------------------------- 6. clone, get_params, set_params
def test_clone_and_params_round_trip(fitted):
    est = textclf.TextClassifier("fasttext", params={"model.epoch": 3}, valid_size=0.2, random_state=4)
    params = est.get_params()
    assert params == {"family": "fasttext", "params": {"model.epoch": 3}, "config": None, "valid_size": 0.2,
                      "random_state": 4, "code": None, "verbose": False}
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert est.set_params(**{"model.lr": 0.2}) is est
    est.set_params(model__dim=10, family="embeddings", **{"fasttext.model.minCount": 2})
    assert est.params == {"model.epoch": 3, "model.lr": 0.2, "model.dim": 10, "fasttext.model.minCount": 2}
    assert twin.params == {"model.epoch": 3}  # set_params made a new dict: the clone's is untouched
    est.set_params(params={"seed": 5}, valid_size=0.3)
    assert est.get_params()["params"] == {"seed": 5} and est.valid_size == 0.3
    assert set(est.get_params()) == set(params)
    unfitted = clone(fitted)
    assert unfitted.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        unfitted.predict(["fine"])
    cfg = textclf.TextClassifier("fasttext", params={"model.epoch": np.int64(4), "fasttext.model.dim": 12,
                                                    "embeddings.encoder.name": "tfidf_svd"}).effective_config()
    assert (cfg["model"]["epoch"], cfg["model"]["dim"]) == (4, 12) and "encoder" not in cfg

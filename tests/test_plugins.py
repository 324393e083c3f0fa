"""Plug-in families and readers from ``--code`` files, run for real through the ``textclf`` command.

Every command runs in a subprocess: a plug-in registers into the process-wide registry, and this
pytest process must keep listing only the shipped families (see test_registry.py).
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from textclf.core.errors import ConfigError
from textclf.core.predictor import Predictor
from textclf.core.registry import Family

# these tests load plug-in models, whose code lives in the model directory: they consent (conftest)
pytestmark = pytest.mark.usefixtures("trust_model_code")

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "examples" / "plugins"
TFIDF = PLUGINS / "tfidf_logreg.py"
SQLITE = PLUGINS / "sqlite_reader.py"
TEXTCLF = [sys.executable, "-c", "from textclf.cli import main; main()"]

# Real run on data/tweets_sentiment with the plug-in's defaults (C=10, balanced, 1-2 grams): test macro-F1 0.7527
# (valid 0.8074; majority class 0.41). The fit is deterministic (lbfgs); the margin covers scikit-learn updates.
MACRO_F1_FLOOR = 0.72

TINY_DATA = '{"seed": 1, "data": {"format": None, "text_column": "text", "label_column": "label", "reader": None}}'

MISSING_DEP = f'''
import numpy as np
from textclf.core.predictor import Predictor
from textclf.core.registry import Family, register_family


class NeverPredictor(Predictor):
    kind = "needs_missing"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        raise AssertionError("never loaded")

    def predict_proba(self, texts):
        return np.zeros((len(texts), len(self.labels)))


def train(cfg, splits, output_dir, resume=False):
    raise AssertionError("train must not run when a dependency is missing")


register_family(Family(name="needs_missing", train=train, predictor=NeverPredictor, config={TINY_DATA},
                       requires=("textclf_no_such_module",), extra=None, description="needs a module nobody has"))
'''

BROKEN = '''
from textclf.core.registry import Family, register_family

register_family(Family(name="broken", train=lambda cfg, splits, output_dir, resume=False: output_dir, predictor=object))
'''

JSON_ARRAY_READER = '''
"""A reader for files holding one JSON array of {"text": ..., "label": ...} objects."""
import json

from textclf.core.registry import register_reader


@register_reader("json_array")
def read_json_array(path, text_column, label_column):
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)
    for number, row in enumerate(rows, start=1):
        yield number, row[text_column], row[label_column]
'''


def textclf(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ``textclf`` command in a fresh process."""
    return subprocess.run([*TEXTCLF, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def paths(tweets, test: bool = True) -> list:
    out = ["--train_path", tweets["train"], "--valid_path", tweets["valid"]]
    return out + (["--test_path", tweets["test"]] if test else [])


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a refused command prints (exit code 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def families_json() -> dict[str, dict]:
    proc = textclf("families", "--code", TFIDF, "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


@pytest.fixture(scope="module")
def tfidf_model(tweets, tmp_path_factory) -> Path:
    """The plug-in family trained with its defaults through the command line."""
    out = tmp_path_factory.mktemp("tfidf") / "model"
    proc = textclf("train", "--code", TFIDF, "tfidf_logreg", *paths(tweets), "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    assert "macro avg" in proc.stdout and f"model directory: {out}" in proc.stdout
    return out


# --------------------------------------------------------------------------- registry
def test_families_lists_the_shipped_families_and_the_plugin(families_json):
    assert {"bert", "fasttext", "lstm", "tfidf_logreg"} <= set(families_json)
    plugin = families_json["tfidf_logreg"]
    assert plugin["installed"] is True and plugin["missing"] == [] and plugin["install"] is None
    assert plugin["plugin"] == str(TFIDF.resolve())
    assert plugin["config"] == "(in the plug-in)"
    assert plugin["searchable"] is True and plugin["kind"] == "linear"
    assert families_json["fasttext"]["installed"] is True
    for name in ("bert", "fasttext", "lstm"):
        assert families_json[name]["plugin"] is None


# --------------------------------------------------------------------------- the example family
def test_the_plugin_trains_end_to_end_and_records_its_code(tfidf_model):
    meta = json.loads((tfidf_model / "meta.json").read_text())
    assert meta["kind"] == "tfidf_logreg"
    assert meta["labels"] == ["negative", "positive"]
    code = tfidf_model / meta["plugin_code"]
    assert meta["plugin_code"] == "plugin/tfidf_logreg.py"
    assert code.is_file() and code.read_bytes() == TFIDF.read_bytes()
    assert (tfidf_model / meta["model_file"]).is_file()
    assert meta["params"] == meta["config"]["model"]
    assert "search" not in meta  # n_trials 0 by default: no search
    assert meta["versions"]["scikit-learn"]
    assert meta["metrics"]["test"]["macro_f1"] > MACRO_F1_FLOOR
    assert meta["metrics"]["valid"]["macro_f1"] > MACRO_F1_FLOOR


@pytest.mark.slow  # copies a model and predicts in a subprocess (quick: test_the_plugin_trains_end_to_end_and_records_its_code)
def test_a_copied_model_dir_predicts_without_the_original_file(tfidf_model, tweets, tmp_path):
    test_rows = read_rows(tweets["test"])
    texts = [" ".join(row["text"].split()) for row in test_rows] + ["", "ünïcödé déjà vu"]
    inp = tmp_path / "input.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    before = textclf("predict", "--model_path", tfidf_model, "--input_path", inp, "--output_path", tmp_path / "before.txt")
    assert before.returncode == 0, before.stderr

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(tfidf_model, copy)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    after = textclf("predict", "--model_path", copy, "--input_path", inp, "--output_path", tmp_path / "after.txt", cwd=cwd)
    assert after.returncode == 0, after.stderr
    warnings = [line for line in after.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: model {copy} runs plug-in code from its directory: {copy.resolve() / 'plugin' / 'tfidf_logreg.py'}"]

    predicted = (tmp_path / "after.txt").read_text().splitlines()
    assert len(predicted) == len(texts)
    assert predicted == (tmp_path / "before.txt").read_text().splitlines()
    assert set(predicted) <= {"negative", "positive"}
    # the same model as in training: its accuracy on test is the one meta.json recorded
    meta = json.loads((tfidf_model / "meta.json").read_text())
    correct = sum(p == row["label"] for p, row in zip(predicted, test_rows, strict=False))
    assert correct / len(test_rows) == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-12)


@pytest.mark.slow  # evaluate subprocess (quick: test_the_plugin_trains_end_to_end_and_records_its_code)
def test_evaluate_scores_the_plugin_model_like_training_did(tfidf_model, tweets):
    proc = textclf("evaluate", "--model_path", tfidf_model, "--data_path", tweets["test"], "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tfidf_model / "meta.json").read_text())
    assert json.loads(proc.stdout)["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"], abs=1e-12)


@pytest.mark.slow  # an Optuna search in a subprocess (quick: test_tune_without_a_budget_is_refused)
def test_tune_runs_an_optuna_search_and_refits_the_best(tweets, tmp_path):
    out = tmp_path / "tuned"
    proc = textclf("tune", "--code", TFIDF, "tfidf_logreg", *paths(tweets, test=False), "--output_dir", out, "--n_trials", "3")
    assert proc.returncode == 0, proc.stderr
    trials = read_rows(out / "trials.csv")
    assert len(trials) == 3 and {t["state"] for t in trials} == {"COMPLETE"}
    assert {"params_C", "params_ngram_max", "params_min_df", "params_class_weight"} <= set(trials[0])
    meta = json.loads((out / "meta.json").read_text())
    search = meta["search"]
    assert search["n_trials"] == 3 and search["metric"] == "macro_f1" and search["study_name"] == "tfidf_logreg"
    assert set(search["best_params"]) == {"C", "ngram_max", "min_df", "class_weight"}
    assert search["best_value"] == max(float(t["value"]) for t in trials)
    assert meta["params"] == {**meta["config"]["model"], **search["best_params"]}
    assert search["best_params"]["class_weight"] in (None, "balanced")
    assert (out / "study.journal").is_file() and (out / meta["model_file"]).is_file()


def test_tune_without_a_budget_is_refused(tweets, tmp_path):
    proc = textclf("tune", "--code", TFIDF, "tfidf_logreg", *paths(tweets, test=False), "--output_dir", tmp_path / "m")
    assert proc.returncode == 2
    assert "set --n_trials N or --timeout S" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- refusals
def test_an_unknown_family_is_one_line(families_json, tweets, tmp_path):
    shipped = ", ".join(name for name, row in families_json.items() if row["plugin"] is None)
    line = one_error_line(textclf("train", "no_such_family", *paths(tweets), "--output_dir", tmp_path / "m"))
    assert line == f"Error: unknown model family 'no_such_family'; known: {shipped} (a family from your own file needs --code FILE)"
    assert not (tmp_path / "m").exists()


def test_a_family_with_a_missing_dependency_names_the_fix(tweets, tmp_path):
    plugin = tmp_path / "needs_missing.py"
    plugin.write_text(MISSING_DEP)
    line = one_error_line(textclf("train", "--code", plugin, "needs_missing", *paths(tweets), "--output_dir", tmp_path / "m"))
    assert line == ("Error: family 'needs_missing' needs textclf_no_such_module, which is not installed; "
                    "run: pip install textclf_no_such_module")
    listed = textclf("families", "--code", plugin)
    assert listed.returncode == 0, listed.stderr
    assert "missing textclf_no_such_module (pip install textclf_no_such_module)" in listed.stdout
    rows = {r["name"]: r for r in json.loads(textclf("families", "--code", plugin, "--json").stdout)}
    assert rows["needs_missing"]["installed"] is False and rows["needs_missing"]["missing"] == ["textclf_no_such_module"]


class _AnyPredictor(Predictor):
    kind = "x"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        raise NotImplementedError

    def predict_proba(self, texts):
        raise NotImplementedError


def test_a_family_that_breaks_the_contract_is_refused_at_registration(tweets, tmp_path):
    with pytest.raises(ConfigError, match=r"family .x. does not implement the contract: give fit\(cfg, splits, context\) -> Predictor"):
        Family(name="x", train=None, predictor=_AnyPredictor)
    with pytest.raises(ConfigError, match="family 'x' does not implement the contract: object is not a textclf.core.predictor.Predictor"):
        Family(name="x", train=lambda cfg, splits, output_dir, resume=False: output_dir, predictor=object)
    assert Family(name="x", train="some.module:train", predictor="some.module:P").name == "x"  # strings resolve lazily

    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    line = one_error_line(textclf("train", "--code", plugin, "broken", *paths(tweets), "--output_dir", tmp_path / "m"))
    assert line.startswith("Error: family 'broken' does not implement the contract: object is not a textclf.core.predictor.Predictor")


# --------------------------------------------------------------------------- readers
@pytest.fixture(scope="module")
def tweets_db(tweets, tmp_path_factory) -> Path:
    """The three splits as tables of a SQLite database (columns id, body, sentiment; the CSV files' rows in order)."""
    db = tmp_path_factory.mktemp("sqlite") / "tweets.sqlite"
    with sqlite3.connect(db) as con:
        for split in ("train", "valid", "test"):
            con.execute(f"CREATE TABLE {split} (id INTEGER PRIMARY KEY, body TEXT, sentiment TEXT)")
            con.executemany(f"INSERT INTO {split} (body, sentiment) VALUES (?, ?)",
                            [(r["text"], r["label"]) for r in read_rows(tweets[split])])
    con.close()
    return db


@pytest.mark.slow  # trains the plug-in on a sqlite table (quick: test_a_reader_from_a_tmp_file_feeds_fasttext)
def test_the_sqlite_reader_feeds_the_plugin_family(tweets_db, tfidf_model, tmp_path):
    out = tmp_path / "m"
    proc = textclf("train", "--code", SQLITE, "--code", TFIDF, "tfidf_logreg",
                   "--set", "data.reader=sqlite", "--set", "data.text_column=body", "--set", "data.label_column=sentiment",
                   "--train_path", f"{tweets_db}::train", "--valid_path", f"{tweets_db}::valid",
                   "--test_path", f"{tweets_db}::SELECT body, sentiment FROM test ORDER BY id", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["data"]["reader"] == "sqlite" and meta["data"]["train"] == f"{tweets_db}::train"
    # the same rows in the same order as the CSV files: the same model
    reference = json.loads((tfidf_model / "meta.json").read_text())
    assert meta["metrics"]["test"] == reference["metrics"]["test"]

    missing = one_error_line(textclf("train", "--code", SQLITE, "--code", TFIDF, "tfidf_logreg", "--set", "data.reader=sqlite",
                                     "--train_path", f"{tweets_db}::nope", "--valid_path", f"{tweets_db}::valid",
                                     "--output_dir", tmp_path / "m2"))
    assert missing == f"Error: {tweets_db}::nope: SQLite: no such table: nope"


def test_a_reader_from_a_tmp_file_feeds_fasttext(tweets, tmp_path):
    reader = tmp_path / "json_array_reader.py"
    reader.write_text(JSON_ARRAY_READER)
    files = {}
    for split in ("train", "valid"):
        files[split] = tmp_path / f"{split}.array"
        files[split].write_text(json.dumps(read_rows(tweets[split])))
    out = tmp_path / "ft"
    proc = textclf("train", "--code", reader, "fasttext", "--set", "data.reader=json_array", "--n_trials", "0",
                   "--set", "model.epoch=5", "--set", "model.bucket=100000", "--set", "model.dim=20",
                   "--train_path", files["train"], "--valid_path", files["valid"], "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "fasttext" and meta["config"]["data"]["reader"] == "json_array"
    assert "plugin_code" not in meta  # a reader-only file: the family is built in, nothing to carry
    assert meta["metrics"]["valid"]["accuracy"] > 0.69  # above the majority class (290/420)


def test_an_unknown_reader_is_one_line_listing_the_known_ones(tweets, tmp_path):
    line = one_error_line(textclf("train", "--code", SQLITE, "--code", TFIDF, "tfidf_logreg", "--set", "data.reader=nope",
                                  *paths(tweets), "--output_dir", tmp_path / "m"))
    assert line.startswith("Error: data.reader: unknown reader 'nope'; known: ")
    known = line.split("known: ", 1)[1].split(" (", 1)[0].split(", ")
    assert {"csv", "tsv", "jsonl", "fasttext", "sqlite"} <= set(known)
    assert line.endswith("(a reader from your own file needs --code FILE)")


# --------------------------------------------------------------------------- a format plug-in in every command
#: the sqlite format's columns for the tweets database
SQL_COLUMNS = ["--text_column", "body", "--label_column", "sentiment"]
#: the one line an unknown format gives (``-c``: the name ``python -c ...`` gives the command, ``textclf`` when installed)
SQL_FORMAT_ERROR = ("Error: Invalid value for '--{flag}': unknown format {name!r} for {job}; known: {known} "
                    "(a format from your own file needs --code FILE) (see '-c {command} --help')")

JSON_ARRAY_FORMAT = '''
"""A format for files holding one JSON array of {"text": ..., "label": ...} objects, claiming the extension .array."""
import json

from textclf.core.registry import Format, register_format


def rows(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read(path, text_column, label_column):
    for number, row in enumerate(rows(path), start=1):
        yield number, row[text_column], row[label_column]


def texts(path, text_column):
    return (row[text_column] for row in rows(path))


register_format(Format(name="json_array", extensions=(".array",), read=read, texts=texts))
'''


@pytest.fixture(scope="module")
def sqlite_model(tweets_db, tmp_path_factory) -> Path:
    """The plug-in family trained on the database (data.format=sqlite) with C=1: a second model to compare and combine."""
    out = tmp_path_factory.mktemp("tfidf_sqlite") / "model"
    proc = textclf("train", "--code", SQLITE, "--code", TFIDF, "tfidf_logreg", "--set", "data.format=sqlite",
                   "--set", "data.text_column=body", "--set", "data.label_column=sentiment", "--set", "model.C=1",
                   "--train_path", f"{tweets_db}::train", "--valid_path", f"{tweets_db}::valid",
                   "--test_path", f"{tweets_db}::test", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow  # predict subprocesses in every output format (quick: test_the_sqlite_reader_feeds_the_plugin_family)
def test_predict_reads_a_sqlite_table_row_for_row(tweets_db, tfidf_model, tweets, tmp_path):
    for fmt in ("csv", "txt"):
        reference = tmp_path / f"reference.{fmt}"
        proc = textclf("predict", "--model_path", tfidf_model, "--input_path", tweets["test"], "--output_path", reference)
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / f"sqlite.{fmt}"
        source = f"{tweets_db}::SELECT body FROM test ORDER BY id" if fmt == "csv" else f"{tweets_db}::test"
        proc = textclf("predict", "--code", SQLITE, "--model_path", tfidf_model, "--input_format", "sqlite",
                       "--input_path", source, "--text_column", "body", "--output_path", out)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == f"wrote 420 predictions to {out}"
        assert out.read_text() == reference.read_text()  # row i of the table is line i of the CSV file
        assert len(out.read_text().splitlines()) == 420 + (fmt == "csv")

    gaps = tmp_path / "gaps.sqlite"
    with sqlite3.connect(gaps) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT)")
        con.executemany("INSERT INTO t (text) VALUES (?)", [("fine",), (None,), ("never read",)])
    con.close()
    out = tmp_path / "gaps.txt"
    proc = textclf("predict", "--code", SQLITE, "--model_path", tfidf_model, "--input_format", "sqlite",
                   "--input_path", f"{gaps}::t", "--output_path", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # after the plug-in model's notes, one error line
    assert proc.stderr.strip().splitlines()[-1] == f"Error: {gaps}::t:2: text must be a string, found NULL"
    assert not out.exists()

    base = ["predict", "--model_path", tfidf_model, "--input_path", f"{tweets_db}::test", "--output_path", out]
    line = one_error_line(textclf(*base, "--code", SQLITE, "--input_format", "sqlit"))
    assert line == SQL_FORMAT_ERROR.format(flag="input_format", name="sqlit", job="prediction input", command="predict",
                                           known="txt, csv, tsv, jsonl, fasttext, sqlite")
    line = one_error_line(textclf(*base, "--input_format", "sqlite"))  # without its --code file
    assert line == SQL_FORMAT_ERROR.format(flag="input_format", name="sqlite", job="prediction input", command="predict",
                                           known="txt, csv, tsv, jsonl, fasttext")
    line = one_error_line(textclf(*base, "--code", SQLITE, "--input_format", "sqlite", "--format", "sqlite"))
    assert line == SQL_FORMAT_ERROR.format(flag="format", name="sqlite", job="predictions", command="predict",
                                           known="txt, csv, jsonl")
    assert not out.exists()


@pytest.mark.slow  # evaluate subprocesses (quick: test_the_sqlite_reader_feeds_the_plugin_family)
def test_evaluate_reads_a_sqlite_table(tweets_db, tfidf_model, tweets):
    reference = textclf("evaluate", "--model_path", tfidf_model, "--data_path", tweets["test"], "--json")
    assert reference.returncode == 0, reference.stderr
    proc = textclf("evaluate", "--code", SQLITE, "--model_path", tfidf_model, "--data_format", "sqlite",
                   "--data_path", f"{tweets_db}::test", *SQL_COLUMNS, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(reference.stdout)
    line = one_error_line(textclf("evaluate", "--code", SQLITE, "--model_path", tfidf_model, "--data_format", "txt",
                                  "--data_path", tweets["test"]))
    assert line == SQL_FORMAT_ERROR.format(flag="data_format", name="txt", job="labelled data", command="evaluate",
                                           known="csv, tsv, jsonl, fasttext, sqlite")


@pytest.mark.slow  # a second plug-in model, leaderboard + ensemble subprocesses (quick: test_the_sqlite_reader_feeds_the_plugin_family)
def test_leaderboard_and_ensemble_read_a_sqlite_table(tweets_db, tfidf_model, sqlite_model, tweets, tmp_path):
    def board(*args) -> dict:
        proc = textclf("leaderboard", tfidf_model, sqlite_model, "--json", "--n_boot", "100", *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    keys = ("name", "kind", "n", "accuracy", "macro_f1", "macro_f0.5", "macro_f1_ci95")
    reference = board("--data_path", tweets["test"])
    # every model is scored in a fresh process: the --code file is imported there too
    sql = board("--code", SQLITE, "--data_path", f"{tweets_db}::test", "--data_format", "sqlite", *SQL_COLUMNS)
    assert sql["n"] == reference["n"] == 420 and sql["data_path"] == f"{tweets_db}::test"
    assert [{k: r[k] for k in keys} for r in sql["rows"]] == [{k: r[k] for k in keys} for r in reference["rows"]]

    def ensemble(out: Path, *args) -> dict:
        proc = textclf("ensemble", "--model_path", tfidf_model, "--model_path", sqlite_model, "--method", "weighted",
                       "--bags", "0", "--output_dir", out, *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "meta.json").read_text())

    reference = ensemble(tmp_path / "e_csv", "--valid_path", tweets["valid"], "--test_path", tweets["test"])
    sql = ensemble(tmp_path / "e_sql", "--code", SQLITE, "--valid_path", f"{tweets_db}::valid",
                   "--test_path", f"{tweets_db}::test", "--data_format", "sqlite", *SQL_COLUMNS)
    assert sql["weights"] == reference["weights"] and sql["metrics"] == reference["metrics"]
    assert sql["config"]["valid_path"] == sql["data"]["valid"] == f"{tweets_db}::valid"
    assert sql["metrics"]["test"]["n"] == 420


@pytest.mark.slow  # tune-thresholds + report subprocesses (quick: test_the_sqlite_reader_feeds_the_plugin_family)
def test_tune_thresholds_and_report_read_a_sqlite_table(tweets_db, tfidf_model, tweets, tmp_path):
    blocks = {}
    for name, args in (("csv", ["--valid_path", tweets["valid"]]),
                       ("sqlite", ["--code", SQLITE, "--valid_path", f"{tweets_db}::valid", "--data_format", "sqlite", *SQL_COLUMNS])):
        model = shutil.copytree(tfidf_model, tmp_path / name)
        proc = textclf("tune-thresholds", "--model_path", model, "--json", "--cv", "0", *args)
        assert proc.returncode == 0, proc.stderr
        blocks[name] = json.loads(proc.stdout)
    assert blocks["sqlite"]["offsets"] == blocks["csv"]["offsets"]
    assert blocks["sqlite"]["n_valid"] == blocks["csv"]["n_valid"] == 420
    assert blocks["sqlite"]["valid_sha256"] != blocks["csv"]["valid_sha256"]  # the rows read, not a file's bytes

    proc = textclf("report", "--code", SQLITE, "--model_path", tfidf_model, "--data_path", f"{tweets_db}::test",
                   "--data_format", "sqlite", *SQL_COLUMNS, "--out_dir", tmp_path / "report", "--top_errors", "3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    meta = json.loads((tfidf_model / "meta.json").read_text())
    assert summary["data_path"] == f"{tweets_db}::test" and summary["n"] == 420
    assert summary["metrics"]["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"], abs=1e-12)


@pytest.mark.slow  # train + predict subprocesses with a format plug-in (quick: test_a_reader_from_a_tmp_file_feeds_fasttext)
def test_a_format_plugin_claims_its_extension(tfidf_model, tweets, tmp_path):
    plugin = tmp_path / "json_array_format.py"
    plugin.write_text(JSON_ARRAY_FORMAT)
    data = tmp_path / "test.array"
    data.write_text(json.dumps(read_rows(tweets["test"])))
    reference = tmp_path / "reference.txt"
    assert textclf("predict", "--model_path", tfidf_model, "--input_path", tweets["test"], "--output_path", reference).returncode == 0
    out = tmp_path / "out.txt"
    proc = textclf("--code", plugin, "predict", "--model_path", tfidf_model, "--input_path", data, "--output_path", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == reference.read_text()
    proc = textclf("evaluate", "--code", plugin, "--model_path", tfidf_model, "--data_path", data, "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tfidf_model / "meta.json").read_text())
    assert json.loads(proc.stdout)["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"], abs=1e-12)


# --------------------------------------------------------------------------- known core bug
def test_loading_the_same_plugin_twice_keeps_its_code_file():
    script = ("from textclf.core.registry import load_code, get_family\n"
              f"load_code({str(TFIDF)!r}); load_code({str(TFIDF)!r})\n"
              "print(get_family('tfidf_logreg').code_file)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(TFIDF.resolve())


def test_a_plugin_file_is_imported_once_until_it_changes(tmp_path):
    """The container entry point loads CODE, then calls the CLI with --code CODE: the file must run once."""
    plugin, counter = tmp_path / "counting.py", tmp_path / "imports.txt"
    plugin.write_text(f"open({str(counter)!r}, 'a').write('x')\n")
    script = ("import os\nfrom textclf.core.registry import load_code\n"
              f"load_code({str(plugin)!r}); load_code({str(plugin)!r})\n"
              f"with open({str(plugin)!r}, 'a') as f: f.write('# changed\\n')\n"
              f"load_code({str(plugin)!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert counter.read_text() == "xx"  # once, then once more after the edit

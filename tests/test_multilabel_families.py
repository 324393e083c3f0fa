"""Multi-label training in the scikit-learn-style families (issue 24): embeddings, the tfidf/svm plug-ins, SetFit.

Each trains on the small synthetic fixture (tests/fixtures/multilabel/), must beat a test micro-F1
floor taken from a real run, writes label sets with ``predict``, and a fresh process that loads the
model gives the same output line for line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.metrics import multilabel_metrics

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "multilabel"
LABELS = ["health", "politics", "sports", "tech", "weather"]
DATA = ("--train_path", str(FIXTURE / "train.jsonl"), "--valid_path", str(FIXTURE / "valid.jsonl"),
        "--test_path", str(FIXTURE / "test.jsonl"))
# test micro-F1 of real runs (threshold 0.5, no tuning) on the fixture; the floors sit a few points below.
# tfidf_svd (50 components): logreg 0.949, linear_svm 0.978, knn 0.823, mlp (learning rate 0.01) 0.963,
# hgb (30 iterations) 0.861; MiniLM + logreg 0.955; plug-ins tfidf_logreg 0.968, svm_char 0.985.
FLOORS = {"logreg": 0.92, "linear_svm": 0.95, "knn": 0.79, "mlp": 0.93, "hgb": 0.83}
TFIDF = ("--model_name", "tfidf_svd", "--set", "tfidf_svd.n_components=50")


def gold_sets() -> list[tuple[str, ...]]:
    return [tuple(json.loads(line)["labels"]) for line in (FIXTURE / "test.jsonl").read_text().splitlines()]


def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("".join(json.loads(line)["text"] + "\n" for line in (FIXTURE / "test.jsonl").read_text().splitlines()))
    return path


def train(family: str, out: Path, *extra: str, after: tuple[str, ...] = ()) -> dict:
    result = CliRunner().invoke(cli, ["train", *extra, family, *DATA, "--output_dir", str(out), *after], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "meta.json").read_text())


def check_model(meta: dict, model: Path, tmp_path: Path, floor: float, trust: bool = False) -> None:
    """Above the floor; predict (here and in a fresh process) writes the same label sets, scoring what training recorded."""
    assert meta["task"] == "multilabel" and meta["labels"] == LABELS
    assert meta["config"]["search"]["metric"] == "micro_f1"
    assert meta["metrics"]["test"]["micro_f1"] > floor, meta["metrics"]["test"]["micro_f1"]
    inp = texts_file(tmp_path)
    here, there = tmp_path / "here.jsonl", tmp_path / "there.jsonl"
    flag = ["--trust-code"] if trust else []
    result = CliRunner().invoke(cli, ["predict", *flag, "--model_path", str(model), "--input_path", str(inp),
                                      "--output_path", str(here)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    textclf = Path(sys.executable).parent / "textclf"
    proc = subprocess.run([str(textclf), "predict", *flag, "--model_path", str(model), "--input_path", str(inp),
                           "--output_path", str(there)], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in here.read_text().splitlines()]
    assert [r["labels"] for r in rows] == [json.loads(line)["labels"] for line in there.read_text().splitlines()]
    predicted = [tuple(r["labels"]) for r in rows]
    assert len(predicted) == len(gold_sets()) and all(set(r["probabilities"]) == set(LABELS) for r in rows)
    got = multilabel_metrics(gold_sets(), predicted, LABELS)["micro_f1"]
    assert got == pytest.approx(meta["metrics"]["test"]["micro_f1"], abs=1e-9)


@pytest.mark.slow  # MiniLM encodes the fixture, then each classifier trains (quick: test_multilabel.py's fastText run)
@pytest.mark.parametrize("classifier", ["logreg", "linear_svm", "knn", "mlp", "hgb"])
def test_embeddings_classifiers_train_on_label_sets(classifier, tmp_path, cache_dir):
    # hgb's 200 iterations x 5 labels take minutes; the MLP's default learning rate underfits 50 SVD dims (0.32)
    extra = {"hgb": ("--set", "classifiers.hgb.max_iter=30"), "mlp": ("--set", "classifiers.mlp.learning_rate_init=0.01")}
    extra = extra.get(classifier, ())
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "embeddings", *TFIDF, "--classifier", classifier, *extra, *DATA,
                                      "--output_dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classifier"] == classifier and (out / "classifier.skops").is_file()
    check_model(meta, out, tmp_path, FLOORS[classifier])


def test_embeddings_balance_is_refused_on_label_sets(tmp_path, cache_dir):
    result = CliRunner().invoke(cli, ["train", "embeddings", *TFIDF, "--balance", *DATA, "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("Error: balance: downsampling to the smallest class is multi-class "
                                                       "only; set balance=false for label sets")


@pytest.mark.slow  # MiniLM encodes the fixture (~25 s on 2 CPU cores)
def test_embeddings_minilm_logreg_on_label_sets(tmp_path, cache_dir):
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "embeddings", *DATA, "--output_dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    check_model(json.loads((out / "meta.json").read_text()), out, tmp_path, 0.92)


@pytest.mark.slow  # each example plug-in trains in a subprocess (quick: test_multilabel.py's fastText run)
@pytest.mark.parametrize(("plugin", "floor", "extra"), [("tfidf_logreg", 0.94, ()), ("svm_char", 0.95, ()),
                                                        ("tfidf_logreg", 0.94, ("--set", "model.char_ngram_max=5"))])
def test_example_plugins_train_on_label_sets(plugin, floor, extra, tmp_path):
    out = tmp_path / "model"
    meta = train(plugin, out, "--code", str(REPO / "examples" / "plugins" / f"{plugin}.py"), after=extra)
    check_model(meta, out, tmp_path, floor, trust=True)
    if extra:  # word and char_wb 2-5-gram TF-IDF side by side: more features than the words alone
        words = train(plugin, tmp_path / "words", "--code", str(REPO / "examples" / "plugins" / f"{plugin}.py"))
        assert meta["config"]["model"]["char_ngram_max"] == 5
        assert meta["vocabulary_size"] > words["vocabulary_size"], (meta["vocabulary_size"], words["vocabulary_size"])


def test_tfidf_logreg_plugin_refuses_bad_char_ngrams(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--code", str(REPO / "examples" / "plugins" / "tfidf_logreg.py"), "tfidf_logreg",
                                      *DATA, "--output_dir", str(tmp_path / "m"), "--set", "model.char_ngram_max=3",
                                      "--set", "model.char_ngram_min=4"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "Error: model.char_ngram_min: expected 1..char_ngram_max (3), got 4"

"""fastText end to end: CLI training on real data, Predictor round-trip, alignment, resume, failures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner

import textclf
from textclf.cli import cli
from textclf.core.data import read_labelled
from textclf.core.tuning import make_storage

# From real runs with 4 trials on data/tweets_sentiment: test macro-F1 0.74-0.77 (majority class: 0.41).
MACRO_F1_FLOOR = 0.70
# Searches that test resuming and failures, not the hashing size: 100k buckets instead of up to 2M (an 800 MB matrix
# written and saved per trial and refit with dim 100).
SMALL_BUCKETS = ("--set", "search.space.bucket.choices=[100000]")


def train_cli(tweets, out, *extra):
    args = ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
            "--test_path", str(tweets["test"]), "--output_dir", str(out), *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tweets):
    out = tmp_path_factory.mktemp("ft") / "model"
    train_cli(tweets, out, "--n_trials", "4", "--seed", "13")
    return out


def test_cli_trains_a_model_above_floor(model_dir):
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["kind"] == "fasttext"
    assert meta["labels"] == ["negative", "positive"]
    assert meta["metrics"]["test"]["macro_f1"] > MACRO_F1_FLOOR
    assert meta["metrics"]["valid"]["macro_f1"] > MACRO_F1_FLOOR
    assert meta["search"]["n_trials"] == 4
    assert set(meta["search"]["best_params"]) >= {"lr", "epoch", "wordNgrams", "dim", "loss", "bucket"}
    assert len(meta["data_sha256"]) == 64
    assert meta["versions"]["fasttext-community"] == "0.11.9"
    assert meta["config"]["search"]["n_trials"] == 4
    for name in ("model.bin", "trials.csv", "metrics.txt", "study.journal", "optimization_history.png",
                 "optimization_history.html", "param_importances.png", "param_importances.html"):
        assert (model_dir / name).stat().st_size > 0, name
    rows = list(csv.DictReader((model_dir / "trials.csv").open()))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}


def test_predictor_round_trip_identical(model_dir, tweets):
    ds = read_labelled(tweets["test"])
    p1 = textclf.load_predictor(model_dir)
    p2 = textclf.load_predictor(model_dir / "model.bin")
    proba = p1.predict_proba(ds.texts)
    assert proba.shape == (len(ds), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-3)
    assert proba.max() <= 1.0 and proba.min() >= 0.0
    np.testing.assert_array_equal(proba, p2.predict_proba(ds.texts))
    preds = p1.predict(ds.texts)
    assert preds == [p1.labels[i] for i in proba.argmax(axis=1)]
    acc = np.mean([p == t for p, t in zip(preds, ds.labels, strict=True)])
    meta = json.loads((model_dir / "meta.json").read_text())
    assert acc == pytest.approx(meta["metrics"]["test"]["accuracy"])


def test_predict_keeps_line_alignment(model_dir, tmp_path):
    lines = ["I love this, best day ever", "", "this is awful and I hate it", "   ", "multi\tspace  text", ""]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(lines) + "\n")
    p = textclf.load_predictor(model_dir)
    for fmt in ("txt", "csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        result = CliRunner().invoke(cli, ["predict", "--model_path", str(model_dir), "--input_path", str(inp),
                                          "--output_path", str(out), "--batch_size", "2"])
        assert result.exit_code == 0, result.output
        if fmt == "txt":
            got = out.read_text().splitlines()
        elif fmt == "csv":
            rows = list(csv.DictReader(out.open()))
            assert set(rows[0]) == {"label", "p_negative", "p_positive"}
            got = [r["label"] for r in rows]
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert set(rows[0]["probabilities"]) == {"negative", "positive"}
            got = [r["label"] for r in rows]
        assert len(got) == len(lines)
        assert got == p.predict(lines)
    assert got[0] == "positive" and got[2] == "negative"
    assert not list(tmp_path.glob(".out*"))  # no temp files left behind


def test_predict_reads_csv_and_fasttext_inputs(model_dir, tmp_path, tweets):
    out = tmp_path / "p.txt"
    CliRunner().invoke(cli, ["predict", "--model_path", str(model_dir), "--input_path", str(tweets["test"]),
                             "--output_path", str(out)], catch_exceptions=False)
    assert len(out.read_text().splitlines()) == 420


def test_evaluate_json_matches_meta(model_dir, tweets):
    result = CliRunner().invoke(cli, ["evaluate", "--model_path", str(model_dir), "--data_path", str(tweets["test"]), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert metrics["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"])
    text = CliRunner().invoke(cli, ["evaluate", "--model_path", str(model_dir), "--data_path", str(tweets["test"]),
                                    "--beta", "0.5"]).output
    assert "f0.5" in text and "confusion matrix" in text


def test_missing_model_dir_is_a_clear_error(tmp_path, tweets):
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(tmp_path / "nope"), "--input_path", str(tweets["test"]),
                                      "--output_path", str(tmp_path / "o.txt")])
    assert result.exit_code == 2 and "model directory not found" in result.output


def test_resume_adds_trials_to_the_same_study(tmp_path, tweets):
    out = tmp_path / "resume"
    small = ["--set", "search.space.epoch.high=10", "--set", 'search.space.dim={"type": "categorical", "choices": [20]}',
             *SMALL_BUCKETS]
    train_cli(tweets, out, "--n_trials", "2", *small)
    study = optuna.load_study(study_name="fasttext", storage=make_storage(None, out))
    assert len(study.trials) == 2
    first = [t.params for t in study.trials]
    train_cli(tweets, out, "--n_trials", "4", *small)
    study = optuna.load_study(study_name="fasttext", storage=make_storage(None, out))
    assert len(study.trials) == 4
    assert [t.params for t in study.trials[:2]] == first
    meta = json.loads((out / "meta.json").read_text())
    assert meta["search"]["n_trials"] == 4
    train_cli(tweets, out, "--n_trials", "4", *small)  # target reached: no new trial, only the refit
    assert len(optuna.load_study(study_name="fasttext", storage=make_storage(None, out)).trials) == 4
    # the refit rewrote the last run's model.bin: meta.json lists it again, so the directory still loads
    assert list(json.loads((out / "meta.json").read_text())["files"]) == ["model.bin"]
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(out), "--input_path", str(tweets["test"]),
                                      "--output_path", str(tmp_path / "pred.txt")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "pred.txt").read_text().splitlines()) == len(read_labelled(tweets["test"]).texts)


def test_a_search_on_other_data_never_resumes_another_study(tmp_path, tweets):
    """Same output directory, other training rows: a new study (the old journal kept aside); in a named storage: an error."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import head_csv

    small = ["--set", "search.space.epoch.high=10", "--set", 'search.space.dim={"type": "categorical", "choices": [20]}',
             *SMALL_BUCKETS]
    out = tmp_path / "model"
    train_cli(tweets, out, "--n_trials", "2", *small)
    other = dict(tweets, train=head_csv(tweets["train"], tmp_path / "train_head.csv", 1000))
    train_cli(other, out, "--n_trials", "2", *small)
    journal = make_storage(None, out)
    [study] = optuna.get_all_study_summaries(journal)
    assert study.n_trials == 2  # two new trials, not the two of the first search
    assert (out / "study.journal.previous").is_file()
    assert len(optuna.load_study(study_name="fasttext", storage=make_storage(str(out / "study.journal.previous"), out)).trials) == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["search"]["n_trials"] == 2 and meta["data"]["train"] == str(other["train"])
    train_cli(other, out, "--n_trials", "3", *small)  # the same search again: it resumes
    assert len(optuna.load_study(study_name="fasttext", storage=make_storage(None, out)).trials) == 3

    shared = tmp_path / "shared.journal"
    train_cli(tweets, tmp_path / "a", "--n_trials", "1", "--set", f"search.storage={shared}", *small)
    args = ["train", "fasttext", "--train_path", str(other["train"]), "--valid_path", str(tweets["valid"]),
            "--output_dir", str(tmp_path / "b"), "--n_trials", "1", "--set", f"search.storage={shared}", *small]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: study 'fasttext' in {shared} holds 1 trials of another search (other training or validation data, "
        "labels or metric); name a new study with --set search.study_name=NAME")


def test_failed_trials_are_recorded_and_search_goes_on(tmp_path, tweets):
    out = tmp_path / "fail"
    # "bogus" is not a fastText loss: those trials fail inside fastText, the others complete.
    # The start points fix the order (fail first, then three good ones) whatever the sampler draws.
    starts = json.dumps([{"loss": "bogus"}] + [{"loss": "softmax", "lr": lr} for lr in (0.1, 0.2, 0.3)])
    train_cli(tweets, out, "--n_trials", "3", "--set", 'search.space.loss={"type": "categorical", "choices": ["softmax", "bogus"]}',
              "--set", f"search.start_params={starts}",
              "--set", "search.space.epoch.high=10", *SMALL_BUCKETS)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    states = [r["state"] for r in rows]
    assert "FAIL" in states and states.count("COMPLETE") == 3
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["loss"] == "softmax"


@pytest.mark.slow  # quantize retrains (quick: tests/test_small_models.py)
def test_quantize_writes_ftz_and_predicts(tmp_path, tweets):
    out = tmp_path / "q"
    train_cli(tweets, out, "--n_trials", "0", "--quantize", "--set", "model.dim=20", "--set", "model.bucket=100000",
              "--set", "output.quantize_cutoff=20000")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_file"] == "model.ftz" and (out / "model.ftz").stat().st_size < (out / "model.bin").stat().st_size
    assert "search" not in meta
    assert textclf.load_predictor(out).predict(["what a great day"]) in (["positive"], ["negative"])
    assert meta["metrics"]["test"]["macro_f1"] > MACRO_F1_FLOOR - 0.05  # fixed default params, no search


def test_entry_points_run_as_scripts(repo):
    for script in ("fasttext/train.py", "fasttext/predict.py"):
        result = subprocess.run([sys.executable, script, "--help"], cwd=repo, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "--output_path" in result.stdout or "--output_dir" in result.stdout


@pytest.mark.slow  # a search process killed mid-trial, then a resumed search and refit
def test_killed_search_resumes_losing_at_most_the_running_trial(tmp_path, tweets, repo):
    """SIGKILL a search mid-trial, then rerun: finished trials are kept, the killed one is FAIL."""
    import signal
    import time

    out = tmp_path / "killed"
    cmd = [sys.executable, "fasttext/train.py", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
           "--output_dir", str(out), "--n_trials", "50", "--set", "search.space.epoch.low=40", "--set", "search.space.epoch.high=60",
           *SMALL_BUCKETS]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = None
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (out / "study.journal").exists():
            storage = storage or make_storage(None, out)
            trials = optuna.load_study(study_name="fasttext", storage=storage).trials
            done = sum(t.state.name == "COMPLETE" for t in trials)
            if done >= 2 and trials[-1].state.name == "RUNNING":
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 2, "search did not get going"
    storage = make_storage(None, out)
    before = optuna.load_study(study_name="fasttext", storage=storage).trials
    kept = [(t.number, t.params) for t in before if t.state.name == "COMPLETE"]
    assert not (out / "meta.json").exists()
    train_cli(tweets, out, "--n_trials", str(len(kept) + 1), "--set", "search.space.epoch.low=5", "--set", "search.space.epoch.high=10",
              *SMALL_BUCKETS)
    after = optuna.load_study(study_name="fasttext", storage=make_storage(None, out)).trials
    assert [(t.number, t.params) for t in after if t.number in dict(kept)] == kept
    assert sum(t.state.name == "COMPLETE" for t in after) == len(kept) + 1
    assert [t.state.name for t in after if t.state.name not in ("COMPLETE",)] == ["FAIL"]
    assert (out / "meta.json").exists()


def test_model_path_may_name_meta_json(model_dir):
    p = textclf.load_predictor(model_dir / "meta.json")
    assert p.predict(["what a great day"]) == textclf.load_predictor(model_dir).predict(["what a great day"])


def test_text_block_normalises_at_training_and_prediction(tmp_path, tweets):
    """``text.lowercase`` + ``text.pattern`` (fastText's tutorial preprocessing) run on train and, from meta.json, at predict."""
    from textclf.core.loading import load_predictor

    fixed = ["--n_trials", "0", "--set", "model.bucket=100000", "--set", "model.thread=1"]
    out = tmp_path / "norm"
    train_cli(tweets, out, *fixed, "--set", "text.lowercase=true", "--set", r"text.pattern=[\w']+|[^\w\s]")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["text"] == {"lowercase": True, "pattern": r"[\w']+|[^\w\s]"}
    assert meta["metrics"]["test"]["macro_f1"] > MACRO_F1_FLOOR
    predictor = load_predictor(out)
    same = predictor.predict_proba(["What a GREAT day!!", "what a great day ! !"])
    np.testing.assert_array_equal(same[0], same[1])
    plain = tmp_path / "plain"
    train_cli(tweets, plain, *fixed)
    assert json.loads((plain / "meta.json").read_text())["config"]["text"] == {"lowercase": False, "pattern": None}
    differ = load_predictor(plain).predict_proba(["What a GREAT day!!", "what a great day ! !"])
    assert not np.array_equal(differ[0], differ[1])


def test_bad_text_pattern_is_one_line(tmp_path, tweets):
    args = ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
            "--output_dir", str(tmp_path / "bad"), "--n_trials", "0", "--set", "text.pattern=(\\w+"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output.startswith("Error: text.pattern '(\\\\w+' is not a regular expression: missing ), unterminated "
                                    "subpattern at position 0")
    assert not (tmp_path / "bad").exists()


def test_auto_learning_rate_trains_long_documents(shared_dataset, tmp_path):
    """``model.lr: "auto"`` (the default) raises the rate with the texts' mean length: with no search, long news
    articles (bbc_news, 383 tokens a text) train to macro-F1 0.97 where the sentence rate 0.1 stays near chance (0.27);
    short texts keep 0.1."""
    from textclf.families.fasttext.model import auto_lr

    bbc = shared_dataset("bbc_news")
    args = ["train", "fasttext", "--train_path", str(bbc / "train.csv"), "--valid_path", str(bbc / "valid.csv"),
            "--test_path", str(bbc / "test.csv"), "--n_trials", "0", "--set", "model.bucket=200000",
            "--set", "model.thread=1"]
    scores = {}
    for lr in ("auto", "0.1"):
        out = tmp_path / lr
        result = CliRunner().invoke(cli, [*args, "--output_dir", str(out), "--set", f"model.lr={lr}"])
        assert result.exit_code == 0, result.output
        meta = json.loads((out / "meta.json").read_text())
        scores[lr] = meta["metrics"]["test"]["macro_f1"], meta["params"]["lr"]
    texts = read_labelled(bbc / "train.csv").texts
    assert scores["auto"][1] == auto_lr(texts) == 0.9583  # 0.1 x 383.3 / 40 tokens
    assert scores["auto"][0] >= 0.95, scores
    assert scores["0.1"][1] == 0.1 and scores["0.1"][0] < 0.5, scores  # a number given with --set is used as it is
    assert auto_lr(["a short tweet of a few words"] * 3) == 0.1
    assert auto_lr(["word " * 1000]) == 1.0
    bad = CliRunner().invoke(cli, [*args, "--output_dir", str(tmp_path / "bad"), "--set", "model.lr=fast"])
    assert bad.exit_code == 2 and bad.output.strip() == """Error: model.lr: fastText's lr must be a number or "auto", got 'fast'"""
    assert not (tmp_path / "bad").exists()

"""fastText search budget and prediction fast paths: same results as the slow ways, on real data."""

from __future__ import annotations

import csv
import json
import multiprocessing
import sys
import time

import optuna
import pytest
from click.testing import CliRunner

import textclf.core.data as data_mod
from textclf.cli import cli
from textclf.core.data import iter_texts
from textclf.core.errors import DataError
from textclf.core.training import load_splits
from textclf.families.fasttext import model as ftm


def test_split_only_whitespace_is_what_python_splits_on_and_fasttext_does_not():
    python_ws = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    assert set(ftm.SPLIT_ONLY_WHITESPACE) == python_ws - set(" \t\r\x0b\x0c")


def test_fasttext_lines_predict_exactly_like_one_line(tweets, tmp_path):
    splits = load_splits(tweets["train"], tweets["valid"], tweets["test"], {})
    train_file = tmp_path / "train.txt"
    ftm.write_training_file(splits.train, splits.labels, train_file)
    model = ftm.train_model(train_file, {"epoch": 2, "dim": 10, "wordNgrams": 2, "minn": 2, "maxn": 4, "bucket": 50000})
    texts = list(splits.test.texts)
    odd = ["two\nlines", "em\u2003space", "no\xa0break", "sep\x1cchar", "tab\tand\rcr\x0bvt\x0cff", "  lead and trail  ", "",
           "caf\u00e9 \u2014 na\u00efve", "mixed\u3000\u2028end"]
    for batch in (texts, texts + odd, odd):
        fast = ftm.fasttext_lines(batch)
        slow = [ftm.one_line(t) for t in batch]
        a_labels, a_probs = model.predict(slow, k=-1, threshold=0.0)
        b_labels, b_probs = model.predict(fast, k=-1, threshold=0.0)
        assert a_labels == b_labels
        assert all((x == y).all() for x, y in zip(a_probs, b_probs, strict=True))
    assert all(f is t for f, t in zip(ftm.fasttext_lines(texts), texts, strict=True))  # clean text: no copy
    assert ftm.fasttext_line("a\u2003b") == "a b" and ftm.fasttext_line("a\nb") == "a b"


CASES = [b"", b"\n", b"\n\n", b"abc", b"abc\r", b"\xef\xbb\xbfhello\nworld", b"a\r\r\nb\r\n\r\n", b"a\rb\rc\n",
         "caf\u00e9\n\u20ac\n\n\U0001f600 x\n".encode(), b"x" * 300 + b"\n" + b"y" * 7, b"\xef\xbb\xbf"]
BAD = [b"one\ntwo\x00x\nthree", b"ok\nbad \xff\xfe\nz\x00", b"fine\n" * 20 + b"\xc3\n"]


def _reference(path):
    return [line.rstrip("\n").rstrip("\r") for _, line in data_mod._decoded_lines(path)]


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 22])
def test_plain_text_block_reader_matches_the_line_reader(tmp_path, monkeypatch, block):
    monkeypatch.setattr(data_mod, "_BLOCK_BYTES", block)
    for i, raw in enumerate(CASES):
        path = tmp_path / f"c{i}.txt"
        path.write_bytes(raw)
        assert list(iter_texts(path)) == _reference(path), raw
    for i, raw in enumerate(BAD):
        path = tmp_path / f"bad{i}.txt"
        path.write_bytes(raw)
        with pytest.raises(DataError) as expected:
            _reference(path)
        with pytest.raises(DataError) as got:
            list(iter_texts(path))
        assert str(got.value) == str(expected.value)  # same message, same line number


def test_a_call_past_its_deadline_is_killed_and_pruned(tweets, tmp_path):
    """The core's budget rule for fork_trials families: a fastText fit still running at the deadline is killed."""
    from textclf.core.deadline import call_before_deadline

    splits = load_splits(tweets["train"], tweets["valid"], tweets["test"], {})
    train_file = tmp_path / "train.txt"
    ftm.write_training_file(splits.train, splits.labels, train_file)
    others = set(multiprocessing.active_children())  # children of earlier tests in this process are not ours

    def fit_and_score(params):
        def call():
            model = ftm.train_model(train_file, params)
            return ftm.FastTextPredictor("", {"labels": splits.labels}, model).predict(splits.valid.texts)
        return call

    with pytest.raises(optuna.TrialPruned, match="search timeout reached: trial killed"):
        call_before_deadline(fit_and_score({"epoch": 100000, "dim": 10}), time.monotonic() + 1.0)
    assert set(multiprocessing.active_children()) <= others  # the 100k-epoch child was killed and reaped, not left training
    with pytest.raises(optuna.TrialPruned):  # a deadline already past prunes without waiting for the call
        call_before_deadline(fit_and_score({"epoch": 100000, "dim": 10}), time.monotonic() - 1.0)
    assert set(multiprocessing.active_children()) <= others
    predicted = call_before_deadline(fit_and_score({"epoch": 5, "lr": 0.5, "dim": 20}), time.monotonic() + 300)
    right = sum(p == y for p, y in zip(predicted, splits.valid.labels, strict=True))
    assert len(predicted) == len(splits.valid) and right > 0.6 * len(predicted)
    with pytest.raises(RuntimeError, match="Unrecognized loss"):
        call_before_deadline(fit_and_score({"epoch": 1, "loss": "bogus"}), time.monotonic() + 300)


def test_start_points_keep_only_what_fits_the_space():
    space = {"lr": {"type": "float", "low": 0.05, "high": 1.0}, "dim": {"type": "categorical", "choices": [25, 50]}}
    starts = [{"lr": 0.5, "dim": 50, "epoch": 25}, {"lr": 2.0, "dim": 30}, {"lr": 0.1, "dim": 100}]
    from textclf.core.tuning import start_points

    assert start_points(space, starts) == [{"lr": 0.5, "dim": 50}, {"lr": 0.1}]


@pytest.mark.slow  # waits out its 8 s search budget (the kill itself: test_a_call_past_its_deadline_is_killed_and_pruned)
def test_timed_search_kills_the_trial_at_the_deadline(tweets, tmp_path):
    """A start point of 100k epochs would run for hours: the 8 s timeout kills it and the search refits the first."""
    out = tmp_path / "timed"
    cheap = {"dim": 25, "wordNgrams": 1, "minn": 0, "bucket": 200000}
    starts = json.dumps([{"epoch": 5, **cheap}, {"epoch": 100000, **cheap}])
    args = ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
            "--output_dir", str(out), "--n_trials", "2", "--timeout", "8", "--set", "search.space.epoch.high=100000",
            "--set", f"search.start_params={starts}"]
    others = set(multiprocessing.active_children())  # children of earlier tests in this process are not ours
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    # PRUNED is only what call_before_deadline (core/deadline.py) gives a trial still running at the deadline: the timeout was honoured
    assert [(r["params_epoch"], r["state"], r["value"] == "") for r in rows] == [("5", "COMPLETE", False),
                                                                               ("100000", "PRUNED", True)]
    assert set(multiprocessing.active_children()) <= others
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["epoch"] == 5 and meta["search"]["best_trial"] == 0
    assert meta["search"]["states"] == {"COMPLETE": 1, "PRUNED": 1}

"""Multi-label through the services on the small fixture: fastText -> tune-thresholds -> ensemble -> leaderboard
-> report -> serve (a real server process) -> export (docs/multilabel.md, issue 24)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.data import read_labelled
from textclf.core.loading import load_predictor
from textclf.core.metrics import calibration_metrics
from textclf.services.compare.leaderboard import LeaderboardError, board_task

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ServeProcess  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "multilabel"
LABELS = ["health", "politics", "sports", "tech", "weather"]
# From real runs on the fixture (make_fixture.py; 2 CPU cores): the members score test micro-F1 0.96-0.98, the ensemble
# 0.97-0.98, their bootstrap CIs about +-0.015 wide. The floors leave room for fastText's thread nondeterminism.
MEMBER_MICRO_F1_FLOOR = 0.93
ENSEMBLE_MICRO_F1_FLOOR = 0.94
SMALL = ("--set", "model.bucket=20000", "--set", "search.n_trials=0")  # 20k hash buckets: a few MB, not 760


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train(out: Path, *extra: str) -> dict:
    result = invoke("train", "fasttext", "--train_path", str(FIXTURE / "train.jsonl"), "--valid_path",
                    str(FIXTURE / "valid.jsonl"), "--test_path", str(FIXTURE / "test.jsonl"), "--output_dir", str(out),
                    *SMALL, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "meta.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ml_e2e")
    train(root / "ft_a", "--set", "model.lr=0.5", "--set", "model.epoch=50", "--set", "seed=1")
    train(root / "ft_b", "--set", "model.lr=0.3", "--set", "model.epoch=40", "--set", "model.wordNgrams=2", "--set", "seed=2")
    result = invoke("tune-thresholds", "--model_path", str(root / "ft_a"), "--valid_path", str(FIXTURE / "valid.jsonl"),
                    "--beta", "1")
    assert result.exit_code == 0, result.output
    result = invoke("ensemble", "--model_path", str(root / "ft_a"), "--model_path", str(root / "ft_b"), "--valid_path",
                    str(FIXTURE / "valid.jsonl"), "--test_path", str(FIXTURE / "test.jsonl"), "--output_dir",
                    str(root / "ens"), "--bags", "5")
    assert result.exit_code == 0, result.output
    return {"a": root / "ft_a", "b": root / "ft_b", "ens": root / "ens", "root": root}


def test_members_and_thresholds(models):
    meta = json.loads((models["a"] / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["labels"] == LABELS
    assert set(meta["thresholds"]["per_label"]) == set(LABELS) and meta["thresholds"]["metric"] == "micro_f1"
    for m in ("a", "b"):
        assert json.loads((models[m] / "meta.json").read_text())["metrics"]["test"]["micro_f1"] > MEMBER_MICRO_F1_FLOOR


def test_ensemble_averages_per_label_probabilities(models):
    meta = json.loads((models["ens"] / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["method"] == "weighted" and meta["labels"] == LABELS
    assert meta["ensemble_search"]["metric"] == "micro_f1" and abs(sum(meta["weights"]) - 1) < 1e-9
    assert meta["metrics"]["test"]["task"] == "multilabel"
    assert meta["metrics"]["test"]["micro_f1"] > ENSEMBLE_MICRO_F1_FLOOR
    # the weights search ranges over single members too: valid micro-F1 >= the better member's at 0.5
    assert meta["ensemble_search"]["valid_score"] >= max(meta["ensemble_search"]["single"]) - 1e-12
    ens, a, b = (load_predictor(models[k], thresholds=False) for k in ("ens", "a", "b"))
    texts = read_labelled(FIXTURE / "test.jsonl", task="multilabel").texts[:20]
    temps = [r["temperature"] for r in meta["members"]]  # one temperature per member and label, fitted on valid
    assert all(len(t) == len(LABELS) for t in temps)
    scaled = ens.tempered([a.predict_proba(texts), b.predict_proba(texts)])
    for raw, s in zip((a.predict_proba(texts), b.predict_proba(texts)), scaled, strict=True):
        assert ((raw >= 0.5) == (s >= 0.5)).all()  # a temperature keeps every 0.5 decision
    expected = meta["weights"][0] * scaled[0] + meta["weights"][1] * scaled[1]
    np.testing.assert_allclose(ens.predict_proba(texts), expected, atol=1e-9)
    assert all(isinstance(p, tuple) for p in ens.predict(texts))
    result = CliRunner().invoke(cli, ["ensemble", "--model_path", str(models["a"]), "--model_path", str(models["b"]),
                                      "--valid_path", str(FIXTURE / "valid.jsonl"), "--output_dir",
                                      str(models["root"] / "stack"), "--method", "stacking"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: --method stacking: multi-label members are combined by their weighted per-label probabilities only "
        "(use --method weighted or auto)")


def test_leaderboard_scores_label_sets_with_a_micro_f1_ci(models):
    result = invoke("leaderboard", str(models["a"]), str(models["b"]), str(models["ens"]), "--json", "--n_boot", "300")
    assert result.exit_code == 0, result.output
    board = json.loads(result.output[result.output.index("{"):])
    assert board["task"] == "multilabel" and board["metric"] == "micro_f1" and board["n"] == 150
    rows = board["rows"]
    assert [r["micro_f1"] for r in rows] == sorted((r["micro_f1"] for r in rows), reverse=True)
    by_name = {r["name"]: r for r in rows}
    for name in ("ft_a", "ft_b", "ens"):
        r = by_name[name]
        low, high = r["micro_f1_ci95"]
        assert r["micro_f1"] > MEMBER_MICRO_F1_FLOOR and low <= r["micro_f1"] <= high and high - low < 0.1
        assert {"macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"} <= set(r)
    assert by_name["ft_a"]["thresholds"] is True and by_name["ft_b"]["thresholds"] is False
    # the leaderboard's micro-F1 is evaluate's (same predictions, tuned thresholds included)
    evaluated = invoke("evaluate", "--model_path", str(models["a"]), "--data_path", str(FIXTURE / "test.jsonl"), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output[evaluated.output.index("{"):])["micro_f1"] == pytest.approx(by_name["ft_a"]["micro_f1"])
    with pytest.raises(LeaderboardError) as err:
        board_task([Path("m1"), Path("m2")], [{"task": "multilabel"}, {"kind": "fasttext"}])
    assert str(err.value) == ("multi-class and multi-label models cannot share one leaderboard: m1 (multilabel), "
                              "m2 (multiclass)")


def test_report_has_per_label_bars_and_cooccurrence(models, tmp_path):
    result = invoke("report", "--model_path", str(models["ens"]), "--data_path", str(FIXTURE / "test.jsonl"), "--out_dir",
                    str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["figures"]) == {"per_class_metrics", "label_cooccurrence", "reliability"}
    assert all((tmp_path / f).stat().st_size > 10_000 for f in report["figures"].values())
    gold = read_labelled(FIXTURE / "test.jsonl", task="multilabel").labels
    counts = {label: sum(label in row for row in gold) for label in LABELS}
    assert {k: v["support"] for k, v in report["metrics"]["per_class"].items()} == counts
    assert report["micro_f1"] > ENSEMBLE_MICRO_F1_FLOOR and report["errors"] == sum(1 for e in report["worst_errors"])
    page = (tmp_path / "report.html").read_text()
    assert "Label co-occurrence (gold)" in page and 'src="label_cooccurrence.png"' in page
    # the per-label reliability diagram and its ECE: every (text, label) probability against the gold 0/1 matrix
    ds = read_labelled(FIXTURE / "test.jsonl", task="multilabel")
    predictor = load_predictor(models["ens"])
    y = np.array([[label in row for label in predictor.labels] for row in ds.labels], dtype=float)
    expected = calibration_metrics(predictor.predict_proba(ds.texts), y, task="multilabel")
    assert report["ece"] == pytest.approx(expected["ece"]) and report["brier"] == pytest.approx(expected["brier"])
    assert 0 < report["ece"] < 0.2
    assert "Reliability diagram (per label)" in page and 'src="reliability.png"' in page
    assert f"ECE {report['ece']:.4f}" in page


@pytest.mark.slow  # serve with two worker processes (quick: test_leaderboard_scores_label_sets_with_a_micro_f1_ci)
def test_serve_answers_label_sets_with_two_workers(models):
    texts = ["rain storm flood", "election vote parliament and match goal", "", "the of and"]
    expected = load_predictor(models["ens"]).predict(texts)
    server = ServeProcess(models["ens"], "--workers", "2", ready_runs=4)
    try:
        for _ in range(3):  # more than one worker answers
            answer = httpx.post(f"{server.url}/predict", json={"texts": texts}, timeout=30).json()
            preds = answer["predictions"]
            assert list(answer) == ["predictions"] and len(preds) == len(texts)
            for pred, labels in zip(preds, expected, strict=True):
                assert list(pred) == ["labels", "probabilities"] and pred["labels"] == list(labels)
                assert list(pred["probabilities"]) == LABELS and all(0 <= p <= 1 for p in pred["probabilities"].values())
        assert expected[0] == ("weather",) and "politics" in expected[1]
        short = httpx.post(f"{server.url}/predict", json={"texts": texts[:1], "probabilities": False}, timeout=30).json()
        assert short == {"predictions": [{"labels": ["weather"]}]}
        meta = httpx.get(f"{server.url}/metadata", timeout=10).json()
        assert meta["task"] == "multilabel" and meta["labels"] == LABELS
    finally:
        assert server.stop() == 0, server.log()


def test_export_onnx_refuses_fasttext_in_one_line(models):
    result = CliRunner().invoke(cli, ["export", "--model_path", str(models["a"])])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {models['a']}: fasttext models cannot be exported to ONNX (families that can: bert, lstm)")


# A small BiLSTM (32-dim, 8 epochs, one thread): about 10-20 s of training on 2 CPU cores.
LSTM_SMALL = ("--epochs", "8", "--batch_size", "16", "--lr", "0.01", "--set", "model.embedding_dim=32",
              "--set", "model.hidden_size=32", "--set", "train.num_threads=1", "--set", "text.min_count=1",
              "--set", "train.pos_weight=balanced", "--set", "train.patience=0", "--set", "search.n_trials=0")


@pytest.mark.slow
def test_lstm_export_and_onnx_serving_give_the_torch_label_sets(tmp_path):
    out = tmp_path / "lstm"
    result = invoke("train", "lstm", "--train_path", str(FIXTURE / "train.jsonl"), "--valid_path",
                    str(FIXTURE / "valid.jsonl"), "--test_path", str(FIXTURE / "test.jsonl"), "--output_dir", str(out),
                    *LSTM_SMALL)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta.json").read_text())["task"] == "multilabel"
    result = invoke("export", "--model_path", str(out))
    assert result.exit_code == 0, result.output
    check = json.loads((out / "onnx.json").read_text())["check"]["model.onnx"]
    assert check["max_abs_diff"] <= 1e-4 and check["label_agreement"] == 1.0
    texts = read_labelled(FIXTURE / "test.jsonl", task="multilabel").texts[:40]
    expected = load_predictor(out, backend="torch").predict(texts)
    assert any(len(row) >= 2 for row in expected)  # real label sets, not one label a text
    server = ServeProcess(out, "--backend", "onnx")
    try:
        answer = httpx.post(f"{server.url}/predict", json={"texts": texts, "probabilities": False}, timeout=30).json()
        assert [tuple(p["labels"]) for p in answer["predictions"]] == expected
    finally:
        assert server.stop() == 0, server.log()


def test_explain_says_no_label_when_the_label_set_is_empty(models, tmp_path):
    text = "the of and a"  # words of every topic: no label reaches 0.5
    source = tmp_path / "in.txt"
    source.write_text(text + "\n")
    assert invoke("predict", "--model_path", str(models["b"]), "--input_path", str(source), "--output_path",
                  str(tmp_path / "out.txt")).exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "\n"  # the empty label set: an empty line, aligned
    result = invoke("explain", "--model_path", str(models["b"]), "--text", text)
    assert result.exit_code == 0, result.output
    head = result.output.splitlines()[0]
    assert head.endswith("; predicted no label; occlusion)") and head.split(" ")[0] in LABELS

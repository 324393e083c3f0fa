"""`textclf export --format onnx`: BERT and BiLSTM exports match PyTorch; int8 keeps the accuracy; the onnx backend.

Fast tests build model directories with random weights in place (a tiny BERT with a head, BiLSTMs):
the float32 export must match PyTorch whatever the weights. The int8 accuracy test (slow) fine-tunes
a tiny random BERT (hidden 64) briefly with config/bert_smoke.json on 600 tweets, as
tests/test_bert.py trains cheaply, and scores both on the shared test split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.data import read_labelled, write_labelled
from textclf.core.errors import ModelError
from textclf.core.loading import load_predictor

sys.path.insert(0, str(Path(__file__).parent))
from conftest import save_tiny_random_bert  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["I love this, best day ever!", "this is awful", "", "ok", "Ünïcödé 🎉 text", "word " * 80,
         "the the the", "?!", "a much longer text about nothing in particular " * 5]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A BERT-family model directory with random weights (tiny encoder, MiniLM tokenizer, random head), no training."""
    import torch

    from textclf.core.meta import write_meta

    out = tmp_path_factory.mktemp("export_bert") / "model"
    save_tiny_random_bert(out / "encoder", hidden_size=64, seed=3)
    torch.manual_seed(3)
    head = torch.nn.Linear(64, 2)
    torch.save({k: v.detach() for k, v in head.state_dict().items()}, out / "head.pt")
    write_meta(out, {"kind": "bert", "labels": ["negative", "positive"],
                     "bert": {"max_length": 40, "pooling": "mean", "dropout": 0.1, "predict_batch_size": 16}})
    return out


@pytest.fixture(scope="module")
def trained_bert_dir(tmp_path_factory, tweets) -> Path:
    """A tiny random BERT fine-tuned with config/bert_smoke.json on 600 tweets (~1 min on 2 quiet cores)."""
    d = tmp_path_factory.mktemp("export_bert")
    write_labelled(d / "train.csv", read_labelled(tweets["train"]).subset(range(600)))
    write_labelled(d / "valid.csv", read_labelled(tweets["valid"]).subset(range(150)))
    encoder = save_tiny_random_bert(d / "tiny", hidden_size=64)
    out = d / "model"
    result = invoke("train", "bert", "--train_path", d / "train.csv", "--valid_path", d / "valid.csv", "--output_dir", out,
                    "--model_name", encoder, "--device", "cpu", "--config", REPO / "config" / "bert_smoke.json",
                    "--set", "model.max_length=32", "--set", "stage1.lr=0.002", "--set", "stage2.lr=0.002",
                    "--set", "train.progress=false")
    assert result.exit_code == 0, result.output
    return out


def accuracy(predictor, ds) -> float:
    return float(np.mean([p == y for p, y in zip(predictor.predict(ds.texts), ds.labels, strict=True)]))


def test_bert_fp32_export_matches_torch(bert_dir, tweets):
    texts = read_labelled(tweets["test"]).texts + TEXTS
    torch_p = load_predictor(bert_dir)
    assert type(torch_p).__name__ == "BertPredictor"
    result = invoke("export", "--model_path", bert_dir, "--format", "onnx", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    info = json.loads((bert_dir / "onnx.json").read_text())
    assert info["opset"] >= 17 and info["default"] == "model.int8.onnx"
    assert set(info["files"]) == {"model.onnx", "model.int8.onnx"} and info["check"]["model.onnx"]["max_abs_diff"] < 1e-4
    fp32 = load_predictor(bert_dir / "model.onnx")
    int8 = load_predictor(bert_dir)  # the directory holds an export: the onnx backend, int8 by default
    assert type(int8).__name__ == "OnnxBertPredictor" and int8.onnx_file.name == "model.int8.onnx"
    assert type(load_predictor(bert_dir, backend="torch")).__name__ == "BertPredictor"
    reference = torch_p.predict_proba(texts)
    assert np.abs(fp32.predict_proba(texts) - reference).max() < 1e-4
    int8_proba = int8.predict_proba(texts)
    assert np.abs(int8_proba - reference).max() < 0.05
    # dynamic int8 activations depend on the batch, so the int8 backend runs one text at a time: same answer in any batch
    assert int8.one_at_a_time and not fp32.one_at_a_time
    np.testing.assert_array_equal(np.vstack([int8.predict_proba([t]) for t in texts[:40]]), int8_proba[:40])


@pytest.mark.slow
def test_bert_int8_keeps_accuracy_of_a_trained_model(trained_bert_dir, tweets):
    bert_dir = trained_bert_dir
    test = read_labelled(tweets["test"])
    torch_p = load_predictor(bert_dir)
    assert type(torch_p).__name__ == "BertPredictor"
    result = invoke("export", "--model_path", bert_dir, "--format", "onnx", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    info = json.loads((bert_dir / "onnx.json").read_text())
    assert info["opset"] >= 17 and info["default"] == "model.int8.onnx" and set(info["files"]) == {"model.onnx",
                                                                                                   "model.int8.onnx"}
    fp32 = load_predictor(bert_dir / "model.onnx")
    int8 = load_predictor(bert_dir)  # the directory holds an export: the onnx backend, int8 by default
    assert type(int8).__name__ == "OnnxBertPredictor" and int8.onnx_file.name == "model.int8.onnx"
    assert type(load_predictor(bert_dir, backend="torch")).__name__ == "BertPredictor"
    texts = test.texts + TEXTS
    diff = np.abs(fp32.predict_proba(texts) - torch_p.predict_proba(texts)).max()
    assert diff < 1e-4, diff
    acc_torch, acc_fp32, acc_int8 = accuracy(torch_p, test), accuracy(fp32, test), accuracy(int8, test)
    print(f"test accuracy: torch {acc_torch:.4f}, onnx fp32 {acc_fp32:.4f}, onnx int8 {acc_int8:.4f}; max |dp| fp32 {diff:.1e}")
    assert acc_fp32 == acc_torch
    assert abs(acc_int8 - acc_fp32) <= 0.005


def test_predict_and_evaluate_take_a_backend(bert_dir, tweets, tmp_path):
    if not (bert_dir / "onnx.json").exists():
        assert invoke("export", "--model_path", bert_dir).exit_code == 0
    outs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.jsonl"
        result = invoke("predict", "--model_path", bert_dir, "--input_path", tweets["test"], "--output_path", out,
                        "--backend", backend)
        assert result.exit_code == 0, result.output
        outs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
        result = invoke("evaluate", "--model_path", bert_dir, "--data_path", tweets["test"], "--backend", backend, "--json")
        assert result.exit_code == 0 and json.loads(result.output)["n"] == 420
    agree = np.mean([a["label"] == b["label"] for a, b in zip(outs["torch"], outs["onnx"], strict=True)])
    assert agree > 0.98


def test_serving_an_exported_model_uses_onnx_and_batches(bert_dir):
    from starlette.testclient import TestClient

    from textclf.services.serving.app import ServeSettings, create_app

    if not (bert_dir / "onnx.json").exists():
        assert invoke("export", "--model_path", bert_dir).exit_code == 0
    predictor = load_predictor(bert_dir)
    with TestClient(create_app(ServeSettings(), predictor=predictor)) as client:
        meta = client.get("/metadata").json()
        answer = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    assert meta["backend"] == "onnx" and meta["serving"]["micro_batching"] is True
    assert [p["label"] for p in answer] == predictor.predict(TEXTS)


# --------------------------------------------------------------------------- BiLSTM


def make_lstm_dir(path: Path, pooling: str, bidirectional: bool, layers: int, seed: int = 0) -> Path:
    """A BiLSTM model directory with random weights (what LSTMPredictor.load reads), no training."""
    import torch

    from textclf.core.meta import write_meta
    from textclf.families.lstm.model import LSTMClassifier, save_model
    from textclf.families.lstm.text import DEFAULT_PATTERN, VOCAB_FILE, Tokenizer, Vocab

    path.mkdir(parents=True)
    vocab = Vocab.build((Tokenizer()(t) for t in TEXTS + ["good bad fine terrible great"]), min_count=1)
    vocab.save(path / VOCAB_FILE)
    torch.manual_seed(seed)
    model = LSTMClassifier(len(vocab), 3, embedding_dim=16, hidden_size=12, num_layers=layers,
                           bidirectional=bidirectional, pooling=pooling)
    save_model(path, model)
    write_meta(path, {"kind": "lstm", "labels": ["neg", "neu", "pos"],
                      "preprocess": {"lowercase": True, "pattern": DEFAULT_PATTERN, "max_length": 64},
                      "config": {"train": {"eval_batch_size": 4}}})
    return path


@pytest.mark.parametrize("pooling,bidirectional,layers", [("max", True, 1), ("mean", True, 2), ("last", True, 1),
                                                          ("last", False, 2)])
def test_lstm_export_is_exact(tmp_path, pooling, bidirectional, layers):
    model = make_lstm_dir(tmp_path / "lstm", pooling, bidirectional, layers)
    result = invoke("export", "--model_path", model, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    texts = TEXTS * 3 + [f"good {'bad ' * i}fine" for i in range(30)]
    torch_p = load_predictor(model, backend="torch")
    onnx_p = load_predictor(model / "model.onnx")
    assert type(onnx_p).__name__ == "OnnxLSTMPredictor"
    np.testing.assert_allclose(onnx_p.predict_proba(texts), torch_p.predict_proba(texts), atol=1e-5, rtol=0)
    assert load_predictor(model).predict(texts[:5]) is not None  # int8 by default


# --------------------------------------------------------------------------- errors


def test_export_and_backend_errors_are_one_line(tmp_path, tweets):
    ft = tmp_path / "ft"
    assert invoke("train", "fasttext", "--train_path", tweets["train"], "--valid_path", tweets["valid"], "--output_dir", ft,
                  "--n_trials", "0", "--set", "model.dim=10", "--set", "model.bucket=10000").exit_code == 0
    result = invoke("export", "--model_path", ft)
    assert result.exit_code == 2 and "fasttext models cannot be exported to ONNX" in result.output
    result = invoke("predict", "--model_path", ft, "--input_path", tweets["test"], "--output_path", tmp_path / "o.txt",
                    "--backend", "onnx")
    assert result.exit_code == 2 and "have no ONNX export" in result.output

    lstm = make_lstm_dir(tmp_path / "lstm", "max", True, 1)
    result = invoke("predict", "--model_path", lstm, "--input_path", tweets["test"], "--output_path", tmp_path / "o.txt",
                    "--backend", "onnx")
    assert result.exit_code == 2 and "no ONNX export" in result.output and "textclf export" in result.output
    assert invoke("export", "--model_path", lstm).exit_code == 0
    onnx_file = lstm / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"model\.onnx: truncated"):
        load_predictor(lstm)
    result = invoke("predict", "--model_path", lstm, "--input_path", tweets["test"], "--output_path", tmp_path / "o.txt")
    assert result.exit_code == 2 and "model.onnx: truncated" in result.output and "Traceback" not in result.output
    assert type(load_predictor(lstm, backend="torch")).__name__ == "LSTMPredictor"


# --------------------------------------------------------------------------- an export belongs to one model


def test_export_follows_the_model_it_was_made_from(tmp_path, tweets):
    """Calibrating keeps the export; retraining into the directory removes it; weights copied in make it stale."""
    from conftest import head_csv

    train, valid = head_csv(tweets["train"], tmp_path / "train.csv", 300), head_csv(tweets["valid"], tmp_path / "valid.csv", 100)
    model = tmp_path / "lstm"

    def train_lstm(out, seed):
        result = invoke("train", "lstm", "--train_path", train, "--valid_path", valid, "--output_dir", out, "--epochs", "1",
                        "--device", "cpu", "--set", f"seed={seed}")
        assert result.exit_code == 0, result.output

    train_lstm(model, 1)
    assert invoke("export", "--model_path", model).exit_code == 0
    info = json.loads((model / "onnx.json").read_text())
    assert info["source_files"] == json.loads((model / "meta.json").read_text())["files"] and "model.pt" in info["source_files"]
    assert invoke("calibrate", "--model_path", model, "--valid_path", valid, "--method", "temperature").exit_code == 0
    assert load_predictor(model).backend == "onnx"  # the calibration file is not part of what was exported

    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(model, copy)
    train_lstm(model, 2)  # a new model in the same directory: the old export goes
    assert not any((model / name).exists() for name in ("onnx.json", "model.onnx", "model.int8.onnx"))
    assert type(load_predictor(model)).__name__ == "LSTMPredictor"

    for name in ("model.pt", "meta.json"):  # the new weights copied over the exported directory: its export is stale
        shutil.copy(model / name, copy / name)
    texts = read_labelled(valid).texts
    np.testing.assert_array_equal(load_predictor(copy).predict_proba(texts), load_predictor(model).predict_proba(texts))
    result = invoke("predict", "--model_path", copy, "--input_path", valid, "--output_path", tmp_path / "o.txt",
                    "--backend", "onnx")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip() == (f"Error: {copy}/onnx.json: the ONNX export is of an earlier model (the weights in "
                                     f"meta.json changed since); run again: textclf export --model_path {copy} --format onnx")

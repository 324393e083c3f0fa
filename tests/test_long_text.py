"""Long documents in the BERT family (``model.long_text: chunk``): windows, pooling, training, prediction, ONNX.

Windows and pooling are checked exactly on hand-built inputs; training runs on the tiny random
BERT of conftest on synthetic texts whose label word sits only at the end, past ``max_length``.
"""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textclf import load_predictor
from textclf.cli import cli
from textclf.core.errors import ConfigError, ModelError
from textclf.core.long_text import (
    LongText,
    chunk_stats,
    document_batches,
    encode_windows,
    long_text_settings,
    pool_rows,
    saved_long_text,
    spread_windows,
)
from textclf.core.torch_common import pool_chunks
from textclf.families.bert.data import encode_chunked, load_tokenizer
from textclf.families.bert.model import BertClassifier, BertPredictor, load_encoder
from textclf.families.common.packaged import default_model_path

MAX_LENGTH = 32
TINY = ["--set", f"model.max_length={MAX_LENGTH}", "--set", "stage2.lr=0.006", "--set", "train.progress=false",
        "--set", "train.patience=0", "--one_stage", "--set", "stage1.epochs=0", "--set", "stage2.epochs=1",
        "--set", "train.batch_size=16", "--set", "model.stride=8", "--seed", "3"]
# Real run of test_chunk_beats_truncate_when_the_cue_is_at_the_end (tiny random BERT, 120 train / 60 valid /
# 90 test synthetic texts of 40 filler words + the label word, max_length 32, stride 8, 6 epochs at lr 0.006):
# test macro-F1 chunk 0.967, truncate 0.322 (the first 32 tokens never hold the cue: chance is 0.33).
CHUNK_F1_FLOOR = 0.85
TRUNCATE_F1_CEILING = 0.5


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_path())


# --------------------------------------------------------------------------- settings


def test_settings_default_to_truncation_and_refuse_bad_values():
    assert long_text_settings({"max_length": 128}) == LongText("truncate", 32, 8, "mean")
    assert long_text_settings({"long_text": "chunk", "stride": 5, "max_chunks": 2, "chunk_pooling": "length"},
                              64) == LongText("chunk", 5, 2, "length")
    cases = [({"long_text": "split"}, "model.long_text: expected one of truncate, chunk, got 'split'"),
             ({"chunk_pooling": "sum"}, "model.chunk_pooling: expected one of mean, max, length, got 'sum'"),
             ({"max_chunks": 0}, "model.max_chunks: expected an integer >= 1, got 0"),
             ({"stride": 40}, "model.stride: expected null or an integer from 0 to max_length // 2 (32), got 40")]
    for block, message in cases:
        with pytest.raises(ConfigError) as exc:
            long_text_settings(block, 64)
        assert str(exc.value) == message
    assert saved_long_text(None, 128) == LongText("truncate", 32, 8, "mean")  # models from before these settings
    with pytest.raises(ModelError, match="meta.json long_text.chunk_pooling"):
        saved_long_text({"mode": "chunk", "pooling": "median"}, 128)


def test_bad_long_text_setting_is_a_one_line_error_before_training(tmp_path):
    data = write_split(tmp_path, "train", 8, 0)
    result = CliRunner().invoke(cli, ["train", "bert", "--train_path", str(data), "--valid_path", str(data),
                                      "--output_dir", str(tmp_path / "m"), "--device", "cpu",
                                      "--set", "model.long_text=chunks"])
    assert result.exit_code == 2
    assert result.output == "Error: model.long_text: expected one of truncate, chunk, got 'chunks'\n"


# --------------------------------------------------------------------------- windows


def test_windows_overlap_by_stride_and_cover_the_text(tokenizer):
    text = " ".join(str(i) for i in range(30))  # 30 one-token numbers
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(full) == 30
    rows, doc = encode_windows(tokenizer, [text, "short text", ""], max_length=12, stride=3)
    assert doc.tolist() == [0, 0, 0, 0, 1, 2]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    content = [r[1:-1] for r in rows[:4]]
    assert all(r[0] == cls and r[-1] == sep and len(r) <= 12 for r in rows)
    # 10 content tokens per window, 7 new ones each: 0-9, 7-16, 14-23, 21-29
    assert [c[0] for c in content] == [full[0], full[7], full[14], full[21]]
    assert all(a[-3:] == b[:3] for a, b in zip(content, content[1:], strict=False))
    assert content[0] + [t for c in content[1:] for t in c[3:]] == full
    assert rows[5] == [cls, sep]


def test_spread_windows_keeps_first_and_last():
    doc = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2])
    assert spread_windows(doc, 3, 3).tolist() == [0, 2, 4, 5, 6, 7, 8]
    assert spread_windows(doc, 3, 2).tolist() == [0, 4, 5, 6, 8]
    assert spread_windows(doc, 3, 1).tolist() == [0, 5, 6]
    assert spread_windows(doc, 3, 8).tolist() == list(range(9))
    stats = chunk_stats(doc, doc[spread_windows(doc, 3, 2)], 3).as_dict()
    assert stats == {"documents": 3, "cut_share": round(2 / 3, 4), "mean_chunks": round(5 / 3, 3),
                     "capped_share": round(2 / 3, 4), "max_chunks_seen": 5}


@pytest.mark.parametrize("pooling, expected", [
    ("mean", [[4.0, 5.0], [10.0, 11.0], [14.0, 15.0]]),
    ("max", [[8.0, 9.0], [10.0, 11.0], [16.0, 17.0]]),
    # weights 1..5 on rows 0..4 of document 0: (0*1 + 2*2 + 4*3 + 6*4 + 8*5) / 15 = 80 / 15
    ("length", [[80 / 15, 95 / 15], [10.0, 11.0], [(12 * 7 + 14 * 8 + 16 * 9) / 24, (13 * 7 + 15 * 8 + 17 * 9) / 24]]),
])
def test_numpy_and_torch_pooling_agree_exactly(pooling, expected):
    values = np.arange(18, dtype=np.float64).reshape(9, 2)
    doc = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2])
    weights = np.arange(1, 10)
    assert np.allclose(pool_rows(values, doc, 3, pooling, weights), expected)
    pooled = pool_chunks(torch.tensor(values), torch.tensor(doc), 3, pooling, torch.tensor(weights))
    assert np.allclose(pooled.numpy(), expected)


def test_document_batches_never_split_a_document():
    batches = document_batches(np.array([3, 1, 8, 2]), np.array([30, 5, 80, 20]), 4)
    assert [b.tolist() for b in batches] == [[1, 3, 0], [2]]
    assert document_batches(np.zeros(0, dtype=int), np.zeros(0), 4) == []


def test_chunked_dataset_batches_windows_of_documents(tokenizer):
    texts = [" ".join(str(i) for i in range(30)), "short text", " ".join(["word"] * 20)]  # 20 tokens: 3 windows
    data = encode_chunked(tokenizer, texts, 12, LongText("chunk", 3, 3, "mean")).with_targets([1, 0, 2])
    assert data.window_counts.tolist() == [3, 1, 3]  # 4 windows of the first text, 3 kept (first, middle, last)
    assert data.stats.as_dict()["capped_share"] == round(1 / 3, 4)
    batch = data.__getitems__([2, 1])
    assert batch["chunk_doc"].tolist() == [0, 0, 0, 1] and batch["index"].tolist() == [2, 1]
    assert batch["targets"].tolist() == [2, 0] and batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"].sum(dim=1).tolist()[-1] == 4  # [CLS] short text [SEP]
    rows = data.training_windows([0, 1])
    assert len(rows) == 4 and rows.targets.tolist() == [1, 1, 1, 0]


# --------------------------------------------------------------------------- the Predictor


def make_predictor(tiny_bert, tmp_path, long_text: LongText, batch_size: int = 3) -> BertPredictor:
    torch.manual_seed(0)
    model = BertClassifier(load_encoder(tiny_bert), 3, 0.0, "mean")
    meta = {"labels": ["a", "b", "c"], "kind": "bert", "bert": {"max_length": 16, "long_text": long_text.as_dict()}}
    return BertPredictor(tmp_path, meta, model, load_tokenizer(tiny_bert), torch.device("cpu"), 16,
                         batch_size=batch_size, long_text=long_text)


@pytest.mark.parametrize("pooling", ["mean", "max", "length"])
def test_predictor_pools_the_windows_logits(tiny_bert, tmp_path, pooling):
    lt = LongText("chunk", 4, 3, pooling)
    predictor = make_predictor(tiny_bert, tmp_path, lt)
    texts = ["the quick brown fox jumps over the lazy dog " * 6, "hello", "one two three four five six seven " * 3, ""]
    logits = predictor.logits(texts)
    rows, doc = encode_windows(predictor.tokenizer, texts, 16, 4)
    kept = spread_windows(doc, len(texts), 3)
    with torch.inference_mode():  # every window alone, pooled by hand
        one = np.stack([predictor.model(torch.tensor([rows[i]]), torch.ones(1, len(rows[i]), dtype=torch.long))[0].numpy()
                        for i in kept])
    expected = pool_rows(one, doc[kept], len(texts), pooling, [len(rows[i]) for i in kept])
    assert np.allclose(logits, expected, atol=1e-5)
    assert np.bincount(doc[kept]).tolist() == [3, 1, 2, 1]  # 54 tokens: 5 windows, 3 kept; 21 tokens: 2
    # line alignment whatever the batching: each text alone gives its own row
    alone = np.concatenate([predictor.logits([t]) for t in texts])
    assert np.allclose(logits, alone, atol=1e-5)


def test_truncate_model_reads_only_the_first_window(tiny_bert, tmp_path):
    predictor = make_predictor(tiny_bert, tmp_path, LongText())
    long = "alpha beta gamma delta " * 20
    assert np.allclose(predictor.logits([long]), predictor.logits([long + " omega" * 30]), atol=1e-6)
    chunked = make_predictor(tiny_bert, tmp_path, LongText("chunk", 4, 8, "mean"))
    assert not np.allclose(chunked.logits([long]), chunked.logits([long + " omega" * 30]), atol=1e-3)


# --------------------------------------------------------------------------- training, prediction, ONNX

FILLER = ("the a of and to in is was for on that with as by at from this it be are or an have which their "
          "people time year city report market group government week public local news system second").split()
CUES = {"sport": "football", "tech": "software", "money": "bank"}


def synthetic_texts(n: int, seed: int, words: int = 70) -> list[tuple[str, str]]:
    """Texts of ``words`` filler words with the label's cue word last (beyond a 32-token window)."""
    rng = random.Random(seed)
    labels = sorted(CUES)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        out.append((" ".join(rng.choices(FILLER, k=words)) + " " + CUES[label], label))
    return out


def write_split(root, name: str, n: int, seed: int, words: int = 70):
    path = root / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(synthetic_texts(n, seed, words))
    return path


@pytest.fixture(scope="module")
def cue_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cue_at_end")
    return {"train": write_split(root, "train", 60, 1), "valid": write_split(root, "valid", 30, 2),
            "test": write_split(root, "test", 30, 3)}


@pytest.fixture(scope="module")
def cue_data_larger(tmp_path_factory):
    root = tmp_path_factory.mktemp("cue_at_end_larger")
    return {"train": write_split(root, "train", 120, 1, 40), "valid": write_split(root, "valid", 60, 2, 40),
            "test": write_split(root, "test", 90, 3, 40)}


def train(data, out, model_name, *extra):
    args = ["train", "bert", "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--test_path", str(data["test"]), "--output_dir", str(out), "--model_name", str(model_name),
            "--device", "cpu", *TINY, *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "meta.json").read_text())


@pytest.fixture(scope="module")
def chunk_run(tmp_path_factory, cue_data, tiny_bert):
    out = tmp_path_factory.mktemp("long_chunk") / "model"
    return out, train(cue_data, out, tiny_bert, "--set", "model.long_text=chunk")


def test_chunk_run_records_settings_and_window_stats(chunk_run):
    _, meta = chunk_run
    block = meta["bert"]["long_text"]
    assert {k: block[k] for k in ("mode", "stride", "max_chunks", "pooling")} == {
        "mode": "chunk", "stride": 8, "max_chunks": 8, "pooling": "mean"}
    assert set(block["splits"]) == {"train", "valid", "test"}
    for name, n in (("train", 60), ("valid", 30), ("test", 30)):
        stats = block["splits"][name]
        assert stats["documents"] == n and stats["cut_share"] == 1.0  # every text is longer than 32 tokens
        assert 2.0 < stats["mean_chunks"] <= 8 and stats["capped_share"] == 0.0
    # training rows are windows: every document's windows, each with its label
    assert meta["training"]["stages"][-1]["train_rows"] == round(60 * block["splits"]["train"]["mean_chunks"])


def test_chunk_predictions_stay_aligned_line_for_line(chunk_run, tmp_path):
    out, _ = chunk_run
    texts = [t for t, _ in synthetic_texts(7, 9)]
    texts.insert(3, "short")
    texts.insert(5, "x " * 300)
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(out), "--input_path", str(inp),
                                      "--output_path", str(tmp_path / "p.txt")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.txt").read_text().splitlines()
    predictor = load_predictor(out)
    assert lines == predictor.predict(texts)
    together = predictor.predict_proba(texts)
    assert len(np.unique(together.round(6), axis=0)) == len(texts)  # every text its own row, so order shows
    assert np.allclose(together, np.concatenate([predictor.predict_proba([t]) for t in texts]), atol=1e-6)


def test_onnx_export_of_a_chunked_model_matches_torch(chunk_run, cue_data):
    from textclf.services.export import export_onnx

    out, _ = chunk_run
    texts = [t for t, _ in synthetic_texts(30, 11)] + ["short", ""]
    info = export_onnx(out, check_texts=texts)
    assert info["check"]["model.onnx"]["max_abs_diff"] < 1e-4
    onnx = load_predictor(out)
    torch_predictor = load_predictor(out, backend="torch")
    assert type(onnx).__name__ == "OnnxBertPredictor" and onnx.long_text.chunk
    assert onnx.predict(texts) == torch_predictor.predict(texts)
    assert np.allclose(onnx.predict_proba(texts), torch_predictor.predict_proba(texts), atol=1e-4)


@pytest.mark.slow  # two trainings of the tiny BERT for 6 epochs (~20 s on 2 busy cores)
def test_chunk_beats_truncate_when_the_cue_is_at_the_end(cue_data_larger, tiny_bert, tmp_path):
    longer = ["--set", "stage2.epochs=6"]
    chunk_meta = train(cue_data_larger, tmp_path / "chunk", tiny_bert, *longer, "--set", "model.long_text=chunk")
    truncate_meta = train(cue_data_larger, tmp_path / "truncate", tiny_bert, *longer)
    chunk_f1 = chunk_meta["metrics"]["test"]["macro_f1"]
    truncate_f1 = truncate_meta["metrics"]["test"]["macro_f1"]
    print(f"test macro-F1: chunk {chunk_f1:.3f}, truncate {truncate_f1:.3f}")
    assert truncate_meta["bert"]["long_text"]["mode"] == "truncate" and "splits" not in truncate_meta["bert"]["long_text"]
    assert chunk_f1 >= CHUNK_F1_FLOOR and truncate_f1 <= TRUNCATE_F1_CEILING


@pytest.mark.slow  # the benchmark trains the tiny BERT twice in subprocesses
def test_bench_long_text_reports_chunk_against_truncate(repo, tiny_bert, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "data" / "cue"
    root.mkdir(parents=True)
    for name, n, seed in (("train", 90, 1), ("valid", 30, 2), ("test", 30, 3)):
        write_split(root, name, n, seed, 40)
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(repo / "benchmarks" / "bench_bert.py"), "--long_text", "--quick", "--datasets", "cue",
           "--data_root", str(tmp_path / "data"), "--model_name", str(tiny_bert), "--threads", "1", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["datasets"]["cue"]["variants"]) == {"default", "chunk"}
    summary = doc["long_text"]["cue"]
    chunk, trunc = doc["datasets"]["cue"]["variants"]["chunk"], doc["datasets"]["cue"]["variants"]["default"]
    assert summary["delta"] == pytest.approx(chunk["test"]["macro_f1"] - trunc["test"]["macro_f1"], abs=2e-4)
    assert summary["train_loop_ratio"] == pytest.approx(chunk["train_loop_s"] / trunc["train_loop_s"], rel=0.02)
    assert summary["test_cut_share"] == 1.0 and summary["test_windows_per_doc"] >= 2
    assert chunk["long_text"]["mode"] == "chunk" and trunc["long_text"]["mode"] == "truncate"
    assert "| cue | 100% |" in doc["table_markdown"] and "predict time ratio" in doc["table_markdown"]

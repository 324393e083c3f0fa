"""Long documents for the sentence encoders (``encoder.long_text: chunk``) and ``textclf stats`` token lengths.

Windows and pooling are checked exactly on hand-built inputs with the shipped MiniLM tokenizer
(a single letter is one WordPiece); the end-to-end runs use a synthetic set whose label cue is the
last sentence of a ~90-token text, read with ``max_length`` 32: truncation sees only filler.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")

import textclf  # noqa: E402
from textclf.cli import cli  # noqa: E402
from textclf.core.data import read_labelled  # noqa: E402
from textclf.core.errors import ConfigError  # noqa: E402
from textclf.core.long_text import encode_windows  # noqa: E402
from textclf.families.common.cache import cache_key, sha256_texts  # noqa: E402
from textclf.families.common.chunking import ChunkSettings, pool, split_windows  # noqa: E402
from textclf.families.common.encoders import SentenceEncoder  # noqa: E402
from textclf.services.token_lengths import default_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import train_family_cli  # noqa: E402

FILLER = ["the committee met on tuesday to review the schedule for next year",
          "several people attended the meeting in the old town hall",
          "the weather was mild and the roads were quiet in the morning",
          "a report on the budget will be published later this month",
          "the new library opened its doors to visitors after the renovation",
          "local residents shared their views about the parking plan",
          "the train arrived a few minutes late because of the works",
          "volunteers cleaned the park and planted trees near the river"]
CUES = {"sport": ["in the final minute the striker scored a goal and the team won the cup",
                  "the tennis champion won the match in straight sets at the stadium",
                  "the coach praised the players after the football victory"],
        "finance": ["shares fell sharply as investors sold stocks on the exchange",
                    "the central bank raised interest rates to fight inflation",
                    "the company reported quarterly profits above market forecasts"]}
# Real runs (embeddings, logreg, max_length 32, MiniLM): truncate test macro-F1 0.549, chunk 1.000.
# SetFit 8 per class, max_length 32: truncate 0.596, chunk 0.925.
CHUNK_FLOOR, TRUNCATE_CEILING = 0.95, 0.75
SETFIT_CHUNK_FLOOR = 0.85


def write_cue_at_end(path: Path, n_per_class: int, seed: int) -> Path:
    """Texts of 5-8 shared filler sentences, then one sentence that gives the label away."""
    rng = random.Random(seed)
    rows = []
    for label, cues in CUES.items():
        for _ in range(n_per_class):
            body = ". ".join(rng.choice(FILLER) for _ in range(rng.randint(5, 8)))
            rows.append((body + ". " + rng.choice(cues) + ".", label))
    rng.shuffle(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cue_data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("cue_at_end")
    return {"train": write_cue_at_end(d / "train.csv", 40, 1), "valid": write_cue_at_end(d / "valid.csv", 20, 2),
            "test": write_cue_at_end(d / "test.csv", 20, 3)}


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


# --------------------------------------------------------------------------- windows and pooling, exactly

def test_windows_overlap_by_stride_and_keep_max_chunks_spread(tokenizer):
    text = "a b c d e f g h i j"  # 10 tokens
    w = split_windows(tokenizer, [text, "", "k l"], 6, ChunkSettings("chunk", stride=1, max_chunks=8))  # 4 text tokens each
    assert w.texts == ["a b c d", "d e f g", "g h i j", "", "k l"]
    assert w.doc.tolist() == [0, 0, 0, 1, 2] and w.lengths.tolist() == [4, 4, 4, 0, 2]
    assert w.stats() == {"documents": 3, "share_over_max_length": 0.3333, "share_cut": 0.0, "mean_chunks": 1.6667,
                         "windows": 5}
    # more windows than max_chunks: the kept ones are spread over the text, the first and the last
    # included (the policy of textclf.core.long_text, as for BERT), so a cue at the end is still read
    cut = split_windows(tokenizer, [text], 6, ChunkSettings("chunk", stride=0, max_chunks=2))
    assert cut.texts == ["a b c d", "i j"] and cut.chunks.max_chunks_seen == 3
    assert cut.stats() == {"documents": 1, "share_over_max_length": 1.0, "share_cut": 1.0, "mean_chunks": 2.0, "windows": 2}
    # the same windows as BERT's token ids (one cutting rule, in textclf.core.long_text)
    rows, doc = encode_windows(tokenizer, [text], 6, 0)
    assert [tokenizer.decode(r[1:-1]) for r in rows] == ["a b c d", "e f g h", "i j"] and doc.tolist() == [0, 0, 0]
    # the window text keeps the original characters between its first and last token
    assert split_windows(tokenizer, ["Hello,  World! x"], 5, ChunkSettings("chunk")).texts == ["Hello,  World", "! x"]
    with pytest.raises(ConfigError) as exc:
        split_windows(tokenizer, [text], 6, ChunkSettings("chunk", stride=4))
    assert str(exc.value) == "encoder.stride 4: must be below the 4 text tokens of a window (max_length 6 less the special tokens)"


def test_pooling_mean_max_length_exactly():
    v = np.array([[1, 0], [3, 2], [5, 5], [0, 0]], dtype=np.float32)
    doc, lengths = np.array([0, 0, 1, 2]), np.array([1, 3, 2, 0])
    np.testing.assert_allclose(pool(v, doc, 3, "mean"), [[2, 1], [5, 5], [0, 0]])
    np.testing.assert_allclose(pool(v, doc, 3, "max"), [[3, 2], [5, 5], [0, 0]])
    np.testing.assert_allclose(pool(v, doc, 3, "length", lengths), [[2.5, 1.5], [5, 5], [0, 0]])
    np.testing.assert_allclose(pool(v, doc, 3, "mean", normalize=True), [[2 / 5 ** 0.5, 1 / 5 ** 0.5], [2 ** -0.5] * 2, [0, 0]],
                               rtol=1e-6)
    # order does not matter: the windows of a document need not be adjacent
    np.testing.assert_allclose(pool(v[[1, 2, 0]], doc[[1, 2, 0]], 3, "mean"), [[2, 1], [5, 5], [0, 0]])


@pytest.mark.parametrize(("block", "message"), [
    ({"long_text": "split"}, "encoder.long_text: expected one of truncate, chunk, got 'split'"),
    ({"chunk_pooling": "sum"}, "encoder.chunk_pooling: expected one of mean, max, length, got 'sum'"),
    ({"chunk_pooling": "auto"},
     "encoder.chunk_pooling: expected one of mean, max, length, got 'auto' (auto, chosen on valid, is the setfit family's)"),
    ({"stride": -1}, "encoder.stride: expected an integer of at least 0, got -1"),
    ({"max_chunks": 0}, "encoder.max_chunks: expected an integer >= 1, got 0"),
])
def test_bad_settings_are_one_line_errors(block, message):
    with pytest.raises(ConfigError) as exc:
        ChunkSettings.from_config(block)
    assert str(exc.value) == message


def test_auto_pooling_is_accepted_where_the_family_chooses_it():
    assert ChunkSettings.from_config({"long_text": "chunk", "chunk_pooling": "AUTO"}, auto=True).pooling == "auto"
    assert ChunkSettings("chunk", 3, 4, "auto").with_pooling("length") == ChunkSettings("chunk", 3, 4, "length")


def test_auto_pooling_pick_needs_more_than_half_a_valid_document():
    from textclf.families.setfit.pooling import pick

    tolerance = 0.5 / 212  # bbc_news valid: 0.00236
    # a real run (bbc_news, SetFit 8/class, seed 15): max "won" by 0.00001, a tie that no valid document made
    assert pick({"mean": 0.94729, "length": 0.94729, "max": 0.9473}, tolerance) == "mean"
    assert pick({"mean": 0.96768, "length": 0.97232, "max": 0.9577}, tolerance) == "length"  # +0.0046: two documents
    assert pick({"mean": 0.96641, "length": 0.96643, "max": 0.97127}, tolerance) == "max"
    assert pick({"mean": 0.90, "length": 0.902, "max": 0.9045}, tolerance) == "max"  # each step a tie, the sum not
    assert pick({"mean": 0.5}, tolerance) == "mean"


def test_setfit_auto_pooling_keeps_the_head_that_scores_best_on_valid(cue_data):
    """``chunk_pooling: auto`` on the untuned MiniLM: one encoding of the windows, a head per pooling, the best kept."""
    from textclf.families.common.encoders import resolve_model_dir
    from textclf.families.setfit.head import LogregHead, valid_score
    from textclf.families.setfit.model import embed_long, load_sentence_model
    from textclf.families.setfit.pooling import CANDIDATES, choose_pooling, pick

    model = load_sentence_model(resolve_model_dir("minilm"), "cpu", 32)
    train, valid = read_labelled(cue_data["train"]), read_labelled(cue_data["valid"])
    codes = {"finance": 0, "sport": 1}
    y_train = np.array([codes[x] for x in train.labels])
    y_valid = np.array([codes[x] for x in valid.labels])
    settings = ChunkSettings("chunk", pooling="auto")
    choice = choose_pooling(model, train.texts, valid.texts, 64, settings, lambda dim: LogregHead(2, seed=0),
                            y_train, y_valid)
    scores = choice.record["scores"]
    assert list(scores) == list(CANDIDATES) == ["mean", "length", "max"] and choice.record["metric"] == "valid_macro_f1"
    best = max(scores.values())
    tolerance = choice.record["tie_tolerance"]
    assert tolerance == round(0.5 / len(valid), 6)
    kept = pick(scores, tolerance)
    assert choice.record["chosen"] == kept and scores[kept] >= best - tolerance
    assert choice.chunking == settings.with_pooling(choice.record["chosen"])
    # the kept rows are what a model pooling that way computes, and the kept head scores what the record says
    np.testing.assert_allclose(choice.x_valid, embed_long(model, valid.texts, 64, choice.chunking)[0], atol=1e-5)
    assert round(valid_score(choice.head, choice.x_valid, y_valid), 5) == scores[kept]
    assert choice.stats_train["documents"] == len(train) and choice.stats_valid["documents"] == len(valid)
    assert scores[kept] >= 0.9, scores  # the cue is in the last window, which every pooling reads; truncation to 32 tokens does not


def test_bad_setting_stops_the_cli_with_exit_2(cue_data, tmp_path):
    from textclf.cli.family_cmd import train_command

    args = ["--train_path", cue_data["train"], "--valid_path", cue_data["valid"], "--output_dir", tmp_path / "m",
            "--no-track", "--set", 'encoder.long_text="split"']
    for family in ("embeddings", "setfit"):
        result = CliRunner().invoke(train_command(family), [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == "Error: encoder.long_text: expected one of truncate, chunk, got 'split'"


# --------------------------------------------------------------------------- cache keys

def test_cache_key_unchanged_for_truncate_and_distinct_for_chunk():
    # the key formula of every cache entry written before long_text existed (value computed by that code)
    assert cache_key("e", "w", "t", 32, "mean", True) == "f3f4e812bf823820d2c475c3f03cbff3c2a3dbee7cfb3436b2ee49084aceb74c"
    texts = ["one text", "another"]
    plain = SentenceEncoder("minilm", max_length=32)
    s = plain.spec()
    old = cache_key(s["encoder"], s["weights"], sha256_texts(texts), s["max_length"], s["pooling"], s["normalize"])
    assert plain.key(texts) == old
    assert SentenceEncoder("minilm", max_length=32, chunking=ChunkSettings("truncate", 5, 3, "max")).key(texts) == old
    keys = {SentenceEncoder("minilm", max_length=32, chunking=c).key(texts) for c in
            (ChunkSettings("chunk"), ChunkSettings("chunk", stride=4), ChunkSettings("chunk", max_chunks=2),
             ChunkSettings("chunk", pooling="max"))}
    assert len(keys) == 4 and old not in keys


def test_sweep_identity_unchanged_for_truncate():
    """A sweep started before the chunk settings existed resumes under truncate; chunk makes it another sweep."""
    import copy

    from textclf.core.config import load_config
    from textclf.families.embeddings.sweep import identity

    cfg = load_config("embeddings")
    before = copy.deepcopy(cfg)
    for key in ("long_text", "stride", "max_chunks", "chunk_pooling"):
        del before["encoder"][key]
    assert identity(cfg, "d") == identity(before, "d")
    assert identity(load_config("embeddings", overrides=['encoder.long_text="chunk"']), "d") != identity(before, "d")


# --------------------------------------------------------------------------- embeddings family end to end

@pytest.fixture(scope="module")
def embeddings_runs(cue_data, tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("emb_long")
    for mode in ("truncate", "chunk"):
        train_family_cli("embeddings", cue_data, out / mode, "--no-track", "--max_length", "32", "--long_text", mode)
    return out


@pytest.mark.slow  # two embeddings trainings with MiniLM (quick: the window unit tests here)
def test_embeddings_chunk_reads_the_end_that_truncation_cuts(embeddings_runs):
    truncate = json.loads((embeddings_runs / "truncate" / "meta.json").read_text())
    chunk = json.loads((embeddings_runs / "chunk" / "meta.json").read_text())
    assert chunk["metrics"]["test"]["macro_f1"] >= CHUNK_FLOOR, chunk["metrics"]["test"]
    assert truncate["metrics"]["test"]["macro_f1"] <= TRUNCATE_CEILING, truncate["metrics"]["test"]
    assert "long_text" not in truncate and truncate["encoder"]["long_text"] == "truncate"
    lt = chunk["long_text"]
    assert {k: lt[k] for k in ("long_text", "stride", "max_chunks", "chunk_pooling", "max_length")} == \
        {"long_text": "chunk", "stride": 0, "max_chunks": 8, "chunk_pooling": "mean", "max_length": 32}
    assert lt["splits"]["train"] == {"documents": 80, "share_over_max_length": 1.0, "share_cut": 0.0, "mean_chunks": 3.55,
                                     "windows": 284}
    assert set(chunk["cache_keys"].values()).isdisjoint(truncate["cache_keys"].values())


@pytest.mark.slow  # uses the two embeddings trainings
def test_embed_command_chunks_like_training_and_hits_its_cache(embeddings_runs, cue_data):
    """``textclf embed --long_text chunk`` stores the vectors a chunked model reads: same key, a cache hit."""
    from textclf.families.embeddings.cli import embed

    chunk = json.loads((embeddings_runs / "chunk" / "meta.json").read_text())
    runner = CliRunner()
    argv = ["--data_path", str(cue_data["train"]), "--device", "cpu", "--max_length", "32"]
    hit = runner.invoke(embed, [*argv, "--long_text", "chunk"], catch_exceptions=False)
    assert hit.exit_code == 0, hit.output
    lines = dict(line.split(" ", 1) for line in hit.stdout.splitlines() if " " in line)
    assert lines["key"] == chunk["cache_keys"]["train"] and lines["cache"] == "hit" and lines["n"] == "80"
    truncated = runner.invoke(embed, argv, catch_exceptions=False)
    assert truncated.exit_code == 0 and lines["key"] not in truncated.output
    bad = runner.invoke(embed, [*argv, "--long_text", "chunk", "--max_chunks", "0"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "encoder.max_chunks" in bad.output, bad.output


@pytest.mark.slow  # uses the two embeddings trainings
def test_embeddings_chunked_model_round_trip(embeddings_runs, cue_data):
    model = embeddings_runs / "chunk"
    meta = json.loads((model / "meta.json").read_text())
    ds = read_labelled(cue_data["test"])
    predictor = textclf.load_predictor(model)
    assert predictor.encoder.chunking == ChunkSettings("chunk")
    pred = predictor.predict(ds.texts)
    assert len(pred) == len(ds.texts)
    assert np.mean([p == t for p, t in zip(pred, ds.labels, strict=True)]) == pytest.approx(meta["metrics"]["test"]["accuracy"])


@pytest.mark.slow  # uses the two embeddings trainings
def test_chunked_models_are_refused_by_onnx_export_in_one_line(embeddings_runs):
    result = CliRunner().invoke(cli, ["export", "--model_path", str(embeddings_runs / "chunk")])
    assert result.exit_code == 2 and "embeddings models cannot be exported to ONNX" in result.output.strip().splitlines()[-1]


# --------------------------------------------------------------------------- setfit end to end

@pytest.mark.slow  # contrastive tuning of MiniLM on 58 windows, then encoding 274 windows: over a minute on 2 busy cores
def test_setfit_chunk_round_trip(cue_data, tmp_path):
    out = tmp_path / "setfit"
    train_family_cli("setfit", cue_data, out, "--no-track", "--per_class", "8", "--max_length", "32",
                     "--long_text", "chunk")  # setfit's default chunk_pooling: auto
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"]["test"]["macro_f1"] >= SETFIT_CHUNK_FLOOR, meta["metrics"]["test"]
    assert meta["encoder"]["long_text"] == "chunk" and meta["long_text"]["contrastive_windows"] == 58
    assert meta["contrastive"]["rows_per_epoch"] == 2 * 2 * 58  # pairs drawn over the windows, each with its text's label
    # auto: the config keeps "auto", the model records the pooling chosen on valid, and prediction pools that way
    choice = meta["long_text"]["pooling_choice"]
    assert meta["config"]["encoder"]["chunk_pooling"] == "auto" and set(choice["scores"]) == {"mean", "length", "max"}
    assert choice["scores"][choice["chosen"]] >= max(choice["scores"].values()) - choice["tie_tolerance"]
    assert meta["encoder"]["chunk_pooling"] == meta["long_text"]["chunk_pooling"] == choice["chosen"]
    assert meta["metrics"]["valid"]["macro_f1"] == pytest.approx(choice["scores"][choice["chosen"]], abs=1e-5)
    ds = read_labelled(cue_data["test"])
    predictor = textclf.load_predictor(out)
    assert predictor.chunking == ChunkSettings("chunk", pooling=choice["chosen"])
    acc = np.mean([p == t for p, t in zip(predictor.predict(ds.texts), ds.labels, strict=True)])
    assert acc == pytest.approx(meta["metrics"]["test"]["accuracy"])


# --------------------------------------------------------------------------- textclf stats

def test_stats_token_lengths_against_each_family(tmp_path):
    path = tmp_path / "lengths.csv"
    with open(path, "w", newline="") as fh:  # "a" is one WordPiece: 1, 62, 63 and 300 tokens
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([(" ".join(["a"] * n), lab) for n, lab in ((1, "x"), (62, "y"), (63, "x"), (300, "y"))])
    result = CliRunner().invoke(cli, ["stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.output)[0]["tokens"]
    assert tokens["tokens"] == 426
    assert tokens["lengths"] == {"mean": 106.5, "p50": 62, "p90": 300, "p95": 300, "p99": 300, "max": 300}
    # a family reads max_length - 2 text tokens ([CLS], [SEP]); embeddings' null max_length is MiniLM's 256
    assert tokens["families"] == {
        "bert": {"max_length": 128, "share_texts_cut": 0.25, "share_tokens_cut": round(174 / 426, 4)},
        "embeddings": {"max_length": 256, "share_texts_cut": 0.25, "share_tokens_cut": round(46 / 426, 4)},
        "lstm": {"max_length": 256, "share_texts_cut": 0.25, "share_tokens_cut": round(46 / 426, 4)},
        "setfit": {"max_length": 64, "share_texts_cut": 0.5, "share_tokens_cut": round(239 / 426, 4)}}
    text = CliRunner().invoke(cli, ["stats", str(path)]).output
    assert "  tokens (all-MiniLM-L6-v2 WordPiece, per text): mean 106.5, p50 62, p90 300, p95 300, p99 300, max 300" in text
    assert "  setfit               64     50.00%      56.10%" in text
    assert "tokens" not in json.loads(CliRunner().invoke(cli, ["stats", str(path), "--json", "--no-tokens"]).output)[0]


def test_valid_score_is_macro_f1_or_micro_f1_on_label_sets():
    """What ``chunk_pooling: auto`` compares: macro-F1 of the argmax, or micro-F1 at the head's threshold for label sets."""
    from sklearn.metrics import f1_score

    from textclf.families.setfit.head import LogregHead, TorchHead, valid_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y_multi = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] + x[:, 3] > 0], axis=1).astype(np.int64)
    head = LogregHead(3, seed=0, multilabel=True).fit(x[:40], y_multi[:40])
    expected = f1_score(y_multi[40:], head.predict_proba(x[40:]) >= 0.5, average="micro", zero_division=0)
    assert valid_score(head, x[40:], y_multi[40:]) == pytest.approx(expected)
    torch_head = TorchHead(4, 3, epochs=3, seed=0, multilabel=True, threshold=0.3).fit(x[:40], y_multi[:40])
    expected = f1_score(y_multi[40:], torch_head.predict_proba(x[40:]) >= 0.3, average="micro", zero_division=0)
    assert valid_score(torch_head, x[40:], y_multi[40:]) == pytest.approx(expected)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)  # 3 classes, unbalanced
    single = LogregHead(3, seed=0).fit(x[:40], y[:40])
    expected = f1_score(y[40:], single.predict_proba(x[40:]).argmax(1), labels=[0, 1, 2], average="macro", zero_division=0)
    assert valid_score(single, x[40:], y[40:]) == pytest.approx(expected)

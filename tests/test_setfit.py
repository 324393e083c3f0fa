"""SetFit family: linear pair sampling, the few-shot sampler, `textclf train setfit`, round-trip, heads, losses.

Real encoder (the shipped all-MiniLM-L6-v2) on real data (tweets_sentiment), few-shot subsets and
short valid/test slices, so the module (without ``-m slow``) runs in about two minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")
pytest.importorskip("sklearn")

import textclf  # noqa: E402
from textclf.cli import cli  # noqa: E402
from textclf.core.config import load_config  # noqa: E402
from textclf.core.data import read_labelled  # noqa: E402
from textclf.core.errors import ConfigError  # noqa: E402
from textclf.core.training import load_splits  # noqa: E402
from textclf.families.common.encoders import resolve_model_dir  # noqa: E402
from textclf.families.setfit.contrastive import LOSSES, loss_name, tune_encoder  # noqa: E402
from textclf.families.setfit.head import TorchHead, load_head, macro_f1, make_head  # noqa: E402
from textclf.families.setfit.model import SetFitPredictor, embed, load_sentence_model  # noqa: E402
from textclf.families.setfit.sampling import few_shot_indices, sample_pairs, sample_texts, sample_triplets  # noqa: E402
from textclf.families.setfit.search import check, space, space_key  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import head_csv, train_family_cli  # noqa: E402

from textclf.cli.family_cmd import train_command  # noqa: E402

N_EVAL = 100  # valid/test rows of the quick runs
# Quick run (8 per class, R=2: 64 pairs, 1 epoch, default head) on the first 100 test rows: macro-F1 0.601
# (valid 0.666); always "positive" scores 0.42.
QUICK_MACRO_F1_FLOOR = 0.55
# 64 per class on the full 420-row splits, defaults: test macro-F1 0.757 (valid 0.754; frozen MiniLM + the same head:
# valid 0.695). Majority class alone: 0.41.
FEW_SHOT_64_MACRO_F1_FLOOR = 0.72


@pytest.fixture(scope="module")
def small(tmp_path_factory, tweets):
    """The full train split (the runs sample a few per class) and the first rows of valid/test."""
    d = tmp_path_factory.mktemp("setfit_data")
    return {"train": tweets["train"], "valid": head_csv(tweets["valid"], d / "valid.csv", N_EVAL),
            "test": head_csv(tweets["test"], d / "test.csv", N_EVAL)}


def train_cli(data, out, *extra):
    return train_family_cli("setfit", data, out, *extra)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("setfit") / "model"
    train_cli(small, out, "--per_class", "8", "--seed", "13")
    return out


@pytest.fixture(scope="module")
def base_model():
    """The shipped MiniLM, max_length 64, on the CPU (tests that tune it take a copy)."""
    return load_sentence_model(resolve_model_dir("minilm"), "cpu", 64)


# --------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("n_texts,n_classes,per_text", [(4, 2, 1), (17, 3, 2), (300, 2, 3), (1000, 50, 2)])
def test_pairs_are_linear_and_labelled(n_texts, n_classes, per_text):
    labels = np.arange(n_texts) % n_classes
    np.random.default_rng(0).shuffle(labels)
    left, right, similar = sample_pairs(labels, per_text, seed=5)
    assert len(left) == len(right) == len(similar) == 2 * per_text * n_texts
    pos, neg = similar == 1.0, similar == 0.0
    assert pos.sum() == neg.sum() == per_text * n_texts
    assert (labels[left[pos]] == labels[right[pos]]).all()
    assert (labels[left[neg]] != labels[right[neg]]).all()
    assert (left[pos] != right[pos]).all()  # every class here has two or more rows: never a text with itself
    assert (np.bincount(left, minlength=n_texts) == 2 * per_text).all()  # each text anchors R positives + R negatives
    again = sample_pairs(labels, per_text, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((left, right, similar), again, strict=True))
    assert not np.array_equal(right, sample_pairs(labels, per_text, seed=6)[1])


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_pair_sampling_with_many_classes_stays_linear_in_memory():
    n, classes, per_text = 100_000, 50, 2
    labels = [f"class{i % classes}" for i in range(2 * n)]
    (left, right, similar), peak = _peak_bytes(lambda: sample_pairs(labels[:n], per_text, seed=1))
    _, peak2 = _peak_bytes(lambda: sample_pairs(labels, per_text, seed=1))
    assert len(left) == 2 * per_text * n
    # a few hundred bytes per text (N² pairs would be 1e10 entries), and twice the texts cost twice the memory
    assert peak < 1000 * n, f"peak {peak / 1e6:.0f} MB for {n} texts"
    assert peak2 < 2.5 * peak, (peak, peak2)
    codes = np.asarray([int(s[5:]) for s in labels[:n]])
    assert (codes[left[similar == 1]] == codes[right[similar == 1]]).all()
    assert (codes[left[similar == 0]] != codes[right[similar == 0]]).all()
    # the negatives are spread over all the other classes
    assert len(np.unique(codes[right[(similar == 0) & (codes[left] == 0)]])) == classes - 1


def test_triplets_texts_and_singleton_classes():
    labels = np.array(["a", "a", "a", "b", "c", "c"])
    anchor, positive, negative = sample_triplets(labels, 3, seed=2)
    assert len(anchor) == 3 * len(labels)
    assert (labels[anchor] == labels[positive]).all() and (labels[anchor] != labels[negative]).all()
    assert (positive[anchor == 3] == 3).all()  # "b" has one row: its positive is itself
    idx = sample_texts(labels, 2, seed=2)
    assert sorted(idx.tolist()) == sorted(list(range(6)) * 2)
    with pytest.raises(ConfigError, match="per_text"):
        sample_pairs(labels, 0)


def test_few_shot_sampler_exact_and_seeded():
    labels = ["a"] * 30 + ["b"] * 5 + ["c"] * 12
    rng = np.random.default_rng(0)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    idx = few_shot_indices(labels, 8, seed=3)
    picked = [labels[i] for i in idx]
    assert {c: picked.count(c) for c in "abc"} == {"a": 8, "b": 5, "c": 8}  # b has only 5: all of them
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert few_shot_indices(labels, 8, seed=3) == idx
    assert few_shot_indices(labels, 8, seed=4) != idx
    assert few_shot_indices(labels, None) == list(range(len(labels)))
    with pytest.raises(ConfigError, match="per_class"):
        few_shot_indices(labels, 0)


# --------------------------------------------------------------------------- config, losses, heads

def test_config_and_loss_names():
    cfg = load_config("setfit", None, ["data.per_class=8"])
    assert cfg["data"]["per_class"] == 8 and cfg["encoder"]["name"] == "minilm" and cfg["loss"] == "cosine"
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["lr"] == 2e-5 and cfg["pairs"]["per_text"] == 2
    assert cfg["search"]["n_trials"] == 0 and cfg["search"]["timeout"] is None  # `textclf train setfit` searches nothing
    assert loss_name("CosineSimilarityLoss") == "cosine" and loss_name("MultipleNegativesRankingLoss") == "mnr"
    with pytest.raises(ConfigError, match="known: cosine, mnr, batch_all_triplet"):
        loss_name("contrastive")


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_tunes_the_encoder(base_model, loss):
    model = copy.deepcopy(base_model)
    texts = ["I love it", "great day!", "so happy today", "best phone ever",
             "I hate it", "awful service", "worst day ever", "so sad and tired"]
    codes = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    cfg = load_config("setfit", None, [f"loss={loss}", "pairs.per_text=1", "train.batch_size=8", "train.warmup=0"])
    before = embed(model, texts)
    stats = tune_encoder(model, texts, codes, cfg, model.device, seed=0)
    rows = {"cosine": 16, "mnr": 8, "batch_all_triplet": 8}[loss]
    assert stats["rows_per_epoch"] == rows and stats["steps"] >= rows // 8 and np.isfinite(stats["final_loss"])
    assert not model.training
    assert not np.allclose(before, embed(model, texts), atol=1e-6)  # the weights moved


@pytest.fixture(scope="module")
def head_data(base_model, tweets):
    """MiniLM vectors of 32 train rows per class and 100 valid rows, with label indices."""
    train, valid = read_labelled(tweets["train"]), read_labelled(tweets["valid"])
    keep = few_shot_indices(train.labels, 32, seed=13)
    labels = train.label_set
    x = embed(base_model, [train.texts[i] for i in keep])
    y = np.array([labels.index(train.labels[i]) for i in keep])
    xv = embed(base_model, valid.texts[:N_EVAL])
    yv = np.array([labels.index(label) for label in valid.labels[:N_EVAL]])
    return x, y, xv, yv


@pytest.mark.parametrize("overrides,layers", [
    (["head.hidden=25", "head.label_smoothing=0.1", "head.dropout=0.5"], ["Linear", "ReLU", "Dropout", "Linear"]),
    (["head.hidden=0"], ["Dropout", "Linear"]),
    (["head.label_smoothing=0"], ["Linear", "ReLU", "Dropout", "Linear"]),
    (["head.hidden=0", "head.dropout=0", "head.label_smoothing=0"], ["Linear"]),
    (["head.type=logreg"], None),
])
def test_head_variants_train_save_and_load(head_data, tmp_path, overrides, layers):
    x, y, xv, yv = head_data
    cfg = load_config("setfit", None, overrides)
    head = make_head(cfg, x.shape[1], 2, seed=13).fit(x, y, xv, yv)
    proba = head.predict_proba(xv)
    assert proba.shape == (len(xv), 2) and np.allclose(proba.sum(axis=1), 1.0)
    f1 = macro_f1(yv, proba.argmax(1), 2)
    # frozen MiniLM, 32 rows per class, these 100 valid rows: macro-F1 0.67-0.71 (torch heads), 0.53 (logreg, C=1);
    # always "positive" scores 0.42
    assert f1 > 0.5, f1
    record = head.describe()
    if layers is not None:
        assert [type(m).__name__ for m in head.module] == layers
        assert record["label_smoothing"] == cfg["head"]["label_smoothing"] and record["hidden"] == cfg["head"]["hidden"]
        f1s = [r["valid_macro_f1"] for r in record["history"]]
        assert len(f1s) == cfg["head"]["epochs"] and f1s[record["best_epoch"] - 1] == max(f1s)  # best epoch kept
    head.save(tmp_path)
    again = load_head(tmp_path, json.loads(json.dumps(record)))
    np.testing.assert_array_equal(again.predict_proba(xv), proba)


def test_head_rejects_bad_settings():
    with pytest.raises(ConfigError, match="head.type"):
        make_head(load_config("setfit", None, ["head.type=svm"]), 8, 2, seed=0)
    with pytest.raises(ConfigError, match="dropout"):
        TorchHead(8, 2, hidden=4, dropout=1.0)


def test_search_space_names_are_setfit_settings():
    """``head_hidden`` -> ``head.hidden`` (sections share key names: ``train.lr`` and ``head.lr``); dotted keys work too."""
    import optuna

    cfg = load_config("setfit", None, [])
    assert [space_key(cfg, n) for n in ("head_hidden", "head_label_smoothing", "pairs_per_text", "train_lr", "loss",
                                         "head.lr")] == ["head.hidden", "head.label_smoothing", "pairs.per_text",
                                                         "train.lr", "loss", "head.lr"]
    with pytest.raises(ConfigError, match=r"^search.space 'data_per_class' is not a setfit setting; valid names: loss, "
                                          r"encoder_name, encoder_max_length, "):
        space_key(cfg, "data_per_class")
    with pytest.raises(ConfigError, match="'head_size' is not a setfit setting"):
        space_key(cfg, "head_size")
    fixed = {"head_type": "logreg", "head_hidden": 0, "head_dropout": 0.1, "head_label_smoothing": 0.0,
             "pairs_per_text": 3, "train_lr": 3e-5}
    assert space(cfg, optuna.trial.FixedTrial(fixed)) == {"head.type": "logreg", "head.hidden": 0, "head.dropout": 0.1,
                                                          "head.label_smoothing": 0.0, "pairs.per_text": 3, "train.lr": 3e-5}


@pytest.mark.parametrize("override,message", [
    ("loss=contrastive", "loss: unknown loss 'contrastive'; known: cosine, mnr, batch_all_triplet"),
    ("head.type=svm", "head.type: unknown head 'svm'; known: torch, logreg"),
    ("pairs.per_text=0", "pairs.per_text: expected at least 1, got 0"),
    ("data.per_class=0", "data.per_class: expected a positive number of examples per class or null, got 0"),
    ("head.epochs=0", "head.epochs: expected an integer of at least 1, got 0"),
    ("head.label_smoothing=1.5", "head.label_smoothing: expected a value in [0, 1), got 1.5"),
    ("train.batch_size=0", "train.batch_size: expected an integer of at least 1, got 0"),
    ("search.space.head_type.choices=[\"torch\",\"svm\"]",
     "search.space 'head_type' value 'svm': head.type: unknown head 'svm'; known: torch, logreg"),
    ("search.space.head_dropout.high=1.0",
     "search.space 'head_dropout' value 1.0: head: hidden must be >= 0 and dropout in [0, 1); got hidden=25, dropout=1.0"),
])
def test_check_refuses_a_bad_setting_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        check(load_config("setfit", None, [override]))
    assert str(info.value) == message


def test_bad_setting_stops_the_cli_before_any_encoder_loads(small, tmp_path, monkeypatch):
    """``textclf train setfit --set loss=...``: exit 2, the one line, no traceback, nothing written, no model loaded."""
    import textclf.families.setfit.train as setfit_train

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the config was checked")

    monkeypatch.setattr(setfit_train, "load_sentence_model", refuse)
    out = tmp_path / "bad"
    args = ["--train_path", small["train"], "--valid_path", small["valid"], "--output_dir", out, "--device", "cpu",
            "--no-track", "--set", "loss=contrastive"]
    result = CliRunner().invoke(train_command("setfit"), [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == \
        "Error: loss: unknown loss 'contrastive'; known: cosine, mnr, batch_all_triplet"
    assert "Traceback" not in result.output and not (out / "meta.json").exists() and not (out / "encoder").exists()


# --------------------------------------------------------------------------- the family end to end

@pytest.mark.slow  # trains SetFit through the CLI (quick: the sampler and head tests here)
def test_train_setfit_cli_writes_model_dir(model_dir):
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["kind"] == "setfit" and meta["labels"] == ["negative", "positive"]
    enc = meta["encoder"]
    assert enc["name"] == "minilm" and enc["dir"] == "encoder" and enc["max_length"] == 64 and enc["dim"] == 384
    assert len(enc["base_weights"]) == 64
    head = meta["head"]
    assert (head["type"], head["hidden"], head["dropout"], head["label_smoothing"]) == ("torch", 25, 0.5, 0.1)
    assert 1 <= head["best_epoch"] <= head["epochs"] and meta["model_file"] == "head.pt"
    assert meta["few_shot"] == {"per_class": 8, "n_train": 16, "n_train_full": 3356}
    c = meta["contrastive"]
    assert c["loss"] == "cosine" and c["rows_per_epoch"] == 2 * 2 * 16 and c["per_text"] == 2 and c["steps"] >= 4
    assert (model_dir / "encoder" / "modules.json").exists() and (model_dir / "head.pt").stat().st_size > 0
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert meta["metrics"]["test"]["macro_f1"] > QUICK_MACRO_F1_FLOOR, meta["metrics"]["test"]
    assert "contrastive step" in (model_dir / "progress.log").read_text()
    assert set(meta["files"]) == {"head.pt", "encoder/model.safetensors"}  # checked before every load
    assert "search" not in meta and meta["best_point"] is None and not (model_dir / "study.journal").exists()
    assert meta["files"]["head.pt"]["bytes"] == (model_dir / "head.pt").stat().st_size


N_ROUND_TRIP = 30  # test rows the quick round trip encodes (the slow test below scores all N_EVAL)


@pytest.mark.slow  # uses the SetFit CLI model
def test_round_trip_identical_probabilities(model_dir, small):
    meta = json.loads((model_dir / "meta.json").read_text())
    texts = read_labelled(small["test"]).texts[:N_ROUND_TRIP]
    p1 = textclf.load_predictor(model_dir)
    assert isinstance(p1, SetFitPredictor) and p1.labels == meta["labels"]
    proba = p1.predict_proba(texts)
    assert proba.shape == (len(texts), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    p2 = textclf.load_predictor(model_dir / "head.pt")
    np.testing.assert_array_equal(proba, p2.predict_proba(texts))
    # rebuilt by hand: the saved encoder + the saved head weights
    import torch

    encoder = load_sentence_model(model_dir / "encoder", "cpu", 64)
    head = TorchHead(384, 2, hidden=25, dropout=0.5)
    head.module.load_state_dict(torch.load(model_dir / "head.pt", weights_only=True))
    np.testing.assert_allclose(head.predict_proba(embed(encoder, texts)), proba, atol=1e-6)
    assert p1.predict_proba([]).shape == (0, 2)


@pytest.mark.slow  # MiniLM encodes the whole test slice again
def test_predictions_on_the_test_slice_match_the_training_time_accuracy(model_dir, small):
    """The training-time predictor scored test with the same vectors: the same accuracy."""
    meta = json.loads((model_dir / "meta.json").read_text())
    ds = read_labelled(small["test"])
    acc = np.mean([p == t for p, t in zip(textclf.load_predictor(model_dir).predict(ds.texts), ds.labels, strict=True)])
    assert acc == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-12)


@pytest.mark.slow  # uses the SetFit CLI model
def test_predict_cli(model_dir, tmp_path):
    inp = tmp_path / "in.txt"
    lines = ["what a wonderful morning", "", "this update broke everything, so annoyed"]
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(model_dir), "--input_path", str(inp),
                                      "--output_path", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(set(r["probabilities"]) == {"negative", "positive"} for r in rows)
    assert [r["label"] for r in rows] == textclf.load_predictor(model_dir).predict(lines)


@pytest.mark.slow  # two SetFit trainings (contrastive MiniLM tuning + head)
def test_train_function_is_deterministic_with_a_seed(tmp_path, small):
    """The family's train flow (core fit -> evaluate -> meta.json) twice, same seed, on the CPU: identical weights
    (hidden-less head, one pair per text)."""
    import torch
    from safetensors.torch import load_file

    from textclf.core.registry import get_family

    train = get_family("setfit").train_fn()
    cfg = load_config("setfit", None, ["data.per_class=4", "pairs.per_text=1", "head.hidden=0", "head.epochs=10",
                                       "device=cpu", "seed=3"])
    splits = load_splits(small["train"], small["valid"], None, cfg["data"])
    splits.valid = splits.valid.subset(range(20))
    runs = [train(cfg, splits, tmp_path / name) for name in ("a", "b")]
    (enc_a, enc_b), (head_a, head_b) = ([load_file(d / "encoder" / "model.safetensors") for d in runs],
                                        [torch.load(d / "head.pt", weights_only=True) for d in runs])
    base = load_file(resolve_model_dir("minilm") / "model.safetensors")
    assert set(enc_a) == set(enc_b) and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    assert any(not torch.equal(enc_a[k], base[k]) for k in base if k in enc_a)  # and the encoder was tuned
    meta = json.loads((runs[0] / "meta.json").read_text())
    assert meta["head"]["hidden"] == 0 and meta["contrastive"]["rows_per_epoch"] == 2 * 1 * 8 and "test" not in meta["metrics"]


@pytest.mark.slow  # three SetFit fits: two trials and the refit
def test_tune_setfit_searches_then_refits_the_best_point(tmp_path, small):
    """``textclf tune setfit --n_trials 2`` on 4 rows per class and 20 valid rows: the core's study, then the refit."""
    import optuna

    from textclf.core.tuning import make_storage

    data = {"train": small["train"], "valid": head_csv(small["valid"], tmp_path / "valid.csv", 20),
            "test": head_csv(small["test"], tmp_path / "test.csv", 20)}
    out = tmp_path / "tuned"
    args = ["--train_path", data["train"], "--valid_path", data["valid"], "--test_path", data["test"], "--output_dir", out,
            "--device", "cpu", "--no-track", "--per_class", "4", "--n_trials", "2", "--set", "head.epochs=5",
            "--set", "encoder.max_length=32", "--set", "search.space.pairs_per_text.high=2"]
    result = CliRunner().invoke(train_command("setfit", tune=True), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    s = meta["search"]
    assert s["states"] == {"COMPLETE": 2} and s["metric"] == "macro_f1" and set(s["best_params"]) == set(
        load_config("setfit", None, [])["search"]["space"])
    study = optuna.load_study(study_name="setfit", storage=make_storage(str(out / "study.journal"), out))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert s["best_value"] == max(t.value for t in study.trials)
    # the refit trained the best point: the head, the pairs and the encoder's learning rate in meta.json are its values
    point = meta["best_point"]
    assert set(point) == {"head.type", "head.hidden", "head.dropout", "head.label_smoothing", "pairs.per_text", "train.lr"}
    assert meta["head"]["type"] == point["head.type"] and meta["contrastive"]["per_text"] == point["pairs.per_text"]
    assert meta["contrastive"]["lr"] == point["train.lr"] and meta["contrastive"]["rows_per_epoch"] == 2 * point["pairs.per_text"] * 8
    if point["head.type"] == "torch":
        assert (meta["head"]["hidden"], meta["head"]["dropout"]) == (point["head.hidden"], point["head.dropout"])
    assert meta["few_shot"] == {"per_class": 4, "n_train": 8, "n_train_full": 3356}
    assert set(meta["files"]) == {meta["model_file"], "encoder/model.safetensors"}  # not the study, plots or progress.log
    assert (out / "trials.csv").read_text().count("COMPLETE") == 2
    p = textclf.load_predictor(out)
    assert p.predict(["what a wonderful day", ""]) and len(p.predict(["a", "b", "c"])) == 3


@pytest.mark.slow
def test_few_shot_64_per_class_metric_floor(tmp_path, tweets):
    """64 labelled tweets per class, default settings, full valid/test splits."""
    out = tmp_path / "m64"
    train_cli(tweets, out, "--per_class", "64", "--seed", "13")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"]["test"]["macro_f1"] > FEW_SHOT_64_MACRO_F1_FLOOR, meta["metrics"]["test"]

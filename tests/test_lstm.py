"""The BiLSTM family: real training on data/tweets_sentiment with a tiny model, TensorBoard, resume, Optuna pruning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textclf.cli import cli
from textclf.cli.family_cmd import train_command
from textclf.core.config import load_config
from textclf.core.data import read_labelled, write_labelled
from textclf.core.errors import ConfigError
from textclf.core.loading import load_predictor
from textclf.core.torch_common import BucketBatchSampler, resolve_device
from textclf.core.training import load_splits
from textclf.core.tuning import make_storage
from textclf.families.lstm import model as lstm
from textclf.families.lstm import search as lstm_search
from textclf.families.lstm import train as lstm_train
from textclf.families.lstm.text import UNK_ID, Tokenizer, Vocab

train_lstm = train_command("lstm")
tune_lstm = train_command("lstm", tune=True)

# A tiny model on one thread: every run here takes seconds on a busy 2-core machine.
TINY = ["--device", "cpu", "--batch_size", "64", "--lr", "0.005", "--set", "model.embedding_dim=32", "--set", "model.hidden_size=32",
        "--set", "train.num_threads=1"]
# Floor from a real run (5 epochs, this config): test macro F0.5 0.773, valid 0.760; the margin absorbs library changes.
F05_FLOOR = 0.70


def invoke(command, args: list[str]):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tweets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lstm") / "model"
    invoke(train_lstm, ["--train_path", tweets["train"], "--valid_path", tweets["valid"], "--test_path", tweets["test"],
                        "--output_dir", out, "--epochs", "5", *TINY])
    return out


@pytest.fixture()
def small_splits(tweets, tmp_path) -> dict[str, Path]:
    """The first 800 training tweets (and the full valid split) as files."""
    train = read_labelled(tweets["train"])
    part = train.subset(range(800))
    path = tmp_path / "train_small.csv"
    write_labelled(path, part)
    return {"train": path, "valid": tweets["valid"]}


def read_meta(model_dir: Path) -> dict:
    return json.loads((model_dir / "meta.json").read_text())


def test_training_reaches_f05_floor(trained):
    meta = read_meta(trained)
    assert meta["kind"] == "lstm"
    assert meta["labels"] == ["negative", "positive"]
    for name in ("model.pt", "vocab.json", "history.json", "metrics.txt", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (trained / name).exists(), name
    assert meta["metrics"]["test"]["macro_f0.5"] >= F05_FLOOR, meta["metrics"]["test"]
    assert meta["metrics"]["valid"]["macro_f0.5"] >= F05_FLOOR
    assert meta["training"]["selection_metric"] == "macro_f0.5"
    assert meta["training"]["device"] == "cpu"


def test_tensorboard_logs_every_metric(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(trained / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/macro_f0.5", "val/macro_f1", "val/accuracy", "val/loss", "train/loss_step", "train/loss_epoch",
            "lr_step", "lr_epoch"} <= tags
    history = json.loads((trained / "history.json").read_text())
    logged = [e.value for e in acc.Scalars("val/macro_f0.5")]
    assert logged == pytest.approx([h["valid_macro_f0.5"] for h in history], abs=1e-6)


def test_best_checkpoint_is_the_best_f05_epoch(trained):
    history = json.loads((trained / "history.json").read_text())
    meta = read_meta(trained)
    scores = [h["valid_macro_f0.5"] for h in history]
    best = int(np.argmax(scores))
    assert meta["training"]["best_epoch"] == history[best]["epoch"]
    assert torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["epoch"] == best
    # the saved model is that epoch's model: re-scoring valid gives the logged score
    assert meta["metrics"]["valid"]["macro_f0.5"] == pytest.approx(scores[best], abs=1e-9)


def test_predictor_round_trip_and_cli(trained, tweets, tmp_path):
    predictor = load_predictor(trained)
    assert type(predictor).__name__ == "LSTMPredictor"
    texts = ["I love this, best day ever", "worst service, I hate it", ""]
    proba = predictor.predict_proba(texts)
    assert proba.shape == (3, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert predictor.predict(texts[:2]) == ["positive", "negative"]
    out = tmp_path / "preds.csv"
    invoke(cli, ["predict", "--model_path", trained, "--input_path", tweets["test"], "--output_path", out])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(read_labelled(tweets["test"]))
    result = invoke(cli, ["evaluate", "--model_path", trained, "--data_path", tweets["test"], "--json"])
    assert json.loads(result.output)["macro_f0.5"] == pytest.approx(read_meta(trained)["metrics"]["test"]["macro_f0.5"])


def test_prediction_runs_on_one_thread_and_restores_the_process_count(trained, monkeypatch):
    """predict.num_threads (default 1, also for models without the key) caps torch's threads while the BiLSTM
    predicts; $TEXTCLF_THREADS (serve --threads) overrides it; the process's own count comes back after."""
    seen = []
    texts = ["I love this, best day ever", "worst service, I hate it"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for env, expected in ((None, 1), ("2", 2)):
            if env is None:
                monkeypatch.delenv("TEXTCLF_THREADS", raising=False)
            else:
                monkeypatch.setenv("TEXTCLF_THREADS", env)
            predictor = load_predictor(trained)
            forward = predictor.model.forward
            monkeypatch.setattr(predictor.model, "forward", lambda *a, f=forward: (seen.append(torch.get_num_threads()), f(*a))[1])
            predictor.predict_proba(texts)
            assert seen[-1] == expected and torch.get_num_threads() == 2
        assert read_meta(trained)["config"]["predict"]["num_threads"] == 1
        assert lstm.predict_threads({}) == 2  # $TEXTCLF_THREADS still set
        monkeypatch.delenv("TEXTCLF_THREADS")
        assert lstm.predict_threads({}) == 1 and lstm.predict_threads({"predict": {"num_threads": 0}}) is None
    finally:
        torch.set_num_threads(before)


def test_padding_does_not_change_predictions(trained, tweets):
    predictor = load_predictor(trained)
    texts = read_labelled(tweets["test"]).texts
    short = "great game tonight!"
    longer = sorted(texts, key=len)[-40:]
    alone = predictor.predict_proba([short])
    for batch in ([short, *longer], [*longer[:20], short, *longer[20:]]):
        batched = predictor.predict_proba(batch)
        assert np.abs(batched[batch.index(short)] - alone[0]).max() < 1e-5
    ids, lengths, _ = lstm.collate([(predictor.encoder([short])[0], 0), (predictor.encoder([longer[-1]])[0], 0)])
    assert lengths[0] < ids.shape[1]  # the short text really was padded


class CrashAt(Exception):
    pass


def crash_callback(epoch: int):
    import lightning as L  # noqa: N812

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise CrashAt(f"simulated crash at the start of epoch {epoch}")

    return Crash()


@pytest.mark.slow  # two BiLSTM trainings (quick: test_training_reaches_f05_floor)
def test_resume_continues_from_the_saved_epoch(small_splits, tmp_path):
    base = ["--train_path", small_splits["train"], "--valid_path", small_splits["valid"], *TINY, "--set", "model.dropout=0.0",
            "--set", "train.patience=0", "--epochs", "4"]
    cfg = load_config("lstm", None, ["train.batch_size=64", "train.lr=0.005", "model.embedding_dim=32", "model.hidden_size=32",
                                     "train.num_threads=1", "model.dropout=0.0", "train.patience=0", "train.epochs=4",
                                     "device=cpu"])
    splits = load_splits(small_splits["train"], small_splits["valid"], None, cfg["data"])
    crashed = tmp_path / "crashed"
    with pytest.raises(CrashAt):
        lstm_train.train_once(cfg, splits, crashed, callbacks=[crash_callback(2)])
    assert not (crashed / "meta.json").exists()
    assert torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1
    before = json.loads((crashed / "history.json").read_text())
    assert [h["epoch"] for h in before] == [0, 1]

    invoke(train_lstm, [*base, "--output_dir", crashed, "--resume"])
    meta = read_meta(crashed)
    assert meta["training"]["resumed_from_epoch"] == 2
    after = json.loads((crashed / "history.json").read_text())
    assert [h["epoch"] for h in after] == [0, 1, 2, 3]
    assert after[:2] == before  # epochs 0-1 were not retrained
    # and the result equals an uninterrupted run (same batches per epoch, optimiser state restored)
    straight = tmp_path / "straight"
    invoke(train_lstm, [*base, "--output_dir", straight])
    ref = json.loads((straight / "history.json").read_text())
    for a, b in zip(after, ref, strict=True):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=1e-5)
        assert a["step"] == b["step"]
    # a checkpoint of another architecture is refused with a one-line error, before any training
    result = CliRunner().invoke(train_lstm, [str(a) for a in [*base, "--output_dir", crashed, "--resume", "--set", "model.hidden_size=16"]])
    assert result.exit_code == 2
    assert "cannot resume" in result.output and "model.hidden_size: 32 -> 16" in result.output


def test_search_prunes_a_bad_trial_and_refits(small_splits, tmp_path):
    import optuna

    out = tmp_path / "tuned"
    space = ["--set", 'search.space.hidden_size.choices=[32]', "--set", 'search.space.embedding_dim.choices=[32]',
             "--set", 'search.space.batch_size.choices=[64]', "--set", "search.space.num_layers.high=1",
             "--set", "search.space.lr.low=1e-7", "--set", "search.space.lr.high=0.02",
             "--set", "search.pruner_startup_trials=1", "--set", "search.pruner_warmup_epochs=0"]
    args = ["--train_path", small_splits["train"], "--valid_path", small_splits["valid"], "--output_dir", out,
            "--epochs", "2", *TINY, *space]
    # a good trial first, then one whose learning rate is far too small to learn anything in an epoch
    journal = out / "study.journal"
    study = optuna.create_study(study_name="lstm", storage=make_storage(str(journal), out), direction="maximize")
    study.enqueue_trial({"lr": 0.01, "dropout": 0.0})
    study.enqueue_trial({"lr": 1e-7, "dropout": 0.0})
    invoke(tune_lstm, [*args, "--n_trials", "2", "--storage", journal])
    study = optuna.load_study(study_name="lstm", storage=make_storage(str(journal), out))
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED"]
    assert study.trials[1].last_step == 0  # stopped after its first epoch
    meta = read_meta(out)
    assert meta["search"]["states"] == {"COMPLETE": 1, "PRUNED": 1}
    assert meta["search"]["best_params"]["lr"] == 0.01
    assert meta["best_point"]["train.lr"] == 0.01 and meta["training"]["best_epoch"] is not None
    assert "PRUNED" in (out / "trials.csv").read_text()


def test_tokenizer_vocab_and_bucket_sampler():
    tok = Tokenizer(lowercase=True)
    assert tok("Don't STOP, now!") == ["don't", "stop", ",", "now", "!"]
    vocab = Vocab.build([["a", "b", "a"], ["a", "c", "b"], ["d"]], min_count=2, max_size=3)
    assert vocab.itos == ["<pad>", "<unk>", "a"]
    assert vocab.encode(["a", "zzz"]) == [2, UNK_ID]
    assert vocab.encode([]) == [UNK_ID]
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6, 10]
    sampler = BucketBatchSampler(lengths, batch_size=3, shuffle=True, seed=1, pool_batches=2)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))
    assert len(first) == len(sampler)
    assert sampler.batches() == first
    sampler.set_epoch(1)
    assert sampler.batches() != first
    sampler.sampler.set_epoch(0)  # the path Lightning takes: batch_sampler.sampler.set_epoch
    assert sampler.epoch == 0 and sampler.batches() == first
    for b in first:
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)


def test_pretrained_vectors_fill_the_embedding(tmp_path):
    vec = tmp_path / "vectors.vec"
    vec.write_text("3 4\ngood 1 2 3 4\nbad -1 -2 -3 -4\nunused 9 9 9 9\n")
    cfg = load_config("lstm", None, ["model.pretrained_vectors=" + str(vec), "model.freeze_embeddings=true"])
    vocab = Vocab(["<pad>", "<unk>", "good", "bad", "meh"])
    model, info = lstm.build_model(cfg, vocab, 2)
    weight = model.embedding.weight
    assert weight.shape == (5, 4)  # the file's dimension wins over model.embedding_dim
    assert weight[2].tolist() == [1, 2, 3, 4] and weight[3].tolist() == [-1, -2, -3, -4]
    assert weight[0].abs().sum() == 0
    assert not weight.requires_grad
    assert info["coverage"] == pytest.approx(2 / 3, abs=1e-3)


def test_config_and_device_errors():
    with pytest.raises(ConfigError, match="cuda:7"):
        resolve_device("cuda:7")
    assert resolve_device("cpu").type == "cpu"
    cfg = load_config("lstm")
    with pytest.raises(ConfigError, match="valid names"):
        lstm_search.apply_params(cfg, {"hiden_size": 3})
    assert lstm_search.apply_params(cfg, {"hidden_size": 16, "lr": 0.1})["model"]["hidden_size"] == 16
    with pytest.raises(ConfigError, match="train.metric"):
        lstm_train.selection_metric(load_config("lstm", None, ["train.metric=macro_f2"]))
    with pytest.raises(ConfigError, match="2 classes"):
        lstm_train.class_weights([1.0], ["a", "b"], ["a", "b"])
    weights = lstm_train.class_weights("balanced", ["a", "b"], ["a", "a", "a", "b"])
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    import optuna

    search = cfg["search"]
    assert isinstance(lstm_search.make_pruner({**search, "pruner": "hyperband"}, 10), optuna.pruners.HyperbandPruner)
    assert isinstance(lstm_search.make_pruner(search, 10), optuna.pruners.MedianPruner)
    with pytest.raises(ConfigError, match="search.pruner"):
        lstm_search.make_pruner({**search, "pruner": "asha"}, 10)


def test_pretrained_fasttext_bin(tmp_path):
    import fasttext

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("__label__a good great fine\n__label__b bad awful poor\n" * 20)
    model = fasttext.train_supervised(str(corpus), dim=8, epoch=1, minCount=1, minn=2, maxn=3, thread=1, verbose=0)
    path = tmp_path / "vectors.bin"
    model.save_model(str(path))
    cfg = load_config("lstm", None, ["model.pretrained_vectors=" + str(path)])
    vocab = Vocab(["<pad>", "<unk>", "good", "unseenword"])
    net, info = lstm.build_model(cfg, vocab, 2)
    assert net.embedding.weight.shape == (4, 8)
    assert np.allclose(net.embedding.weight[2].detach().numpy(), model.get_word_vector("good"))
    assert net.embedding.weight.requires_grad  # trainable unless model.freeze_embeddings
    assert info["coverage"] == 1.0  # subwords give the unseen word a vector too

"""BERT with DistributedDataParallel: 2 gloo processes on the CPU, via ``--devices 2``.

The run must write the same model directory as a 1-process run (rank 0 only), and the
validation metrics gathered across ranks during training must equal a 1-process evaluation
of the saved model on the same validation set.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.data import read_labelled, write_labelled

pytestmark = pytest.mark.slow  # two gloo workers train a tiny BERT: about a minute on 2 cores

MODEL_FILES = {"meta.json", "metrics.txt", "head.pt", "encoder/config.json", "encoder/model.safetensors",
               "encoder/tokenizer.json", "encoder/tokenizer_config.json"}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tweets, tiny_bert):
    root = tmp_path_factory.mktemp("bert_ddp")
    write_labelled(root / "train.csv", read_labelled(tweets["train"]).subset(range(240)))
    write_labelled(root / "valid.csv", read_labelled(tweets["valid"]).subset(range(101)))  # odd: uneven shards
    model = tiny_bert
    out = root / "model"
    args = ["train", "bert", "--train_path", str(root / "train.csv"), "--valid_path", str(root / "valid.csv"),
            "--output_dir", str(out), "--model_name", str(model), "--device", "cpu", "--devices", "2", "--two_stage",
            "--set", "model.max_length=32", "--set", "stage1.lr=0.002", "--set", "stage2.lr=0.002",
            "--set", "stage1.epochs=1", "--set", "stage2.epochs=2", "--set", "train.batch_size=16",
            "--set", "train.eval_batch_size=16", "--set", "train.patience=0", "--set", "train.progress=false"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, out, json.loads((out / "meta.json").read_text())


def test_ddp_run_writes_the_usual_model_directory(ddp_run):
    _, out, meta = ddp_run
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert MODEL_FILES <= files
    assert meta["kind"] == "bert" and meta["training"]["world_size"] == 2
    assert [s["name"] for s in meta["training"]["stages"]] == ["stage1_balanced", "stage2_full"]
    # rank 0 alone writes logs and checkpoints: one TensorBoard event file per loader and stage
    for stage in ("stage1_balanced", "stage2_full"):
        for loader in ("train", "valid"):
            events = list((out / "logs" / stage / "tensorboard" / loader).glob("events.out.tfevents.*"))
            assert len(events) == 1, (stage, loader, events)
        assert {p.name for p in (out / "checkpoints" / stage).iterdir()} == {"best.pth", "last.pth"}
    assert not [f for f in files if f.endswith(".tmp")]
    # the launching process wrote meta.json (the core's flow); the workers' job folder is gone
    assert not (out / ".ddp-launch").exists()
    assert set(meta["files"]) == {f for f in files if f == "head.pt" or f.startswith("encoder/")}


def test_ddp_gathered_metrics_equal_single_process_evaluation(ddp_run):
    root, out, meta = ddp_run
    result = CliRunner().invoke(cli, ["evaluate", "--model_path", str(out), "--data_path", str(root / "valid.csv"), "--json"])
    assert result.exit_code == 0, result.output
    single = json.loads(result.output)
    assert single["n"] == 101
    training = meta["training"]
    stage = next(s for s in training["stages"] if s["name"] == training["selected_stage"])
    gathered = stage["history"][stage["best_epoch"] - 1]["valid"]
    for key in ("accuracy", "macro_f1", "macro_f0.5", "weighted_f1"):
        assert gathered[key] == pytest.approx(single[key], abs=1e-12), key
    assert training["selected_score"] == pytest.approx(single["macro_f1"], abs=1e-12)

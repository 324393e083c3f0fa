"""Multi-label BiLSTM and BERT (issue 24): sigmoid outputs trained with BCE, label sets out, ONNX keeps the sigmoid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from textclf.core.class_weights import pos_weight
from textclf.core.errors import ConfigError
from textclf.core.loading import load_predictor
from textclf.families.bert.losses import FocalBCELoss
from textclf.families.bert.stages import plan_stages

sys.path.insert(0, str(Path(__file__).parent))
from conftest import save_tiny_random_bert, train_family_cli  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "multilabel"
DATA = {part: FIXTURE / f"{part}.jsonl" for part in ("train", "valid", "test")}
# From a real run (this config, 15 epochs, pos_weight balanced, 2 CPU cores): test micro-F1 0.978, samples-F1 0.982.
LSTM_MICRO_F1_FLOOR = 0.90
LSTM_ARGS = ("--epochs", "15", "--batch_size", "16", "--lr", "0.01", "--set", "model.embedding_dim=32",
             "--set", "model.hidden_size=32", "--set", "train.num_threads=1", "--set", "text.min_count=1",
             "--set", "train.pos_weight=balanced", "--set", "train.patience=0")


def texts(part: str = "test") -> list[str]:
    return [json.loads(line)["text"] for line in DATA[part].open(encoding="utf-8")]


def test_pos_weight_balanced_is_negatives_over_positives():
    sets = [("a",), ("a", "b"), (), ("a",)]
    assert pos_weight("balanced", ["a", "b"], sets) == [1 / 3, 3.0]
    assert pos_weight(None, ["a", "b"], sets) is None
    assert pos_weight({"b": 2}, ["a", "b"], sets) == [1.0, 2.0]


def test_focal_bce_with_gamma_0_is_bce_with_pos_weight():
    import torch

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    want = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 0.5]))(logits, targets)
    assert torch.allclose(FocalBCELoss(0.0, [1.0, 2.0, 0.5])(logits, targets), want)
    assert FocalBCELoss(2.0)(logits, targets) < FocalBCELoss(0.0)(logits, targets)  # easy labels weigh less


def test_two_stage_true_is_refused_on_label_sets_and_auto_picks_one_stage():
    cfg = {"two_stage": True, "stage1": {"epochs": 1, "lr": 1e-4, "auto_min_dropped": 0.25, "per_class": None},
           "stage2": {"epochs": 2, "lr": 1e-4}, "seed": 1}
    with pytest.raises(ConfigError, match="two_stage true: stage 1's class-balanced downsample needs one class a text"):
        plan_stages(cfg, [("a",), ("a", "b")], multilabel=True)
    plan = plan_stages({**cfg, "two_stage": "auto"}, [("a",), ("a", "b")], multilabel=True)
    assert not plan.two_stage and plan.stage2_epochs == 3


@pytest.mark.slow
def test_lstm_multilabel_beats_floor_and_onnx_gives_the_same_label_sets(tmp_path):
    from textclf.services.export import export_onnx

    out = tmp_path / "lstm"
    train_family_cli("lstm", DATA, out, *LSTM_ARGS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["training"]["selection_metric"] == "micro_f1"
    assert meta["metrics"]["test"]["micro_f1"] >= LSTM_MICRO_F1_FLOOR
    torch_model = load_predictor(out, backend="torch")
    proba = torch_model.predict_proba(texts())
    assert proba.shape == (150, 5) and not np.allclose(proba.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    predicted = torch_model.predict(texts())
    assert all(isinstance(row, tuple) for row in predicted) and any(len(row) >= 2 for row in predicted)
    info = export_onnx(out)
    assert info["check"]["model.onnx"]["label_agreement"] == 1.0
    onnx_model = load_predictor(out)
    assert onnx_model.backend == "onnx"
    assert onnx_model.predict(texts()) == predicted
    assert np.abs(onnx_model.predict_proba(texts()) - proba).max() < 1e-4


@pytest.mark.slow
def test_bert_multilabel_trains_one_stage_and_predicts_label_sets(tmp_path):
    tiny = save_tiny_random_bert(tmp_path / "tiny")
    out = tmp_path / "bert"
    train_family_cli("bert", DATA, out, "--model_name", str(tiny), "--set", "stage1.epochs=1", "--set", "stage2.epochs=2",
                     "--set", "stage2.lr=0.001", "--set", "model.max_length=32", "--set", "loss.pos_weight=balanced")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"] == "multilabel" and not meta["training"]["stage_plan"]["two_stage"]
    assert meta["metrics"]["test"]["micro_f1"] > 0.2  # a tiny random encoder, 3 epochs: above an empty prediction's 0
    predictor = load_predictor(out, backend="torch")
    proba = predictor.predict_proba(texts()[:20])
    assert proba.shape == (20, 5) and ((proba >= 0) & (proba <= 1)).all()
    assert all(isinstance(row, tuple) for row in predictor.predict(texts()[:20]))

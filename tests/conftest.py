"""Shared fixtures: real data paths, offline hub, small slices of the embedded dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Runs are not recorded in an MLflow store unless a test turns tracking on (--track, TEXTCLF_TRACK=1):
# many tests train twice into the same place, which tracking would skip as a duplicate.
os.environ["TEXTCLF_TRACK"] = "0"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tweets_sentiment"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tweets() -> dict[str, Path]:
    """The embedded default dataset's splits."""
    return {name: DATA / f"{name}.csv" for name in ("train", "valid", "test")}


def save_tiny_random_bert(path: Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT with the shipped MiniLM tokenizer, saved in Hugging Face format (no download)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from textclf.families.bert.model import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden_size // 16), intermediate_size=2 * hidden_size,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return Path(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT for smoke runs: ``--model_name <path>`` trains in seconds."""
    return save_tiny_random_bert(tmp_path_factory.mktemp("tiny_bert") / "model")

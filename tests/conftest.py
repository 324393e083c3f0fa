"""Shared fixtures: real data paths, offline hub, small slices of the embedded dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


def shared_dataset(name: str) -> dict[str, Path]:
    """A dataset from ../shared/data, or skip with a reason when it is absent."""
    d = SHARED_DATA / name
    if not (d / "train.csv").exists():
        pytest.skip(f"shared dataset {d} not found")
    return {split: d / f"{split}.csv" for split in ("train", "valid", "test")}

"""The embeddings search's trial memo: a second identical search fits nothing, any change of input misses.

Real data (tweets_sentiment, cut short), the TF-IDF + SVD encoder (cached like a sentence encoder,
no model weights needed) and real scikit-learn fits.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

import textclf.families.embeddings  # noqa: E402,F401
from textclf.families.embeddings.trial_memo import TrialMemo, trial_key  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import head_csv, train_family_cli  # noqa: E402

SPACE = {"search": {"space": {
    "encoder": {"type": "categorical", "choices": ["tfidf_svd"]},
    "classifier": {"type": "categorical", "choices": ["logreg", "knn", "mlp"]},
    "balance": {"type": "categorical", "choices": [False, True]},
    "logreg.C": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    "knn.n_neighbors": {"type": "int", "low": 3, "high": 20},
    "mlp.hidden_layer_sizes": {"type": "categorical", "choices": [32, 64]}}},
    "tfidf_svd": {"n_components": 32}}


@pytest.fixture(scope="module")
def small(tmp_path_factory, tweets):
    d = tmp_path_factory.mktemp("tweets_memo")
    return {"train": head_csv(tweets["train"], d / "train.csv", 600), "valid": head_csv(tweets["valid"], d / "valid.csv", 120),
            "test": head_csv(tweets["test"], d / "test.csv", 120)}


def _search(data, out, cfg_path, *extra):
    train_family_cli("embeddings", data, out, "--config", str(cfg_path), "--n_trials", "8", "--seed", "5", *extra)
    trials = list(csv.DictReader((out / "trials.csv").open()))
    return json.loads((out / "meta.json").read_text()), trials


@pytest.mark.slow  # two embeddings searches (quick: the memo unit tests in this file)
def test_second_search_loads_every_trial_and_picks_the_same_model(tmp_path, small, cache_dir):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(SPACE))
    memo = TrialMemo(cache_dir)
    assert memo.count()[0] == 0
    first, trials1 = _search(small, tmp_path / "a", cfg)
    stored = memo.count()[0]
    assert 1 <= stored <= 8  # one entry per distinct trial
    assert not any(t.get("user_attrs_memo_hit") == "True" for t in trials1)
    second, trials2 = _search(small, tmp_path / "b", cfg)
    assert [t["value"] for t in trials2] == [t["value"] for t in trials1]
    assert all(t.get("user_attrs_memo_hit") == "True" for t in trials2)
    assert memo.count()[0] == stored
    assert second["search"]["best_params"] == first["search"]["best_params"]
    assert second["metrics"] == first["metrics"]
    # memo off: the same search fits again and scores the same
    third, trials3 = _search(small, tmp_path / "c", cfg, "--set", "search.memo=false")
    assert not any(t.get("user_attrs_memo_hit") == "True" for t in trials3)
    assert [t["value"] for t in trials3] == [t["value"] for t in trials1]


def test_key_changes_with_every_input():
    y = np.array([0, 1, 0, 1])
    keys = {"train": "a" * 64, "valid": "b" * 64}
    base = trial_key(keys, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, False, 3)
    variants = [
        trial_key({**keys, "train": "c" * 64}, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, False, 3),
        trial_key({**keys, "valid": "c" * 64}, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, False, 3),
        trial_key(keys, ["pos", "neg"], y, None, "logreg", {"C": 1.0}, False, 3),
        trial_key(keys, ["neg", "pos"], y[::-1], None, "logreg", {"C": 1.0}, False, 3),
        trial_key(keys, ["neg", "pos"], y, np.array([0, 1]), "logreg", {"C": 1.0}, False, 3),
        trial_key(keys, ["neg", "pos"], y, None, "knn", {"C": 1.0}, False, 3),
        trial_key(keys, ["neg", "pos"], y, None, "logreg", {"C": 2.0}, False, 3),
        trial_key(keys, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, True, 3),
        trial_key(keys, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, False, 4),
    ]
    assert base == trial_key(keys, ["neg", "pos"], y, None, "logreg", {"C": 1.0}, False, 3)
    assert len({base, *variants}) == len(variants) + 1


def test_memo_rejects_wrong_shape_and_clears(tmp_path):
    memo = TrialMemo(tmp_path)
    memo.save("f" * 64, np.full((3, 2), 0.5))
    assert memo.load("f" * 64, (3, 2)).tolist() == [[0.5, 0.5]] * 3
    assert memo.load("f" * 64, (4, 2)) is None and memo.load("e" * 64, (3, 2)) is None
    assert memo.clear() == 1 and memo.count() == (0, 0)

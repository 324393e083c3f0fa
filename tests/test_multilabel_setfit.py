"""SetFit on label sets (issue 24): pairs by shared/disjoint labels, few-shot per label, sigmoid and one-vs-rest heads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.families.setfit.contrastive import epoch_rows
from textclf.families.setfit.head import LogregHead, TorchHead, load_head
from textclf.families.setfit.sampling import few_shot_indices, sample_pairs, sample_triplets

sys.path.insert(0, str(Path(__file__).parent))
from test_multilabel_families import DATA, check_model  # noqa: E402

# test micro-F1 of a real run with the settings below (threshold 0.5, no tuning): 0.867; the floor sits below.
SETFIT_FLOOR = 0.83
TINY = ("--set", "data.per_class=16", "--set", "pairs.per_text=1", "--set", "encoder.max_length=32",
        "--set", "head.epochs=30", "--set", "device=cpu")


def indicator(seed: int = 0, n: int = 60, k: int = 4) -> np.ndarray:
    y = (np.random.default_rng(seed).random((n, k)) < 0.3).astype(np.int64)
    y[:3] = 0  # texts without a label
    return y


def test_pairs_of_label_sets_share_a_label_or_are_disjoint():
    y = indicator()
    left, right, similar = sample_pairs(y, 2, seed=1)
    share = (y[left] & y[right]).any(axis=1)
    both_empty = ~y[left].any(axis=1) & ~y[right].any(axis=1)
    positive = similar == 1.0
    assert positive.sum() == 2 * len(y)  # per_text positives a text (itself when nobody shares its label)
    assert 0 < (~positive).sum() <= 2 * len(y)
    assert (share | both_empty)[positive].all()
    assert not share[~positive].any() and not both_empty[~positive].any()
    assert (left[positive] != right[positive]).mean() > 0.95
    anchor, pos, neg = sample_triplets(y, 1, seed=1)
    assert not (y[anchor] & y[neg]).any(axis=1).any()
    assert ((y[anchor] & y[pos]).any(axis=1) | ~y[anchor].any(axis=1)).all()
    again = sample_pairs(y, 2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, (left, right, similar), strict=True))


def test_batch_all_triplet_is_refused_on_label_sets():
    from textclf.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^loss: batch_all_triplet needs one class a text"):
        epoch_rows("batch_all_triplet", indicator(), 1, seed=0)


def test_few_shot_keeps_n_texts_per_label():
    sets = [tuple(str(j) for j in np.flatnonzero(row)) for row in indicator(n=200)]
    keep = few_shot_indices(sets, 5, seed=3)
    assert keep == sorted(keep) and len(keep) < len(sets)
    for label in ["0", "1", "2", "3", ""]:
        carried = [i for i in keep if (label in sets[i]) or (not label and not sets[i])]
        assert len(carried) >= 5, label
    assert few_shot_indices(sets, 5, seed=3) == keep


@pytest.mark.parametrize("kind", ["torch", "logreg"])
def test_multilabel_heads_learn_and_round_trip(kind, tmp_path):
    rng = np.random.default_rng(0)
    y = indicator(n=300, k=3)
    centers = rng.normal(size=(3, 16))
    x = (y @ centers + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    if kind == "torch":
        head = TorchHead(16, 3, hidden=0, epochs=40, lr=0.05, multilabel=True, pos_weight=[1.0, 2.0, 1.0])
    else:
        head = LogregHead(3, multilabel=True)
    head.fit(x[:200], y[:200], x[200:], y[200:])
    proba = head.predict_proba(x[200:])
    assert proba.shape == (100, 3) and not np.allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0.5) == y[200:].astype(bool)).mean() > 0.95
    if kind == "torch":
        assert head.best_epoch is not None and "valid_micro_f1" in head.history[0]
    head.save(tmp_path)
    again = load_head(tmp_path, json.loads(json.dumps(head.describe())))
    np.testing.assert_allclose(again.predict_proba(x[200:]), proba)


@pytest.mark.slow  # contrastive tuning + MiniLM embedding of the fixture (~70 s on 2 busy CPU cores)
def test_setfit_trains_on_label_sets(tmp_path, cache_dir):
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "setfit", *TINY, *DATA, "--output_dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["head"]["multilabel"] is True and "valid_micro_f1" in meta["head"]["history"][0]
    assert meta["few_shot"]["n_train"] < meta["few_shot"]["n_train_full"]
    check_model(meta, out, tmp_path, SETFIT_FLOOR)


def test_setfit_refuses_batch_all_triplet_on_label_sets(tmp_path):
    result = CliRunner().invoke(cli, ["train", "setfit", "--loss", "batch_all_triplet", *DATA, "--output_dir",
                                      str(tmp_path / "m")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: loss: batch_all_triplet needs one class a text")

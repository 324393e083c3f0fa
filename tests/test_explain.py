"""``textclf explain``: attributions point at a planted cue word, for occlusion, the exact linear method and IG.

Synthetic data: texts of random filler words; the label is ``cue`` when the word ``zzcue`` is in
the text, else ``plain``. A model that learned the task can only be right through that word, so
the top-1 attributed token of a ``cue`` text must be it.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.loading import load_predictor
from textclf.services.explain import explain_texts, format_terminal, html_snippet

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO  # noqa: E402

CUE = "zzcue"
TFIDF_PLUGIN = str(REPO / "examples" / "plugins" / "tfidf_logreg.py")


def planted_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` texts of 6-10 filler words; half get ``zzcue`` at a random place (label ``cue``), half not (``plain``)."""
    rng = random.Random(seed)
    filler = [f"w{i:03d}" for i in range(120)]
    rows = []
    for i in range(n):
        tokens = rng.choices(filler, k=rng.randint(6, 10))
        if i % 2 == 0:
            tokens.insert(rng.randrange(len(tokens) + 1), CUE)
        rows.append((" ".join(tokens), "cue" if i % 2 == 0 else "plain"))
    return rows


def write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    return {"train": write_csv(root / "train.csv", planted_rows(600, 1)),
            "valid": write_csv(root / "valid.csv", planted_rows(100, 2)),
            "test": write_csv(root / "test.csv", planted_rows(100, 3)),
            "root": root}


@pytest.fixture(scope="module")
def fasttext_model(planted) -> Path:
    out = planted["root"] / "ft"
    return _train("fasttext", planted, out, "--set", "search.n_trials=0", "--set", "model.bucket=100000")


def _train(family: str, data: dict, out: Path, *extra: str) -> Path:
    args = ["train", family, "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--test_path", str(data["test"]), "--output_dir", str(out), *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def cue_texts(planted) -> list[str]:
    return [text for text, label in planted_rows(40, 7) if label == "cue"]


def assert_cue_on_top(model: Path, texts: list[str], method: str) -> None:
    predictor = load_predictor(model)
    explanations = explain_texts(predictor, texts, label="cue")
    assert {e.attribution.method for e in explanations} == {method}
    for e in explanations:
        assert e.tokens[e.top(1)[0]] == CUE, (e.text, list(zip(e.tokens, e.scores, strict=True)))
        assert e.scores[e.tokens.index(CUE)] > 0


def test_fasttext_occlusion_points_at_the_cue(planted, fasttext_model):
    assert_cue_on_top(fasttext_model, cue_texts(planted), "occlusion")

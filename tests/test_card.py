"""MODEL_CARD.md: written by every training from meta.json, kept in step with it, served at /card.

A real small fastText run on the tweets data supplies the card; its numbers are checked against
the data files, meta.json and the model's own predictions.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.card import CARD_FILE, USER_SECTIONS, render_card, user_sections
from textclf.core.loading import load_predictor
from textclf.core.meta import read_meta

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ServeProcess  # noqa: E402


@pytest.fixture()
def model(ft_model, tmp_path) -> Path:
    """A private copy of the trained model (tests here edit the card and meta.json)."""
    return Path(shutil.copytree(ft_model, tmp_path / "model"))


def section(card: str, heading: str) -> str:
    """The text of one ``## heading`` section of a card."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", card, re.S | re.M)
    assert found, f"no section {heading!r} in the card"
    return found.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in ``text``, cells stripped."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if not all(set(c) <= {"-"} for c in r)]


def test_training_writes_a_card_with_data_metrics_and_weak_spots(ft_model, tweets):
    card = (ft_model / CARD_FILE).read_text()
    meta = read_meta(ft_model)
    assert card.startswith("# Model card: model (fasttext)")
    # data: every split's label distribution, counted from the files themselves
    data = section(card, "Data")
    for split in ("train", "valid", "test"):
        with open(tweets[split], newline="", encoding="utf-8") as fh:
            counts = Counter(row["label"] for row in csv.DictReader(fh))
        assert meta["data_stats"][split]["labels"] == dict(sorted(counts.items()))
        assert meta["data_stats"][split]["rows"] == sum(counts.values())
        assert meta["data_stats"][split]["sha256"] in data
    rows = {r[0]: r[1:] for r in table_rows(data)}
    assert rows["negative"][0].startswith(f"{meta['data_stats']['train']['labels']['negative']} (")
    assert rows["positive"][2].startswith(f"{meta['data_stats']['test']['labels']['positive']} (")

    # metrics: the point scores of meta.json with a bootstrap interval around them, close to the
    # leaderboard's interval computed on the model's real test predictions
    from textclf.core.bootstrap import bootstrap_ci

    metrics = {r[0].split()[0]: r for r in table_rows(section(card, "Metrics"))[1:]}
    assert set(metrics) == {"valid", "test"}
    for split in ("valid", "test"):
        acc, f1 = (re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups() for cell in metrics[split][2:4])
        assert float(acc[0]) == pytest.approx(meta["metrics"][split]["accuracy"], abs=1e-4)
        assert float(f1[0]) == pytest.approx(meta["metrics"][split]["macro_f1"], abs=1e-4)
        for point, low, high in (map(float, acc), map(float, f1)):
            assert low < point < high and high - low < 0.2
    texts, gold = [], []
    with open(tweets["test"], newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            gold.append(row["label"])
    pred = load_predictor(ft_model).predict(texts)
    low, high = bootstrap_ci(gold, pred, meta["labels"])
    card_low, card_high = map(float, re.search(r"\[([\d.]+), ([\d.]+)\]", metrics["test"][3]).groups())
    assert card_low == pytest.approx(low, abs=0.02) and card_high == pytest.approx(high, abs=0.02)

    # weak spots on test: the lowest-F1 class first, the most-confused pair with its count
    weak = section(card, "Weak spots")
    per_class = meta["metrics"]["test"]["per_class"]
    worst = min(per_class, key=lambda c: per_class[c]["f1"])
    tables = table_rows(weak)
    assert tables[1][0] == worst
    matrix, labels = meta["metrics"]["test"]["confusion_matrix"], meta["metrics"]["test"]["labels"]
    n, i, j = max((matrix[i][j], i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j)
    assert f"| {labels[i]} | {labels[j]} | {n} |" in weak
    # cost, versions, calibration, thresholds, and the user sections with their placeholders
    assert re.search(r"- final fit: [\d.]+ s", section(card, "Training cost"))
    assert f"| fasttext-community | {meta['versions']['fasttext-community']} |" in card
    assert "Not calibrated" in section(card, "Calibration")
    assert "None tuned" in section(card, "Decision thresholds")
    assert user_sections(card) == {name: placeholder for name, (_, placeholder) in USER_SECTIONS.items()}
    # the card is not a model file: meta.json does not record it, and the model loads after it changes
    assert CARD_FILE not in meta["files"]


def test_user_sections_survive_textclf_card_and_meta_rewrites(model, tweets):
    card = model / CARD_FILE
    mine = "Sentiment of English tweets for a triage queue.\n\nNot for medical or legal text | nor for moderation."
    text = card.read_text().replace(USER_SECTIONS["intended-use"][1], mine)
    text = text.replace(USER_SECTIONS["limitations"][1], "Sarcasm is read literally.")
    card.write_text(text + "\nnotes outside the markers are not kept\n")

    result = CliRunner().invoke(cli, ["card", str(model)])
    assert result.exit_code == 0, result.output
    assert user_sections(card.read_text()) == {"intended-use": mine, "limitations": "Sarcasm is read literally."}
    assert "outside the markers" not in card.read_text()

    # tuning thresholds rewrites meta.json: the card follows (offsets shown) and keeps the user's text
    result = CliRunner().invoke(cli, ["tune-thresholds", "--model_path", str(model), "--valid_path", str(tweets["valid"]),
                                      "--cv", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = read_meta(model)
    thresholds = section(card.read_text(), "Decision thresholds")
    assert "None tuned" not in thresholds
    for label, offset in meta["thresholds"]["offsets"].items():
        assert f"{label}: {offset:.4f}" in thresholds
    assert user_sections(card.read_text())["intended-use"] == mine
    # editing the card never breaks loading (it is not in the integrity block)
    assert load_predictor(model).predict(["what a lovely day"])[0] in meta["labels"]


def test_card_renders_a_calibration_block_when_meta_has_one(model):
    meta = read_meta(model)
    meta["calibration"] = {"method": "temperature", "ece": {"before": 0.081, "after": 0.021}}
    text = section(render_card(meta, model), "Calibration")
    assert "- method: temperature" in text and "- before: 0.0810" in text and "- after: 0.0210" in text


def test_card_command_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["card", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.output.strip() == f"Error: {tmp_path / 'nope'}: model directory not found"
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["card", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no meta.json" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["fasttext", "tfidf_logreg", "lstm", "ensemble"])
def test_models_of_older_versions_get_a_card_and_still_load(repo, tmp_path, name):
    v1 = Path(shutil.copytree(repo / "tests" / "fixtures" / "v1_models", tmp_path / "v1"))
    result = CliRunner().invoke(cli, ["card", str(v1 / name)])
    assert result.exit_code == 0, result.output
    card = (v1 / name / CARD_FILE).read_text()
    meta = read_meta(v1 / name)
    assert f"({meta['kind']})" in card.splitlines()[0]
    for heading in ("Data", "Metrics", "Weak spots", "Training cost", "Intended use", "Limitations"):
        section(card, heading)
    assert "not recorded" in section(card, "Training cost")
    assert load_predictor(v1 / name, trust_code=name in ("tfidf_logreg", "ensemble")).predict(["good"])


def test_multilabel_card_counts_label_sets_and_notes_tuned_thresholds(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "multilabel"
    out = tmp_path / "ml"
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(fixture / "train.jsonl"), "--valid_path",
                                      str(fixture / "valid.jsonl"), "--test_path", str(fixture / "test.jsonl"),
                                      "--output_dir", str(out), "--set", "model.bucket=20000", "--set", "search.n_trials=0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    card = (out / CARD_FILE).read_text()
    # texts carrying each label, per split, counted from the JSONL files
    rows = {r[0]: r[1:] for r in table_rows(section(card, "Data"))[1:]}
    for k, split in enumerate(("train", "valid", "test")):
        lines = (fixture / f"{split}.jsonl").read_text().splitlines()
        counts = Counter(label for line in lines for label in json.loads(line)["labels"])
        assert {label: int(cells[k].split()[0]) for label, cells in rows.items()} == dict(counts)
    # point scores as meta.json holds them
    metrics = {r[0]: r for r in table_rows(section(card, "Metrics"))}
    assert metrics["split"][2:4] == ["micro_f1", "macro_f1"]
    assert float(metrics["test"][2]) == pytest.approx(meta["metrics"]["test"]["micro_f1"], abs=1e-4)
    # tuned label thresholds: shown, with the note that the metrics above predate them
    result = CliRunner().invoke(cli, ["tune-thresholds", "--model_path", str(out), "--valid_path", str(fixture / "valid.jsonl"),
                                      "--beta", "1", "--cv", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    th = read_meta(out)["thresholds"]
    text = section((out / CARD_FILE).read_text(), "Decision thresholds")
    assert f"- global: {th['global']:.4f}" in text
    assert f"the valid micro_f1 is {th['valid_after']:.4f} (before: {th['valid_before']:.4f})" in text


def test_serve_card_needs_the_key(model):
    card = (model / CARD_FILE).read_text()
    server = ServeProcess(model, env={"TEXTCLF_API_KEY": "s3cret"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.get("/card")
            assert r.status_code == 401 and r.json() == {"detail": "missing or wrong API key"}
            assert client.get("/card", headers={"Authorization": "Bearer wrong"}).status_code == 401
            r = client.get("/card", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.headers["content-type"] == "text/markdown; charset=utf-8"
            assert r.text == card
    finally:
        assert server.stop() in (0, -15, 143)


def test_serve_card_without_a_key_and_for_a_model_without_a_card(model):
    from starlette.testclient import TestClient

    from textclf.services.serving.app import ServeSettings, create_app

    (model / CARD_FILE).unlink()  # a model trained before cards: rendered from meta.json, nothing written
    with TestClient(create_app(ServeSettings(), predictor=load_predictor(model), api_key="")) as client:
        r = client.get("/card")
    assert r.status_code == 200 and r.text == render_card(read_meta(model), model)
    assert not (model / CARD_FILE).exists()
    assert json.loads((model / "meta.json").read_text())["kind"] == "fasttext"


def test_large_splits_draw_the_same_bootstrap_by_confusion_cell(monkeypatch):
    import numpy as np

    import textclf.core.bootstrap as bootstrap

    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    matrix = rng.multinomial(8000, rng.dirichlet(np.ones(16))).reshape(4, 4).tolist()
    by_row = bootstrap.confusion_ci(matrix, labels)  # 8,000 rows: scipy over the rebuilt rows
    monkeypatch.setattr(bootstrap, "SCIPY_MAX_ROWS", 0)
    by_cell = bootstrap.confusion_ci(matrix, labels)  # multinomial counts over the 16 cells
    for key in ("accuracy", "macro_f1"):
        assert by_cell[key] == pytest.approx(by_row[key], abs=0.004)
        assert by_row[key][1] - by_row[key][0] > 0.01


def test_an_ensemble_gets_a_card_too(ft_model, model, tweets, tmp_path):
    out = tmp_path / "ens"
    result = CliRunner().invoke(cli, ["ensemble", "--model_path", str(ft_model), "--model_path", str(model), "--valid_path",
                                      str(tweets["valid"]), "--test_path", str(tweets["test"]), "--output_dir", str(out),
                                      "--method", "weighted"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    card = (out / CARD_FILE).read_text()
    assert card.startswith("# Model card: ens (ensemble)")
    assert "- ensemble (weighted) of: `model` (fasttext, weight" in card
    test_row = next(r for r in table_rows(section(card, "Metrics")) if r[0].startswith("test"))
    assert test_row[3].startswith(f"{meta['metrics']['test']['macro_f1']:.4f} [")

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


@pytest.fixture(scope="module")
def tfidf_model(planted) -> Path:
    return _train_code(TFIDF_PLUGIN, "tfidf_logreg", planted, planted["root"] / "tfidf")


def _train_code(code: str, family: str, data: dict, out: Path) -> Path:
    args = ["train", "--code", code, family, "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--test_path", str(data["test"]), "--output_dir", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_linear_model_exact_contributions_point_at_the_cue(planted, tfidf_model):
    assert_cue_on_top(tfidf_model, cue_texts(planted), "linear (coefficient x feature value)")


def test_linear_contributions_add_up_to_the_logit(planted, tfidf_model):
    """Exact: the word scores sum to the decision function minus the intercept (binary: toward classes_[1])."""
    import numpy as np

    predictor = load_predictor(tfidf_model)
    texts = [text for text, _ in planted_rows(10, 11)]
    pipeline = predictor.pipeline
    second = str(pipeline.classes_[1])
    explanations = explain_texts(predictor, texts, label=second)
    logits = pipeline.decision_function(texts) - pipeline.named_steps["logreg"].intercept_[0]
    assert np.allclose([sum(e.scores) for e in explanations], logits, atol=1e-9)
    against = explain_texts(predictor, texts, label=str(pipeline.classes_[0]))
    assert np.allclose([sum(e.scores) for e in against], -logits, atol=1e-9)


@pytest.mark.slow
def test_bilstm_integrated_gradients_point_at_the_cue(planted):
    model = _train("lstm", planted, planted["root"] / "lstm", "--device", "cpu", "--set", "search.n_trials=0",
                   "--epochs", "6", "--set", "model.hidden_size=32", "--set", "model.embedding_dim=32")
    assert_cue_on_top(model, cue_texts(planted), "integrated gradients (captum)")
    # completeness: the attributions add up to p(target | text) - p(target | all padding)
    predictor = load_predictor(model)
    e = explain_texts(predictor, [cue_texts(planted)[0]], label="cue")[0]
    import torch

    with torch.no_grad():
        pad = torch.softmax(predictor.model(torch.zeros((1, len(e.tokens)), dtype=torch.long),
                                            torch.tensor([len(e.tokens)])), dim=1)[0, predictor.labels.index("cue")]
    assert abs(sum(e.scores) - (e.probability - float(pad))) < 0.02


def test_occlusion_can_be_asked_for_and_explains_any_label(planted, tfidf_model):
    predictor = load_predictor(tfidf_model)
    text = cue_texts(planted)[0]
    toward, against = (explain_texts(predictor, [text], label=lab, method="occlusion")[0] for lab in ("cue", "plain"))
    assert toward.attribution.method == against.attribution.method == "occlusion"
    assert toward.tokens[toward.top(1)[0]] == CUE
    assert against.scores[against.tokens.index(CUE)] < 0  # the cue pushes away from "plain"
    assert toward.predicted == against.predicted == "cue" and against.label == "plain"


def test_cli_text_prints_plain_tokens_and_writes_html(fasttext_model, tmp_path):
    page = tmp_path / "e.html"
    result = CliRunner().invoke(cli, ["explain", "--model_path", str(fasttext_model), "--text", f"w001 {CUE} w002 w003",
                                      "--text", "", "--html", str(page)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cue (p=") and "occlusion" in lines[0]
    assert lines[1] == f"w001 {CUE} w002 w003"  # not a terminal: no ANSI codes
    assert lines[2].startswith(f"top: {CUE} +")
    assert "\x1b[" not in result.stdout
    html = page.read_text()
    assert html.count('class="textclf-explanation"') == 2 and f">{CUE}</span>" in html
    assert "http" not in html  # self-contained


def test_cli_colours_on_request(fasttext_model):
    result = CliRunner().invoke(cli, ["explain", "--model_path", str(fasttext_model), "--text", f"w001 {CUE} w002",
                                      "--color"], catch_exceptions=False, color=True)
    assert result.exit_code == 0, result.output
    import click

    assert result.stdout.splitlines()[1].split(" ")[1] == click.style(CUE, fg="green", bold=True)  # the strongest: bold green


def test_cli_input_path_jsonl_is_aligned_line_for_line(fasttext_model, tmp_path):
    src = tmp_path / "texts.txt"
    texts = [f"w010 {CUE} w011", "", "w012 w013", f"{CUE}"]
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["explain", "--model_path", str(fasttext_model), "--input_path", str(src),
                                      "--output_path", str(out), "--label", "cue"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["tokens"] for r in rows] == [t.split() for t in texts]
    assert all(len(r["tokens"]) == len(r["attributions"]) and r["label"] == "cue" for r in rows)
    assert rows[0]["tokens"][max(range(3), key=rows[0]["attributions"].__getitem__)] == CUE
    assert set(rows[0]) == {"text", "label", "predicted", "probability", "method", "tokens", "attributions"}


@pytest.mark.parametrize(("args", "message"), [
    (["--label", "nope", "--text", "w001"], "Error: --label 'nope' is not a label of this model; labels: "),
    ([], "Error: give --text TEXT or --input_path FILE"),
    (["--text", "a", "--input_path", "x.txt"], "Error: give --text (repeatable) or --input_path, not both"),
    (["--input_path", "x.txt"], "Error: --input_path needs --output_path"),
    (["--input_path", "missing.txt", "--output_path", "o.jsonl"], "Error: missing.txt: file not found"),
])
def test_cli_bad_input_is_one_line_exit_2(fasttext_model, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["explain", "--model_path", str(fasttext_model), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_empty_input_file_is_refused_and_nothing_written(fasttext_model, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["explain", "--model_path", str(fasttext_model), "--input_path", str(src),
                                      "--output_path", str(out)])
    assert result.exit_code == 2 and "file is empty" in result.output
    assert not out.exists()


def test_terminal_and_html_render_every_token(fasttext_model):
    e = explain_texts(load_predictor(fasttext_model), [f"a<b {CUE} c"])[0]
    plain = format_terminal(e, color=False)
    assert plain.splitlines()[1] == f"a<b {CUE} c"
    snippet = html_snippet(e)
    assert "a&lt;b" in snippet and snippet.count("<span") == 3


def test_serve_explain_needs_the_same_key_as_predict(fasttext_model):
    from starlette.testclient import TestClient

    from textclf.services.serving.app import ServeSettings, create_app

    app = create_app(ServeSettings(), predictor=load_predictor(fasttext_model), api_key="s3cret")
    body = {"texts": [f"w001 {CUE} w002", "w003 w004"]}
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/explain", json=body).status_code == 401
        assert c.post("/explain", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/explain", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
        rows = ok.json()["explanations"]
        assert [r["text"] for r in rows] == body["texts"]
        assert rows[0]["label"] == "cue" and rows[0]["tokens"][rows[0]["attributions"].index(max(rows[0]["attributions"]))] == CUE
        other = c.post("/explain", json={**body, "label": "plain"}, headers={"X-API-Key": "s3cret"}).json()["explanations"]
        assert {r["label"] for r in other} == {"plain"}
        bad = c.post("/explain", json={**body, "label": "nope"}, headers={"X-API-Key": "s3cret"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("label 'nope' is not a label of this model")
        unknown = c.post("/explain", json={"text": ["x"]}, headers={"X-API-Key": "s3cret"})
        assert unknown.status_code == 422 and unknown.json()["detail"] == "unknown field 'text'; fields: texts, label"
        assert c.post("/explain", json={"texts": "x"}, headers={"X-API-Key": "s3cret"}).status_code == 422


def test_report_explanations_section_shows_in_a_real_browser(fasttext_model, planted, tmp_path, browser_page):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--model_path", str(fasttext_model), "--data_path", str(planted["test"]),
                                      "--out_dir", str(out), "--explain", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = browser_page.page
    page.goto((out / "report.html").as_uri())
    assert page.locator("h2", has_text="Explanations (first 3 texts)").count() == 1
    blocks = page.locator("div.textclf-explanation")
    assert blocks.count() == 3
    first = next(text for text, _ in planted_rows(3, 3))
    assert blocks.nth(0).locator("span").all_inner_texts() == first.split()
    cue = page.locator("div.textclf-explanation span", has_text=CUE).first  # the cue is the greenest token
    assert cue.evaluate("e => getComputedStyle(e).backgroundColor").startswith("rgba(0, 150, 60")
    assert browser_page.external == [] and browser_page.broken_images() == []


@pytest.mark.slow
def test_tiny_bert_integrated_gradients_point_at_the_cue(planted, tiny_bert):
    model = _train("bert", planted, planted["root"] / "bert", "--model_name", str(tiny_bert), "--device", "cpu",
                   "--one_stage", "--set", "stage2.epochs=4", "--set", "model.max_length=32", "--set", "stage1.lr=0.003",
                   "--set", "stage2.lr=0.003", "--set", "train.progress=false", "--set", "train.patience=0")
    assert_cue_on_top(model, cue_texts(planted), "integrated gradients (captum)")
    e = explain_texts(load_predictor(model), ["w001, w002 zzcue!"], label="cue")[0]
    assert e.tokens == ["w001", ",", "w002", "zzcue", "!"]  # words as written, word pieces summed


@pytest.mark.slow
def test_setfit_integrated_gradients_point_at_the_cue(planted):
    model = _train("setfit", planted, planted["root"] / "setfit", "--device", "cpu", "--per_class", "16", "--seed", "13")
    assert_cue_on_top(model, cue_texts(planted)[:8], "integrated gradients (captum)")


def test_linear_contributions_of_a_three_class_model_add_up(tmp_path):
    """Multinomial: toward class c the scores sum to (w_c - mean_k w_k) . x; n-grams and repeated words included."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from textclf.core.linear_attribution import explain_pipeline
    from textclf.core.sklearn_model import SklearnPredictor

    rng = random.Random(5)
    cues = {"red": "zzred", "green": "zzgreen", "blue": "zzblue"}
    texts, labels = [], []
    for i in range(150):
        label = list(cues)[i % 3]
        words = rng.choices([f"w{k}" for k in range(40)], k=6) + [cues[label]]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    pipeline = Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2))), ("logreg", LogisticRegression(C=10))])
    pipeline.fit(texts, labels)

    class Three(SklearnPredictor):
        kind = "three"

    predictor = Three.from_pipeline(pipeline, tmp_path, ["blue", "green", "red"])
    probe = ["w1 zzgreen w2 w1 w1!", "Zzred, w3", ""]
    for target in range(3):
        got = explain_pipeline(predictor, probe, [target] * len(probe))
        column = list(pipeline.classes_).index(predictor.labels[target])
        coef = pipeline.named_steps["logreg"].coef_
        expected = pipeline.named_steps["tfidf"].transform(probe) @ (coef[column] - coef.mean(axis=0))
        assert np.allclose([sum(a.scores) for a in got], expected, atol=1e-9)
    top = explain_pipeline(predictor, probe[:1], [predictor.labels.index("green")])[0]
    assert top.tokens[int(np.argmax(top.scores))] == "zzgreen" and top.tokens == probe[0].split()

"""Comparing and combining models: leaderboard, report, ensembles, decision thresholds.

Models are small real ones: fastText and the TF-IDF plug-in family trained on the embedded
tweets_sentiment split (imbalanced: about 30 % negative), each in seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.config import load_config
from textclf.core.data import Dataset, read_labelled, write_labelled
from textclf.core.loading import load_predictor
from textclf.core.metrics import classification_metrics
from textclf.core.registry import get_family, load_code
from textclf.core.training import load_splits
from textclf.services.compare.thresholds import decide, log_proba, macro_fbeta, tune_offsets
from textclf.services.runs import fit_family as train_family

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "plugins" / "tfidf_logreg.py"
SMALL_FT = ["search.n_trials=0", "model.epoch=10", "model.dim=25", "model.bucket=200000"]


def train(family: str, paths: dict, out: Path, overrides: list[str]) -> Path:
    """Train ``family`` through the registry (no CLI, no experiment store)."""
    cfg = load_config(family, overrides=overrides)
    splits = load_splits(paths["train"], paths["valid"], paths.get("test"), cfg["data"])
    train_family(get_family(family), cfg, splits, str(out), False)
    return out


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory, tweets) -> dict[str, Path]:
    """fastText with a 2-trial search, fastText with char n-grams, TF-IDF + logreg, and fastText on other data."""
    root = tmp_path_factory.mktemp("compare")
    load_code(PLUGIN)
    out = {
        "ft_search": train("fasttext", tweets, root / "ft_search", ["search.n_trials=2", "model.bucket=200000"]),
        "ft_char": train("fasttext", tweets, root / "ft_char", [*SMALL_FT, "model.minn=2", "model.maxn=4", "model.lr=0.3"]),
        "tfidf": train("tfidf_logreg", tweets, root / "tfidf", []),
    }
    subset = root / "train_subset.csv"
    write_labelled(subset, read_labelled(tweets["train"]).subset(range(1500)))
    out["ft_other"] = train("fasttext", {**tweets, "train": subset}, root / "ft_other", SMALL_FT)
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- leaderboard
def test_leaderboard_refuses_mismatched_data_and_rescores_with_data_path(models, tweets):
    a, b = models["ft_search"], models["ft_other"]
    ha = json.loads((a / "meta.json").read_text())["data_sha256"]
    hb = json.loads((b / "meta.json").read_text())["data_sha256"]
    assert ha != hb
    result = invoke("leaderboard", a, b)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"Error: the model directories were trained on different data: {a} ({ha[:12]}), {b} ({hb[:12]}); "
        "pass --data_path FILE to rescore them all on one labelled file")
    assert "Traceback" not in result.output

    result = invoke("leaderboard", a, b, "--data_path", tweets["test"], "--json", "--n_boot", "200")
    assert result.exit_code == 0, result.output
    board = json.loads(result.stdout)
    assert board["rescored"] and board["n"] == 420 and len(board["rows"]) == 2
    assert [r["macro_f1"] for r in board["rows"]] == sorted((r["macro_f1"] for r in board["rows"]), reverse=True)
    test = read_labelled(tweets["test"])
    for row in board["rows"]:
        low, high = row["macro_f1_ci95"]
        assert 0 < low <= row["macro_f1"] <= high < 1
        assert row["docs_per_s"] > 0 and row["size_mb"] > 0
        assert 20 < row["load_rss_mb"] < 4000  # measured in the model's own fresh process
        p = load_predictor(row["model_dir"])
        m = classification_metrics(test.labels, p.predict(test.texts), p.labels)
        assert row["accuracy"] == pytest.approx(m["accuracy"]) and row["macro_f1"] == pytest.approx(m["macro_f1"])


def test_leaderboard_same_data_markdown_and_html_chart(models, tmp_path):
    dirs = [models["ft_search"], models["ft_char"], models["tfidf"]]
    page = tmp_path / "board.html"
    result = invoke("leaderboard", *dirs, "--html", page, "--no-isolate", "--n_boot", "100")
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and "macro-F1" in table[0]
    assert {"ft_search", "ft_char", "tfidf"} == {line.split("|")[2].strip() for line in table[1:]}
    text = page.read_text()
    assert text.count("<tr>") == 4 and "data:image/png;base64," in text
    assert page.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_bootstrap_ci_is_scipys_percentile_bootstrap_of_sklearns_macro_f1(tweets):
    from scipy.stats import bootstrap
    from sklearn.metrics import f1_score

    from textclf.services.compare.leaderboard import bootstrap_ci

    y_true = read_labelled(tweets["test"]).labels
    labels = sorted(set(y_true))
    rng = np.random.default_rng(0)
    y_pred = [t if rng.random() < 0.8 else str(rng.choice([*labels, "unknown"])) for t in y_true]
    t = np.array([labels.index(v) for v in y_true])
    p = np.array([labels.index(v) if v in labels else -1 for v in y_pred])  # an unknown prediction: a miss of its row

    def macro_f1(a, b):
        return f1_score(a, b, average="macro", labels=[0, 1], zero_division=0)

    expected = bootstrap((t, p), macro_f1, n_resamples=300, paired=True, vectorized=False, confidence_level=0.9,
                         method="percentile", rng=np.random.default_rng(5)).confidence_interval
    low, high = bootstrap_ci(y_true, y_pred, labels, n_boot=300, seed=5, level=0.9)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert low < macro_f1(t, p) < high
    assert bootstrap_ci(y_true, y_pred, labels, n_boot=300, seed=5, level=0.9) == (low, high)
    assert bootstrap_ci(y_true, y_pred, labels, n_boot=300, seed=6, level=0.9) != (low, high)
    assert bootstrap_ci(y_true[:1], y_true[:1], labels) == (0.5, 0.5)  # one row: every resample is that row
    assert all(np.isnan(bootstrap_ci(y_true, y_pred, labels, n_boot=0)))


# --------------------------------------------------------------------------- report
class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def _images(page: Path) -> list[str]:
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.src


def test_pr_curve_is_sklearns_from_the_top_score_down(tweets):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    from textclf.services.compare.report import pr_curve

    y = np.array(read_labelled(tweets["test"]).labels) == "negative"
    rng = np.random.default_rng(3)
    scores = np.round(np.clip(0.3 * y + rng.random(len(y)), 0, 1), 2)  # ties: several documents per threshold
    precision, recall, ap = pr_curve(y, scores)
    sk_precision, sk_recall, _ = precision_recall_curve(y, scores)
    np.testing.assert_array_equal(precision, sk_precision[::-1])
    np.testing.assert_array_equal(recall, sk_recall[::-1])
    assert (precision[0], recall[0], recall[-1], precision[-1]) == (1.0, 0.0, 1.0, y.mean())
    assert ap == average_precision_score(y, scores) == pytest.approx(float(np.sum(np.diff(recall) * precision[1:])))
    assert 0.4 < ap < 0.9
    empty_p, empty_r, empty_ap = pr_curve(np.zeros(5, dtype=bool), np.linspace(0, 1, 5))
    assert empty_p.tolist() == [1.0] and empty_r.tolist() == [0.0] and np.isnan(empty_ap)


def test_report_writes_every_figure_and_references_it(models, tweets, tmp_path):
    model = copy_model(models["ft_search"], tmp_path / "model")
    # an lstm-style per-epoch history, so the learning curves are drawn too
    history = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "valid_loss": 0.65 - 0.08 * e, "valid_macro_f1": 0.6 + 0.05 * e,
                "valid_accuracy": 0.7 + 0.04 * e, "train_time_s": 1.0} for e in range(4)]
    (model / "history.json").write_text(json.dumps(history))
    # a test file whose first row is surely misclassified and carries HTML
    test = read_labelled(tweets["test"])
    p = load_predictor(model)
    evil = "<script>alert('x')</script> & <b>bold</b>"
    wrong = "negative" if p.predict([evil])[0] == "positive" else "positive"
    data = tmp_path / "test.csv"
    write_labelled(data, Dataset([evil, *test.texts], [wrong, *test.labels]))

    out = tmp_path / "report"
    result = invoke("report", "--model_path", model, "--data_path", data, "--out_dir", out, "--top_errors", "1000")
    assert result.exit_code == 0, result.output
    expected = {"confusion_matrix.png", "per_class_metrics.png", "pr_curves.png", "reliability.png", "learning_curves.png",
                "optuna_history.png"}
    src = _images(out / "report.html")
    assert set(src) == expected and len(src) == len(expected)
    for name in expected:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    doc = json.loads((out / "report.json").read_text())
    assert any(e["text"] == evil and e["true"] == wrong for e in doc["worst_errors"])
    assert len(doc["worst_errors"]) == doc["errors"] and page.count("<tr>") >= doc["errors"]
    assert doc["n"] == 421 and set(doc["figures"]) == {n[:-4] for n in expected}


def test_report_skips_missing_history_and_search_with_a_note(models, tweets, tmp_path):
    out = tmp_path / "report"
    (out).mkdir()
    (out / "optuna_history.png").write_bytes(b"stale")  # left by an earlier report: removed
    result = invoke("report", "--model_path", models["ft_char"], "--data_path", tweets["test"], "--out_dir", out)
    assert result.exit_code == 0, result.output
    assert set(_images(out / "report.html")) == {"confusion_matrix.png", "per_class_metrics.png", "pr_curves.png",
                                                 "reliability.png"}
    assert not (out / "optuna_history.png").exists()
    page = (out / "report.html").read_text()
    assert page.count("Skipped:") == 2 and "no Optuna search" in page


def test_bert_stage_history_is_read_from_meta(tmp_path):
    from textclf.services.compare.report import history_rows

    meta = {"training": {"stages": [
        {"name": "balanced", "history": [{"epoch": 1, "train": {"loss": 0.6}, "valid": {"loss": 0.5, "macro_f1": 0.7}}]},
        {"name": "full", "history": [{"epoch": 1, "train": {"loss": 0.4}, "valid": {"loss": 0.45, "macro_f1": 0.8}},
                                     {"epoch": 2, "train": {"loss": 0.3}, "valid": {"loss": 0.44, "macro_f1": 0.82}}]}]}}
    rows, stages, source = history_rows(tmp_path, meta)
    assert len(rows) == 3 and stages == [(0, "balanced"), (1, "full")] and "stages" in source
    assert rows[2] == {"epoch": 2.0, "train_loss": 0.3, "valid_loss": 0.44, "valid_macro_f1": 0.82}


# --------------------------------------------------------------------------- ensembles
@pytest.mark.slow  # builds and reloads an ensemble (quick: test_stacking_ensemble)
def test_weighted_ensemble_round_trips_and_averages_its_members(models, tweets, tmp_path):
    out = tmp_path / "ens"
    members = [models["ft_search"], models["tfidf"]]
    result = invoke("ensemble", "--model_path", members[0], "--model_path", members[1], "--valid_path", tweets["valid"],
                    "--test_path", tweets["test"], "--output_dir", out, "--method", "weighted", "--bags", "0")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    t0, t1 = (r["temperature"][0] for r in meta["members"])
    assert (f"| {meta['members'][0]['path']} | fasttext | {meta['weights'][0]:.2f} | {t0:.2f} | "
            f"{meta['members'][0]['valid_score_alone']:.4f} |") in result.output
    assert meta["kind"] == "ensemble" and meta["method"] == "weighted" and meta["labels"] == ["negative", "positive"]
    for record, member in zip(meta["members"], members, strict=True):  # referenced by relative path
        assert not Path(record["path"]).is_absolute() and (out / record["path"]).resolve() == member.resolve()
    weights = np.array(meta["weights"])
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
    search = meta["ensemble_search"]
    assert search["score"] >= max(search["single"])  # single members are grid points
    assert meta["metrics"]["valid"]["macro_f1"] == pytest.approx(search["score"])

    ens = load_predictor(out)
    assert type(ens).__name__ == "EnsemblePredictor" and ens.kind == "ensemble"
    texts = read_labelled(tweets["test"]).texts
    # every member is scaled by its own temperature, fitted on valid, before the average
    temps = [r["temperature"] for r in meta["members"]]
    assert search["member_temperatures"] == temps and all(len(t) == 1 and 0.02 < t[0] < 55 for t in temps)
    assert meta["config"]["member_calibration"] == "temperature"
    raw = [load_predictor(m).predict_proba(texts) for m in members]
    parts = []
    for p, (t,) in zip(raw, temps, strict=True):
        z = np.log(np.clip(p, 1e-7, None)) / t
        parts.append(np.exp(z - z.max(axis=1, keepdims=True)) / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
        assert (parts[-1].argmax(axis=1) == p.argmax(axis=1)).all()  # a temperature keeps the member's decisions
    expected = np.zeros_like(parts[0])
    for w, p in zip(weights, parts, strict=True):
        if w:
            expected += w * p
    np.testing.assert_allclose(ens.predict_proba(texts), expected, atol=1e-12)
    assert ens.predict(texts) == [ens.labels[i] for i in expected.argmax(axis=1)]

    plain = tmp_path / "plain"  # --member_calibration none: the members' probabilities as they are
    result = invoke("ensemble", "--model_path", members[0], "--model_path", members[1], "--valid_path", tweets["valid"],
                    "--output_dir", plain, "--method", "weighted", "--bags", "0", "--member_calibration", "none")
    assert result.exit_code == 0, result.output
    plain_meta = json.loads((plain / "meta.json").read_text())
    assert [r["temperature"] for r in plain_meta["members"]] == [None, None]
    np.testing.assert_array_equal(load_predictor(plain).predict_proba(texts),
                                  sum(w * p for w, p in zip(plain_meta["weights"], raw, strict=True) if w))

    pred = tmp_path / "pred.txt"
    assert invoke("predict", "--model_path", out, "--input_path", tweets["test"], "--output_path", pred).exit_code == 0
    assert pred.read_text().splitlines() == ens.predict(texts)
    result = invoke("evaluate", "--model_path", out, "--data_path", tweets["test"], "--json")
    assert json.loads(result.stdout)["macro_f1"] == pytest.approx(meta["metrics"]["test"]["macro_f1"])


@pytest.mark.slow  # copies an ensemble and predicts (quick: test_stacking_ensemble)
def test_copied_ensemble_moves_as_one_directory(models, tweets, tmp_path):
    out = tmp_path / "built" / "ens"
    result = invoke("ensemble", "--model_path", models["ft_char"], "--model_path", models["tfidf"], "--valid_path",
                    tweets["valid"], "--output_dir", out, "--copy", "--step", "0.1", "--method", "weighted")
    assert result.exit_code == 0, result.output
    texts = read_labelled(tweets["valid"]).texts[:50]
    before = load_predictor(out).predict_proba(texts)
    moved = shutil.move(str(out), str(tmp_path / "elsewhere"))
    meta = json.loads((Path(moved) / "meta.json").read_text())
    assert [m["path"] for m in meta["members"]] == ["members/0_ft_char", "members/1_tfidf"]
    np.testing.assert_array_equal(load_predictor(moved).predict_proba(texts), before)


def test_stacking_ensemble(models, tweets, tmp_path):
    out = tmp_path / "stack"
    result = invoke("ensemble", "--model_path", models["ft_search"], "--model_path", models["ft_char"], "--model_path",
                    models["tfidf"], "--valid_path", tweets["valid"], "--output_dir", out, "--method", "stacking", "--cv", "3")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "stacking" and meta["weights"] is None and (out / "stacker.skops").is_file()
    # the stacker learns each member's scale itself: no member temperatures
    assert [r["temperature"] for r in meta["members"]] == [None, None, None]
    s = meta["ensemble_search"]
    assert s["cv_folds"] == 3 and 0.5 < s["cv_score"] <= 1 and s["features"] == 6 and set(s["params"]) == {"C", "class_weight"}
    ens = load_predictor(out)
    test = read_labelled(tweets["test"])
    proba = ens.predict_proba(test.texts)
    assert proba.shape == (420, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    m = classification_metrics(test.labels, ens.predict(test.texts), ens.labels)
    assert m["macro_f1"] > 0.65


def test_ensemble_refuses_members_with_other_labels(models, tweets, tmp_path):
    relabelled = {}
    for split in ("train", "valid"):
        ds = read_labelled(tweets[split])
        ds = ds.subset(range(min(600, len(ds))))
        relabelled[split] = tmp_path / f"{split}.csv"
        write_labelled(relabelled[split], Dataset(ds.texts, [{"negative": "neg"}.get(x, x) for x in ds.labels]))
    other = train("fasttext", relabelled, tmp_path / "other", SMALL_FT)
    result = invoke("ensemble", "--model_path", models["ft_char"], "--model_path", other, "--valid_path", tweets["valid"],
                    "--output_dir", tmp_path / "ens")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: ensemble members must share one label set: ft_char (fasttext) has [negative, positive], "
        "other (fasttext) has [neg, positive]")
    assert not (tmp_path / "ens" / "meta.json").exists()


def test_weight_search_never_loses_to_a_single_member():
    from textclf.services.compare.ensemble import search_weights, simplex_grid

    assert len(simplex_grid(3, 20)) == 231 and all(w.sum() == pytest.approx(1) for w in simplex_grid(3, 4))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    for n in (2, 3, 5):  # 5 members: coordinate ascent
        probas = [rng.dirichlet(np.ones(3), 300) * 0.5 + np.eye(3)[y] * rng.uniform(0.1, 0.6) for _ in range(n)]
        probas = [p / p.sum(axis=1, keepdims=True) for p in probas]
        out = search_weights(probas, y, beta=1.0, step=0.1)
        assert out["score"] >= max(out["single"]) and sum(out["weights"]) == pytest.approx(1.0)
        assert ("grid" in out["strategy"]) == (n <= 4)
        ll = search_weights(probas, y, beta=1.0, step=0.1, objective="logloss")
        singles = [-np.mean(np.log(p[np.arange(len(y)), y])) for p in probas]
        assert ll["objective"] == "logloss" and ll["logloss"] <= min(singles) + 1e-12


@pytest.mark.slow  # auto's 4-fold comparison with a stacker grid per fold (auto's choice alone: the test below)
def test_auto_keeps_the_single_member_that_combining_cannot_beat(models, tweets, tmp_path):
    # valid relabelled with ft_char's own predictions: ft_char is perfect on it, so out of fold no weighted
    # average or stacker can score higher, and ties go to the simpler candidate
    chosen = models["ft_char"]
    valid = read_labelled(tweets["valid"])
    relabelled = tmp_path / "valid_as_ft_char.csv"
    write_labelled(relabelled, Dataset(valid.texts, load_predictor(chosen).predict(valid.texts)))
    members = [models["ft_search"], chosen, models["tfidf"]]
    out = tmp_path / "auto"
    args = [a for m in members for a in ("--model_path", m)]
    result = invoke("ensemble", *args, "--valid_path", relabelled, "--output_dir", out, "--cv", "4")
    assert result.exit_code == 0, result.output
    assert "auto: out-of-fold macro_f1 (4-fold stratified CV on valid, seed 13): single 1.0000 (ft_char in 4/4 folds)" \
        in result.output
    assert "-> single (no combination beats the best single member clearly out of fold: weighted " in result.output
    assert "\nensemble (auto: single) written to" in result.output

    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["method"] == "auto" and meta["method"] == "weighted" and meta["weights"] == [0.0, 1.0, 0.0]
    s = meta["ensemble_search"]
    auto = s["auto"]
    assert s["chosen"] == auto["chosen"] == auto["rule"]["decision"] == "single" and auto["folds"] == 4
    assert auto["metric"] == "macro_f1" and not any(e["clear_win"] for e in auto["rule"]["versus_single"].values())
    cands = auto["candidates"]
    assert set(cands) == {"single", "weighted", "stacking"}
    assert cands["single"]["cv_score"] == 1.0 and cands["single"]["fold_members"] == [1, 1, 1, 1]
    assert all(0.5 < c["cv_score"] <= 1.0 for c in cands.values()) and len(cands["weighted"]["fold_weights"]) == 4

    ens = load_predictor(out)
    texts = read_labelled(tweets["test"]).texts
    alone = load_predictor(chosen)
    assert ens.predict(texts) == alone.predict(texts)  # decides like the member; its probabilities are temperature-scaled
    from textclf.services.compare.member_temperature import apply_temperatures

    scaled = apply_temperatures([alone.predict_proba(texts)], [meta["members"][1]["temperature"]], False)[0]
    np.testing.assert_allclose(ens.predict_proba(texts), scaled, atol=1e-12)


@pytest.mark.slow  # an auto ensemble search (quick: tests/test_small_models.py's auto rule)
def test_auto_combines_members_whose_errors_are_independent():
    from textclf.services.compare.ensemble import CANDIDATES, fit_method, select_method

    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 2, n)

    def member() -> np.ndarray:  # right and confident on 75 %, wrong but unsure on the rest (independently drawn)
        right = rng.random(n) < 0.75
        p_true = np.where(right, rng.uniform(0.8, 0.95, n), rng.uniform(0.4, 0.48, n))
        proba = np.empty((n, 2))
        proba[np.arange(n), y] = p_true
        proba[np.arange(n), 1 - y] = 1 - p_true
        return proba

    probas = [member(), member()]
    sel = select_method(probas, y, 2, cv=5, bags=5)
    c = sel["candidates"]
    assert tuple(c) == CANDIDATES and sel["folds"] == 5
    assert 0.7 < c["single"]["cv_score"] < 0.8 and c["weighted"]["cv_score"] > c["single"]["cv_score"] + 0.1
    assert sel["chosen"] in ("weighted", "stacking")
    assert sel["candidates"][sel["chosen"]]["cv_score"] == max(v["cv_score"] for v in c.values())
    saved, weights, stacker, search = fit_method("auto", probas, y, 2, cv=5, bags=5)
    assert search["chosen"] == sel["chosen"] and search["auto"] == sel
    assert (saved, stacker is None) == (("weighted", True) if sel["chosen"] == "weighted" else ("stacking", False))


def test_bagged_weight_search_averages_bootstrap_searches():
    from textclf.services.compare.ensemble import bagged_search_weights, search_weights

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 240)
    probas = [rng.dirichlet(np.ones(3), 240) * 0.5 + np.eye(3)[y] * rng.uniform(0.1, 0.6) for _ in range(3)]
    probas = [p / p.sum(axis=1, keepdims=True) for p in probas]
    plain = search_weights(probas, y, step=0.1)
    assert bagged_search_weights(probas, y, step=0.1, bags=0)["weights"] == plain["weights"]
    bagged = bagged_search_weights(probas, y, step=0.1, bags=8, seed=2)
    assert bagged["bags"] == 8 and len(bagged["bag_weights"]) == 8 and bagged["unbagged_weights"] == plain["weights"]
    np.testing.assert_allclose(bagged["weights"], np.mean(bagged["bag_weights"], axis=0), atol=1e-3)
    assert sum(bagged["weights"]) == pytest.approx(1.0) and min(bagged["weights"]) >= 0
    assert bagged_search_weights(probas, y, step=0.1, bags=8, seed=2)["weights"] == bagged["weights"]  # seeded


# --------------------------------------------------------------------------- thresholds
def test_offsets_never_lower_the_score_on_synthetic_data():
    rng = np.random.default_rng(1)
    for seed in range(8):
        k = 2 + seed % 4
        n = 200
        y = rng.choice(k, n, p=np.r_[0.6, np.full(k - 1, 0.4 / (k - 1))])
        logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for beta in (0.5, 1.0, 2.0):
            r = tune_offsets(proba, y, beta)
            assert r.after >= r.before
            assert r.after == pytest.approx(macro_fbeta(y, decide(proba, r.offsets), k, beta))
            labels = [str(i) for i in range(k)]
            m = classification_metrics([str(v) for v in y], [str(v) for v in decide(proba, r.offsets)], labels, (beta,))
            assert m[f"macro_f{beta:g}"] == pytest.approx(r.after)
    assert np.array_equal(decide(proba, np.zeros(proba.shape[1])), proba.argmax(axis=1))


def test_cross_validated_offsets_reject_noise_and_keep_a_real_shift():
    from textclf.services.compare.thresholds import stratified_folds

    labels = np.array([0] * 10 + [1] * 7)
    folds = stratified_folds(labels, 3, seed=1)
    assert sorted(np.concatenate([h for _, h in folds]).tolist()) == list(range(17))
    assert all(set(t) | set(h) == set(range(17)) and not set(t) & set(h) for t, h in folds)
    assert sorted(len(h) for _, h in folds) == [5, 6, 6]
    assert sorted(np.bincount(labels[h], minlength=2)[0] for _, h in folds) == [3, 3, 4]  # each class dealt evenly

    # calibrated, symmetric scores: the plain argmax is already right, any valid gain of an offset is luck
    kept = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 200)
        logits = np.stack([np.zeros(200), 2.0 * y - 1 + rng.normal(0, 1, 200)], axis=1)
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        plain = tune_offsets(proba, y, 1.0)
        checked = tune_offsets(proba, y, 1.0, cv=5)
        assert plain.after > plain.before and checked.after >= checked.before  # the plain search always "finds" something
        assert checked.cv["accepted"] == (checked.cv["oof_after"] > checked.cv["oof_before"])
        if checked.cv["accepted"]:
            kept += 1
            np.testing.assert_array_equal(checked.offsets, plain.offsets)
        else:
            assert np.all(checked.offsets == 0) and checked.after == checked.before and checked.moves == 0
    assert kept <= 3

    rng = np.random.default_rng(7)
    n = 300
    y = rng.integers(0, 2, n)
    # a model that under-predicts class 1 by a constant shift: the offsets hold out of fold
    logits = np.stack([np.zeros(n), 2.0 * (2 * y - 1) + rng.normal(0, 1, n) - 2.5], axis=1)
    shifted = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fixed = tune_offsets(shifted, y, 1.0, cv=5)
    assert fixed.cv["accepted"] and fixed.cv["oof_after"] > fixed.cv["oof_before"] + 0.05
    assert fixed.after > fixed.before + 0.05 and fixed.after == pytest.approx(macro_fbeta(y, decide(shifted, fixed.offsets), 2))


def test_tune_thresholds_defaults_to_beta_half_with_an_out_of_fold_check(models, tweets, tmp_path):
    model = copy_model(models["tfidf"], tmp_path / "model")
    result = invoke("tune-thresholds", "--model_path", model, "--valid_path", tweets["valid"])
    assert result.exit_code == 0, result.output
    block = json.loads((model / "meta.json").read_text())["thresholds"]
    assert block["beta"] == 0.5 and block["metric"] == "macro_f0.5"
    check = block["cv"]  # the plain search moves on this valid split, so the check runs
    assert check["folds"] == 5 and check["accepted"] == (check["oof_after"] > check["oof_before"])
    assert "out-of-fold check (5-fold CV on valid): macro_f0.5" in result.output
    if check["accepted"]:
        assert block["moves"] > 0 and block["valid_after"] > block["valid_before"]
    else:
        assert set(block["offsets"].values()) == {0.0} and block["valid_after"] == block["valid_before"]


def test_tune_thresholds_on_imbalanced_data(models, tweets, tmp_path):
    counts = Counter(read_labelled(tweets["valid"]).labels)
    assert counts["negative"] / sum(counts.values()) < 0.35  # imbalanced: about 30/70
    model = copy_model(models["ft_char"], tmp_path / "model")
    valid = read_labelled(tweets["valid"])
    untuned = load_predictor(model)
    base_proba = untuned.predict_proba(valid.texts)
    base = classification_metrics(valid.labels, untuned.predict(valid.texts), untuned.labels)

    result = invoke("tune-thresholds", "--model_path", model, "--valid_path", tweets["valid"], "--beta", "0.5")
    assert result.exit_code == 0, result.output
    block = json.loads((model / "meta.json").read_text())["thresholds"]
    assert block["beta"] == 0.5 and block["metric"] == "macro_f0.5" and set(block["offsets"]) == {"negative", "positive"}
    assert block["valid_before"] == pytest.approx(base["macro_f0.5"])
    assert block["valid_after"] >= block["valid_before"]

    tuned = load_predictor(model)
    offsets = np.array([block["offsets"][label] for label in tuned.labels])
    np.testing.assert_array_equal(tuned.predict_proba(valid.texts), base_proba)  # predict_proba unchanged
    expected = [tuned.labels[i] for i in (log_proba(base_proba) + offsets).argmax(axis=1)]
    assert tuned.predict(valid.texts) == expected  # fastText's own fast predict path is bypassed
    after = classification_metrics(valid.labels, expected, tuned.labels)
    assert after["macro_f0.5"] == pytest.approx(block["valid_after"]) and after["macro_f0.5"] >= base["macro_f0.5"]
    if block["valid_after"] > block["valid_before"]:
        assert expected != untuned.predict(valid.texts)
    assert load_predictor(model, thresholds=False).predict(valid.texts) == untuned.predict(valid.texts)

    # predict and evaluate apply them; --no-thresholds turns them off
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(" ".join(t.split()) for t in valid.texts) + "\n")
    for flag, want in (((), expected), (("--no-thresholds",), untuned.predict(valid.texts))):
        out = tmp_path / "out.csv"
        assert invoke("predict", "--model_path", model, "--input_path", inp, "--output_path", out, *flag).exit_code == 0
        assert [r["label"] for r in csv.DictReader(out.open())] == want
        res = invoke("evaluate", "--model_path", model, "--data_path", tweets["valid"], "--json", *flag)
        assert json.loads(res.stdout)["macro_f0.5"] == pytest.approx(
            classification_metrics(valid.labels, want, tuned.labels)["macro_f0.5"])

    assert invoke("tune-thresholds", "--model_path", model, "--reset").exit_code == 0
    assert "thresholds" not in json.loads((model / "meta.json").read_text())


def test_ensemble_kind_is_known_but_not_a_trainable_family():
    from textclf.core.registry import all_families, all_kinds, kind_predictor

    assert "ensemble" in all_kinds() and "ensemble" not in all_families()
    assert kind_predictor("ensemble").kind == "ensemble" and kind_predictor("nope") is None


def test_bench_reuses_a_member_only_with_the_same_data_and_search_settings(models, tweets, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_ensemble import reusable_member

    member = copy_model(models["ft_search"], tmp_path / "fasttext")
    paths = {k: str(v) for k, v in tweets.items()}
    overrides = ["search.n_trials=30", "search.timeout=400.0"]
    (tmp_path / "fasttext.job.json").write_text(json.dumps({"family": "fasttext", "overrides": overrides}))
    assert reusable_member(member, paths, overrides) == {"family": "fasttext", "overrides": overrides, "reused": True}
    # a shorter search budget than the one asked for: trained again, not reused
    assert reusable_member(member, paths, ["search.n_trials=30", "search.timeout=60.0"]) is None
    assert reusable_member(member, {**paths, "test": paths["valid"]}, overrides) is None  # other data

"""``textclf distill`` and the ``cascade`` model kind on the embedded tweets data, with real small models.

The quick tests use a TF-IDF + SVD embeddings teacher (the embeddings family with
``encoder.name=tfidf_svd``: a real model that trains in about a second) and fastText students; the
slow test distils the MiniLM embeddings teacher (the benchmark's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.augment import augment_texts
from textclf.core.data import read_labelled
from textclf.core.loading import load_predictor
from textclf.core.metrics import classification_metrics
from textclf.services.compare.cascade import ALL_TO_TEACHER, tau_curve
from textclf.services.distill import balance_copies, copies, soften

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ServeProcess, head_csv  # noqa: E402

FT = ["--set", "search.n_trials=0", "--set", "model.bucket=50000", "--set", "model.dim=20"]


def textclf(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("Error: "), line
    for f in fragments:
        assert f in line, line
    return line


@pytest.fixture(scope="module", autouse=True)
def private_cache(cache_dir):
    """Every test here keeps the teacher's cached probabilities (and the embeddings) in a private cache."""
    return cache_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory, tweets):
    d = tmp_path_factory.mktemp("distill_data")
    return {"train": head_csv(tweets["train"], d / "train.csv", 600), "valid": head_csv(tweets["valid"], d / "valid.csv", 200),
            "test": head_csv(tweets["test"], d / "test.csv", 200)}


@pytest.fixture(scope="module")
def models(tmp_path_factory, data):
    """A TF-IDF+SVD embeddings teacher, a fastText student on gold, and a cascade of the two."""
    d = tmp_path_factory.mktemp("distill_models")
    split = ["--train_path", data["train"], "--valid_path", data["valid"], "--test_path", data["test"]]
    textclf("train", "embeddings", *split, "--output_dir", d / "teacher", "--device", "cpu", "--set", "encoder.name=tfidf_svd",
            "--set", "tfidf_svd.n_components=64", "--set", "search.n_trials=0")
    textclf("train", "fasttext", *split, "--output_dir", d / "student", *FT)
    out = textclf("cascade", "--student", d / "student", "--teacher", d / "teacher", "--valid_path", data["valid"],
                  "--test_path", data["test"], "--output_dir", d / "cascade").output
    return {"teacher": d / "teacher", "student": d / "student", "cascade": d / "cascade", "dir": d, "cascade_output": out}


# --------------------------------------------------------------------------- distill
def test_copies_and_temperature():
    assert copies(np.array([0.5, 0.75, 1.0]), 2, 4).tolist() == [0, 2, 4]
    assert copies(np.array([1 / 3, 1.0]), 3, 3).tolist() == [0, 3]
    p = np.array([[0.9, 0.1]])
    assert np.allclose(soften(p, 1.0), p)
    hot = soften(p, 2.0)[0]  # logits / 2: 0.9/0.1 odds of 9 become 3
    assert hot[0] == pytest.approx(0.75) and hot.sum() == pytest.approx(1.0)
    # teacher rows 8 "a" : 2 "b" against gold 1 : 1 -> rescaled to 5 : 5 (rounded along each class's cumulative sum)
    n = balance_copies(np.array([2, 2, 2, 2, 1, 1]), np.array([0, 0, 0, 0, 1, 1]), ["a", "b"], ["a", "b"])
    assert n.tolist() == [1, 1, 2, 1, 2, 3] and n[:4].sum() == n[4:].sum() == 5
    # a class the teacher never predicts stays absent; the other keeps its gold share of the rows
    assert balance_copies(np.array([3, 3]), np.array([0, 0]), ["a", "b"], ["a", "b"]).tolist() == [2, 1]


def test_distill_records_the_teacher_and_trains_on_its_labels(models, data, tmp_path):
    unlabeled = tmp_path / "more.txt"
    extra = read_labelled(data["test"]).texts[:50]  # texts without their labels
    unlabeled.write_text("\n".join(" ".join(t.split()) for t in extra) + "\n\n", encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "student"
    textclf("distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", data["train"],
            "--valid_path", data["valid"], "--unlabeled_path", unlabeled, "--temperature", "2", "--output_dir", out,
            "--track", "--tracking_uri", uri, *FT)
    meta = json.loads((out / "meta.json").read_text())
    d = meta["distill"]
    teacher_meta = models["teacher"] / "meta.json"
    import hashlib

    assert d["teacher"] == {"path": str(models["teacher"]), "kind": "embeddings",
                            "meta_sha256": hashlib.sha256(teacher_meta.read_bytes()).hexdigest()}
    assert d["temperature"] == 2.0 and d["data"]["unlabeled"] == str(unlabeled)
    train = read_labelled(data["train"])
    texts = [*train.texts, *extra]  # the empty line is not a text
    assert d["data"]["gold_rows"] == len(train) and d["data"]["teacher_texts"] == len(texts)
    # the copies, recomputed from the teacher loaded on its own
    teacher = load_predictor(models["teacher"])
    q = soften(teacher.predict_proba(texts)[:, [teacher.labels.index(label) for label in meta["labels"]]], 2.0)
    n = balance_copies(copies(q.max(axis=1), 2, d["repeats"]), q.argmax(axis=1), train.labels, meta["labels"])
    assert d["data"]["teacher_rows"] == int(n.sum()) > 0 and d["balance"] is True
    # the teacher rows keep the gold class shares (to rounding)
    gold_share = train.labels.count(meta["labels"][0]) / len(train)
    assert d["data"]["teacher_label_counts"][meta["labels"][0]] / d["data"]["teacher_rows"] == pytest.approx(gold_share, abs=0.02)
    assert meta["kind"] == "fasttext" and meta["metrics"]["valid"]["macro_f1"] > 0.5
    card = (out / "MODEL_CARD.md").read_text()
    assert f"- distilled from the teacher `{models['teacher']}` (embeddings, meta.json SHA-256 `{d['teacher']['meta_sha256']}`)" in card
    assert f"- student training set: {len(train)} gold rows, {len(texts)} texts labelled by the teacher, unlabelled text " \
           f"from `{unlabeled}`; {d['data']['teacher_rows']} teacher rows" in card
    from textclf.services.tracking import open_store

    [run] = open_store(uri).search()
    assert run.data.tags["textclf.distill.teacher"] == str(models["teacher"])
    assert run.data.tags["textclf.distill.teacher_sha256"] == d["teacher"]["meta_sha256"]
    assert run.data.tags["textclf.command"] == "distill"


def test_teacher_probabilities_are_cached_in_slices_and_an_interrupted_run_resumes(models, data, monkeypatch):
    """distill's teacher predictions go to the embedding cache in slices: a second distill from the same teacher predicts
    nothing, one interrupted in its third slice predicts only from there, and the probabilities are the same each time."""
    from textclf.core.integrity import sha256_file
    from textclf.families.common.cache import EmbeddingCache
    from textclf.services import distill

    monkeypatch.setattr(distill, "TEACHER_SLICE", 100)
    teacher = load_predictor(models["teacher"], thresholds=False)
    texts = read_labelled(data["train"]).texts[:450]  # slices of 100, 100, 100, 100, 50
    sha = sha256_file(models["teacher"] / "meta.json")
    real, seen = teacher.predict_proba, []

    def counted(batch):
        seen.append(len(batch))
        if fail_at is not None and len(seen) == fail_at:
            raise KeyboardInterrupt
        return real(batch)

    teacher.predict_proba = counted
    fail_at = 3  # batch size 100: the third call is the third slice
    with pytest.raises(KeyboardInterrupt):
        distill.teacher_proba(teacher, texts, ["positive", "negative"], 100, sha)
    before = len(EmbeddingCache().entries())
    fail_at, seen[:] = None, []
    first = distill.teacher_proba(teacher, texts, ["positive", "negative"], 100, sha)
    assert seen == [100, 100, 50]  # slices 1-2 came from the cache
    assert len(EmbeddingCache().entries()) == before + 3
    seen[:] = []
    again = distill.teacher_proba(teacher, texts, ["negative", "positive"], 100, sha)
    assert seen == []  # everything from the cache, columns in the order asked
    np.testing.assert_array_equal(again, first[:, ::-1])
    fresh = distill.teacher_proba(teacher, texts, ["positive", "negative"], 100, sha, cache=False)
    np.testing.assert_array_equal(fresh, first)  # float32 round trip either way: cached and fresh runs agree
    assert seen == [100] * 4 + [50]
    expected = np.asarray(real(texts), dtype=np.float32).astype(np.float64)
    order = [list(teacher.labels).index("positive"), list(teacher.labels).index("negative")]
    np.testing.assert_allclose(first, expected[:, order], atol=1e-6)


def test_embeddings_student_learns_the_soft_labels(models, data, tmp_path):
    """A family that takes per-row weights (embeddings) learns the teacher's probabilities, not only its argmax."""
    unlabeled = tmp_path / "more.txt"
    extra = read_labelled(data["test"]).texts[:100]
    unlabeled.write_text("\n".join(" ".join(t.split()) for t in extra) + "\n", encoding="utf-8")
    emb = ["--set", "device=cpu", "--set", "encoder.name=tfidf_svd", "--set", "tfidf_svd.n_components=64",
           "--set", "search.n_trials=0"]
    base = ["distill", "--teacher", models["teacher"], "--student", "embeddings", "--train_path", data["train"],
            "--valid_path", data["valid"], "--test_path", data["test"], "--unlabeled_path", unlabeled, *emb]
    textclf(*base, "--output_dir", tmp_path / "soft")
    textclf(*base, "--hard", "--output_dir", tmp_path / "hard")
    soft_meta = json.loads((tmp_path / "soft" / "meta.json").read_text())
    d = soft_meta["distill"]
    assert d["soft"] is True and d["method"].startswith("soft labels") and "repeats" not in d
    train = read_labelled(data["train"])
    teacher = load_predictor(models["teacher"])
    texts = [*train.texts, *(" ".join(t.split()) for t in extra)]
    q = teacher.predict_proba(texts)[:, [teacher.labels.index(label) for label in soft_meta["labels"]]]
    assert d["data"]["teacher_rows"] == int((q / q.sum(axis=1, keepdims=True) >= 1e-3).sum())
    assert d["data"]["teacher_label_mass"][soft_meta["labels"][0]] == pytest.approx(q[:, 0].sum() / 1, abs=0.01)
    assert json.loads((tmp_path / "hard" / "meta.json").read_text())["distill"]["soft"] is False
    # the soft student's probabilities on unseen texts stay closer to the teacher's than the hard-label student's
    unseen = read_labelled(data["valid"]).texts
    target = teacher.predict_proba(unseen)[:, [teacher.labels.index(label) for label in soft_meta["labels"]]]
    gap = {name: float(np.abs(load_predictor(tmp_path / name).predict_proba(unseen) - target).mean()) for name in ("soft", "hard")}
    assert gap["soft"] < 0.8 * gap["hard"], gap
    assert soft_meta["metrics"]["test"]["macro_f1"] > 0.6
    rows = {r["name"]: r for r in json.loads(textclf("families", "--json").output)}
    assert rows["embeddings"]["soft_labels"] is True and rows["fasttext"]["soft_labels"] is False
    assert "[multi-class, multi-label, soft labels]" in textclf("families").output
    one_line_error(textclf(*base, "--output_dir", tmp_path / "knn", "--set", "classifier=knn", ok=False),
                   "classifier knn does not take per-row weights")
    one_line_error(textclf("distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", data["train"],
                           "--valid_path", data["valid"], "--soft", "--output_dir", tmp_path / "ft", *FT, ok=False),
                   "family 'fasttext' does not take per-row weights")


def test_augment_texts_makes_seeded_distinct_variants():
    texts = ["i really love this phone and the battery lasts all day", "meh", "no way this is happening again today"]
    a = augment_texts(texts, 5, seed=13)
    assert a == augment_texts(texts, 5, seed=13) and a != augment_texts(texts, 5, seed=14)
    assert len(a) == len(set(a)) and not set(a) & set(texts) and all(v.strip() for v in a)
    # every variant is an ordered subsequence of the tokens of one source text (deletion, then an n-gram window)
    def subsequence(v, t):
        it = iter(t.split())
        return all(tok in it for tok in v.split())
    assert all(any(subsequence(v, t) for t in texts) for v in a)
    assert len(a) <= 5 * len(texts) and len(a) >= 5  # the long texts give several variants; "meh" may give none
    assert augment_texts(texts, 0) == []


def test_distill_augment_labels_variants_of_the_train_texts(models, data, tmp_path):
    out = tmp_path / "aug"
    textclf("distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", data["train"],
            "--valid_path", data["valid"], "--augment", "2", "--output_dir", out, *FT)
    meta = json.loads((out / "meta.json").read_text())
    d = meta["distill"]
    train = read_labelled(data["train"])
    expected = augment_texts(train.texts, 2, seed=meta["config"]["seed"])
    assert d["data"]["augmented_texts"] == len(expected) > len(train)
    assert d["data"]["teacher_texts"] == len(train) + len(expected)
    assert d["augment"]["per_text"] == 2 and d["augment"]["seed"] == meta["config"]["seed"]
    assert load_predictor(out).predict(["what a great day"])[0] in meta["labels"]
    one_line_error(textclf("distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", data["train"],
                           "--valid_path", data["valid"], "--augment", "-1", "--output_dir", tmp_path / "bad", ok=False),
                   "--augment")


def test_distill_bad_input_is_one_line(models, data, tmp_path):
    base = ["distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", data["train"],
            "--valid_path", data["valid"]]
    one_line_error(textclf(*base, "--output_dir", tmp_path / "a", "--temperature", "0", ok=False),
                   "--temperature must be > 0")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    one_line_error(textclf(*base, "--output_dir", tmp_path / "b", "--unlabeled_path", empty, ok=False), str(empty),
                   "no text to distill on")
    other = tmp_path / "other.csv"
    other.write_text("text,label\ngood day,happy\nbad day,sad\nfine,happy\nawful,sad\n", encoding="utf-8")
    one_line_error(textclf("distill", "--teacher", models["teacher"], "--student", "fasttext", "--train_path", other,
                           "--valid_path", other, "--output_dir", tmp_path / "c", ok=False), "one label set")
    one_line_error(textclf(*base, "--output_dir", models["teacher"] / "inside", ok=False), "must not be the teacher")


# --------------------------------------------------------------------------- cascade
def test_cascade_meta_share_and_tau_consistent(models, data):
    meta = json.loads((models["cascade"] / "meta.json").read_text())
    assert meta["kind"] == "cascade"
    assert [m["path"] for m in meta["members"]] == ["members/student", "members/teacher"]
    student, teacher = load_predictor(models["student"], thresholds=False), load_predictor(models["teacher"], thresholds=False)
    valid = read_labelled(data["valid"])
    y = np.array([student.labels.index(label) for label in valid.labels])
    sp = student.predict_proba(valid.texts)
    tp = teacher.predict_proba(valid.texts)[:, [teacher.labels.index(label) for label in student.labels]]
    share = float((sp.max(axis=1) < meta["tau"]).mean())
    assert meta["share_to_teacher"] == pytest.approx(share) == meta["cascade"]["valid"]["share_to_teacher"]
    # tau is the fewest texts to the teacher within 0.005 macro-F1 of it, on valid
    curve = tau_curve(y, sp, tp)
    teacher_f1 = curve[-1]["macro_f1"]
    assert curve[-1]["tau"] == ALL_TO_TEACHER and curve[-1]["share_to_teacher"] == 1.0
    assert meta["cascade"]["valid"]["macro_f1"] >= teacher_f1 - 0.005 - 1e-12
    assert all(p["macro_f1"] < teacher_f1 - 0.005 for p in curve if p["share_to_teacher"] < share - 1e-12)
    assert meta["metrics"]["valid"]["macro_f1"] == pytest.approx(meta["cascade"]["valid"]["macro_f1"])
    assert f"{share:.1%} of valid reaches the teacher" in models["cascade_output"]
    card = (models["cascade"] / "MODEL_CARD.md").read_text()
    assert (f"- cascade: the student `fasttext` (`members/student`) answers a text when its confidence is >= tau "
            f"{meta['tau']:.4f}, the teacher `embeddings` (`members/teacher`) answers the rest") in card
    assert f"{share:.1%} of the valid texts go to the teacher" in card and "- ensemble (" not in card


@pytest.mark.slow  # predicts in another process (quick: test_cascade_records_its_size_under_a_budget)
def test_cascade_routes_and_loads_in_another_process(models, data, tmp_path):
    texts = read_labelled(data["test"]).texts
    cascade = load_predictor(models["cascade"])
    student, teacher = cascade.student, cascade.teacher
    confidence = student.predict_proba(texts).max(axis=1)
    cascade.tau = float(np.median(confidence))  # whatever tau valid gave: here both members answer some texts
    proba, mask = cascade.route(texts)
    assert (mask == (confidence < cascade.tau)).all() and 0 < mask.sum() < len(texts)
    expected = [teacher.predict([t])[0] if m else student.predict([t])[0] for t, m in zip(texts, mask, strict=True)]
    assert cascade.predict(texts) == expected
    assert cascade.share_to_teacher == pytest.approx(mask.mean())  # route + predict: the same texts twice
    cascade = load_predictor(models["cascade"])  # tau as built
    # textclf predict in another process: one prediction a line, the same labels
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(" ".join(t.split()) for t in texts[:60]) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    code = ("import sys; from textclf.core.loading import load_predictor; from textclf.core.predictor import predict_file; "
            "predict_file(load_predictor(sys.argv[1]), sys.argv[2], sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(models["cascade"]), str(inp), str(out)], check=True, timeout=300)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == cascade.predict([" ".join(t.split()) for t in texts[:60]])
    # evaluate: the test metrics meta.json records
    meta = json.loads((models["cascade"] / "meta.json").read_text())
    test = read_labelled(data["test"])
    assert classification_metrics(test.labels, cascade.predict(test.texts), cascade.labels)["macro_f1"] == \
        pytest.approx(meta["metrics"]["test"]["macro_f1"])


@pytest.mark.slow  # copies a cascade and predicts in a subprocess
def test_cascade_directory_moves_as_one_and_member_paths_stay_inside(models, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(models["cascade"], moved)
    texts = ["what a lovely day", "this is the worst"]
    assert load_predictor(moved).predict(texts) == load_predictor(models["cascade"]).predict(texts)
    meta = json.loads((moved / "meta.json").read_text())
    meta["members"][1]["path"] = "../../elsewhere"
    (moved / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "x.txt").write_text("a text\n", encoding="utf-8")
    one_line_error(textclf("predict", "--model_path", moved, "--input_path", tmp_path / "x.txt", "--output_path",
                           tmp_path / "y.txt", ok=False), "points outside the model directory")
    assert not (tmp_path / "y.txt").exists()


def test_cascade_bad_input_is_one_line(models, data, tmp_path):
    base = ["cascade", "--student", models["student"], "--teacher", models["teacher"], "--valid_path", data["valid"]]
    one_line_error(textclf(*base, "--output_dir", tmp_path / "a", "--min_docs_per_s", "1e12", ok=False),
                   "--min_docs_per_s 1e+12: not reachable")
    one_line_error(textclf(*base, "--output_dir", tmp_path / "b", "--max_f1_loss", "0.01", "--min_docs_per_s", "5", ok=False),
                   "not both")
    one_line_error(textclf("cascade", "--student", models["student"], "--teacher", models["student"], "--valid_path",
                           data["valid"], "--output_dir", tmp_path / "c", ok=False), "the same model directory")
    one_line_error(textclf(*base, "--output_dir", models["student"], ok=False), "must not be a member")
    one_line_error(textclf(*base, "--output_dir", tmp_path / "d", "--max_model_mb", "0.001", ok=False),
                   "--max_model_mb 0.001: the student (")
    assert not (tmp_path / "d").exists()


def test_cascade_records_its_size_under_a_budget(models):
    """meta.json records the members' sizes and their sum (the leaderboard's and runs list's size), like an ensemble."""
    meta = json.loads((models["cascade"] / "meta.json").read_text())
    size = meta["size"]
    assert set(size["members_mb"]) == {"student", "teacher"} and size["max_model_mb"] is None
    assert meta["model_mb"] == pytest.approx(sum(size["members_mb"].values()), abs=2e-3) and meta["model_mb"] > 0


def test_min_docs_per_s_target(models, data, tmp_path):
    textclf("cascade", "--student", models["student"], "--teacher", models["teacher"], "--valid_path", data["valid"],
            "--output_dir", tmp_path / "fast", "--min_docs_per_s", "1")
    meta = json.loads((tmp_path / "fast" / "meta.json").read_text())
    # every tau is fast enough at 1 doc/s: the best valid macro-F1 wins
    best = max(p["macro_f1"] for p in meta["cascade"]["curve"])
    assert meta["cascade"]["target"] == {"min_docs_per_s": 1.0}
    assert meta["cascade"]["valid"]["macro_f1"] >= best - 1e-5  # the curve in meta.json is rounded to 5 places


def test_confidence_keeps_the_loss_at_the_bootstrap_bound(models, data, tmp_path):
    """--confidence: tau holds the loss at the one-sided bootstrap bound, so at least as many texts go to the teacher."""
    from textclf.services.compare.ensemble import paired_gain

    out = textclf("cascade", "--student", models["student"], "--teacher", models["teacher"], "--valid_path", data["valid"],
                  "--output_dir", tmp_path / "sure", "--confidence", "0.9").output
    meta = json.loads((tmp_path / "sure" / "meta.json").read_text())
    plain = json.loads((models["cascade"] / "meta.json").read_text())
    assert meta["cascade"]["target"] == {"max_f1_loss": 0.005, "confidence": 0.9}
    assert meta["share_to_teacher"] >= plain["share_to_teacher"]
    student, teacher = load_predictor(models["student"], thresholds=False), load_predictor(models["teacher"], thresholds=False)
    valid = read_labelled(data["valid"])
    y = np.array([student.labels.index(label) for label in valid.labels])
    sp = student.predict_proba(valid.texts)
    tp = teacher.predict_proba(valid.texts)[:, [teacher.labels.index(label) for label in student.labels]]
    pred = np.where(sp.max(axis=1) < meta["tau"], tp.argmax(axis=1), sp.argmax(axis=1))
    check = paired_gain(y, pred, tp.argmax(axis=1), len(student.labels), 1.0, 0.9)
    assert meta["cascade"]["valid"]["loss_ci_low"] == pytest.approx(check["ci_low"]) and check["ci_low"] >= -0.005 - 1e-12
    assert meta["cascade"]["valid"]["macro_f1"] >= meta["cascade"]["valid"]["teacher_macro_f1"] - 0.005 - 1e-12
    assert f"--confidence 0.9: the valid macro-F1 difference to the teacher is >= {check['ci_low']:+.4f}" in out
    base = ["cascade", "--student", models["student"], "--teacher", models["teacher"], "--valid_path", data["valid"]]
    one_line_error(textclf(*base, "--output_dir", tmp_path / "a", "--confidence", "1", ok=False),
                   "--confidence must be in [0.5, 1), got 1")
    one_line_error(textclf(*base, "--output_dir", tmp_path / "b", "--confidence", "0.9", "--min_docs_per_s", "5", ok=False),
                   "--confidence goes with --max_f1_loss, not --min_docs_per_s")


@pytest.mark.slow  # starts textclf serve (quick: tests/test_serve.py)
def test_serve_answers_with_a_cascade(models, data):
    import httpx

    texts = read_labelled(data["test"]).texts[:40]
    server = ServeProcess(models["cascade"])
    try:
        answer = httpx.post(f"{server.url}/predict", json={"texts": texts, "probabilities": True}, timeout=60).json()
        info = httpx.get(f"{server.url}/metadata", timeout=10).json()
    finally:
        assert server.stop() == 0
    cascade = load_predictor(models["cascade"])
    assert [p["label"] for p in answer["predictions"]] == cascade.predict(texts)
    # /metadata exposes the share of texts that reached the teacher: on valid, and what this server routed
    assert info["kind"] == "cascade" and info["serving"]["micro_batching"] is True
    assert info["cascade"]["share_to_teacher_valid"] == cascade.meta["share_to_teacher"]
    assert info["cascade"]["texts_served"] == len(texts)
    assert info["cascade"]["share_to_teacher_served"] == pytest.approx(cascade.share_to_teacher)


@pytest.mark.slow  # leaderboard + report subprocesses over three models (quick: test_distill_records_the_teacher_and_trains_on_its_labels)
def test_leaderboard_and_report_frontier(models, data, tmp_path):
    result = textclf("leaderboard", models["cascade"], models["student"], models["teacher"], "--data_path", data["test"],
                     "--json", "--no-isolate", "--n_boot", "50")
    board = json.loads(result.output[result.output.index("{"):])
    assert {r["kind"] for r in board["rows"]} == {"cascade", "fasttext", "embeddings"}
    out = tmp_path / "report"
    textclf("report", "--model_path", models["cascade"], "--data_path", data["test"], "--out_dir", out)
    rep = json.loads((out / "report.json").read_text())
    assert rep["figures"]["frontier"] == "frontier.png" and (out / "frontier.png").stat().st_size > 5000
    assert sorted(r["kind"] for r in rep["frontier"]) == ["cascade", "embeddings", "fasttext"]
    assert 'src="frontier.png"' in (out / "report.html").read_text()
    # a lone model gets no frontier section
    textclf("report", "--model_path", models["student"], "--data_path", data["test"], "--out_dir", tmp_path / "lone")
    assert "frontier" not in json.loads((tmp_path / "lone" / "report.json").read_text())["figures"]
    assert "Speed/quality frontier" not in (tmp_path / "lone" / "report.html").read_text()
    # --frontier places other models beside it
    textclf("report", "--model_path", models["student"], "--data_path", data["test"], "--out_dir", tmp_path / "two",
            "--frontier", models["teacher"])
    assert [r["kind"] for r in json.loads((tmp_path / "two" / "report.json").read_text())["frontier"]] in \
        (["fasttext", "embeddings"], ["embeddings", "fasttext"])


@pytest.mark.slow
def test_distill_from_minilm_teacher(tweets, tmp_path, cache_dir):
    """The benchmark's teacher (MiniLM + logreg) on 400 tweets: the distilled fastText student records it and learns."""
    d = tmp_path
    data = {"train": head_csv(tweets["train"], d / "train.csv", 400), "valid": head_csv(tweets["valid"], d / "valid.csv", 150)}
    textclf("train", "embeddings", "--train_path", data["train"], "--valid_path", data["valid"], "--output_dir", d / "t",
            "--device", "cpu", "--set", "search.n_trials=0")
    textclf("distill", "--teacher", d / "t", "--student", "fasttext", "--train_path", data["train"], "--valid_path",
            data["valid"], "--output_dir", d / "s", *FT)
    meta = json.loads((d / "s" / "meta.json").read_text())
    assert meta["distill"]["teacher"]["kind"] == "embeddings"
    assert meta["distill"]["data"]["teacher_rows"] > 400
    assert meta["metrics"]["valid"]["macro_f1"] > 0.5

"""Calibration (issue 25): ECE/Brier/log-loss, temperature and isotonic fits, the config key, ``textclf calibrate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.calibration import Calibrator, fit_calibration, fit_method, load_calibrator
from textclf.core.errors import ModelError
from textclf.core.loading import load_predictor
from textclf.core.metrics import calibration_metrics, expected_calibration_error
from textclf.core.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tweets_sentiment"
MULTILABEL = Path(__file__).parent / "fixtures" / "multilabel"
#: a deliberately over-confident fastText (lr 1, 50 epochs): on a real run its test top-label ECE was 0.193,
#: 0.049 after temperature scaling (T 4.5; valid 0.184 -> 0.053); the floors leave room for other fastText builds
OVERCONFIDENT = ["--set", "model.lr=1.0", "--set", "model.epoch=50", "--set", "model.dim=10", "--set", "model.bucket=20000",
                 "--set", "model.thread=1"]


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def train(out: Path, *extra: str, data: Path = DATA, ext: str = "csv") -> dict:
    result = run("train", "fasttext", "--train_path", data / f"train.{ext}", "--valid_path", data / f"valid.{ext}",
                 "--test_path", data / f"test.{ext}", "--output_dir", out, "--set", "search.n_trials=0", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "meta.json").read_text())


def texts_labels(path: Path) -> tuple[list[str], list[str]]:
    from textclf.core.data import read_labelled

    ds = read_labelled(path)
    return ds.texts, ds.labels


# --------------------------------------------------------------------------- metrics
def test_ece_counts_the_gap_between_confidence_and_accuracy():
    conf = np.array([0.9] * 10)
    assert expected_calibration_error(conf, np.array([1] * 9 + [0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    # two bins: 0.25 (0 of 2 right) and 0.75 (2 of 2 right): gaps 0.25 and 0.25
    conf, right = np.array([0.25, 0.25, 0.75, 0.75]), np.array([0, 0, 1, 1])
    assert expected_calibration_error(conf, right) == pytest.approx(0.25)
    assert expected_calibration_error(conf, right, n_bins=2, strategy="quantile") == pytest.approx(0.25)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError, match="unknown ECE strategy"):
        expected_calibration_error(conf, right, strategy="kde")


def test_calibration_metrics_match_scikit_learn():
    from sklearn.metrics import brier_score_loss, log_loss

    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=200)
    y = rng.integers(0, 3, size=200)
    m = calibration_metrics(proba, y)
    assert m["brier"] == pytest.approx(brier_score_loss(y, proba, labels=[0, 1, 2]))
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]))
    assert 0 < m["ece"] < 1 and 0 < m["ece_adaptive"] < 1
    # multi-label: every (text, label) probability is one binary prediction
    yy = rng.random((50, 4)) < 0.3
    p = rng.random((50, 4))
    ml = calibration_metrics(p, yy, "multilabel")
    assert ml["brier"] == pytest.approx(np.mean((p - yy) ** 2))
    assert ml["ece"] == pytest.approx(expected_calibration_error(p.ravel(), yy.ravel()))


# --------------------------------------------------------------------------- the fits
def overconfident_sample(n: int = 3000, k: int = 4, temperature: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(z * temperature): over-confident by ``temperature``."""
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])
    return softmax(z * temperature, axis=1), y


def test_temperature_recovers_the_over_confidence_and_keeps_the_argmax():
    proba, y = overconfident_sample()
    cal = fit_method("temperature", proba, y, list("abcd"), "multiclass")
    assert cal.temperatures[0] == pytest.approx(3.0, rel=0.1)
    out = cal.apply(proba)
    assert np.array_equal(out.argmax(axis=1), proba.argmax(axis=1))
    assert calibration_metrics(out, y)["ece"] < 0.3 * calibration_metrics(proba, y)["ece"]


def test_bcts_recovers_a_planted_temperature_and_base_rate_and_round_trips(tmp_path):
    from scipy.special import softmax

    from textclf.core.calibration import load_calibrator, write_calibrator

    rng = np.random.default_rng(4)
    n, k = 6000, 3
    z = rng.normal(scale=1.5, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])
    shift = np.array([0.0, 1.2, -0.8])  # the model's base rates are off: class 1 too often, class 2 too rarely
    proba = softmax(z * 2.0 + shift, axis=1)  # and it is over-confident (T 2)
    cal = fit_method("bcts", proba, y, list("abc"), "multiclass")
    # softmax(log p / T + b) undoes it: T = 2, b = -shift / T (relative to the first class)
    assert cal.temperatures[0] == pytest.approx(2.0, rel=0.1)
    assert cal.biases == pytest.approx([0.0, -0.6, 0.4], abs=0.1)
    temp = fit_method("temperature", proba, y, list("abc"), "multiclass")
    assert calibration_metrics(cal.apply(proba), y)["log_loss"] < calibration_metrics(temp.apply(proba), y)["log_loss"] - 0.01
    assert cal.params() == {"temperature": cal.temperatures[0], "biases": dict(zip("abc", cal.biases, strict=True))}
    # a class absent from valid keeps its bias at 0 (no push toward never predicting it)
    absent = fit_method("bcts", proba[y != 2], y[y != 2], list("abc"), "multiclass")
    assert absent.biases[2] == 0.0
    # stored as JSON and read back to the same function
    name = write_calibrator(tmp_path, cal)
    meta = {"labels": list("abc"), "calibration": {"file": name}}
    back = load_calibrator(tmp_path, meta)
    np.testing.assert_allclose(back.apply(proba), cal.apply(proba))
    # multi-label: Platt scaling per label
    logits = rng.normal(size=(4000, 2)) * 1.5
    yy = rng.random((4000, 2)) < 1 / (1 + np.exp(-logits))
    off = 1 / (1 + np.exp(-(logits * np.array([3.0, 1.0]) + np.array([0.0, 1.5]))))
    ml = fit_method("bcts", off, yy, ["x", "y"], "multilabel")
    assert ml.temperatures == pytest.approx([3.0, 1.0], rel=0.15) and ml.biases == pytest.approx([0.0, -1.5], abs=0.15)


def test_isotonic_is_scikit_learns_step_function():
    from sklearn.isotonic import IsotonicRegression

    proba, y = overconfident_sample(k=2)
    cal = fit_method("isotonic", proba, y, ["a", "b"], "multiclass")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(proba[:, 1], y == 1)
    grid = np.column_stack([1 - np.linspace(-0.1, 1.1, 101), np.linspace(-0.1, 1.1, 101)])
    assert np.allclose(cal.apply(grid)[:, 1], iso.predict(grid[:, 1]))
    assert np.allclose(cal.apply(grid).sum(axis=1), 1.0)
    # multi-class: one-vs-rest per class, rows renormalised
    proba4, y4 = overconfident_sample(k=4)
    out = fit_method("isotonic", proba4, y4, list("abcd"), "multiclass").apply(proba4)
    assert np.allclose(out.sum(axis=1), 1.0)


def test_auto_picks_by_cross_validated_log_loss_and_records_before_after():
    proba, y = overconfident_sample()
    cal, record = fit_calibration("auto", proba, y, list("abcd"), "multiclass")
    scores = record["cv_log_loss"]
    assert set(scores) == {"none", "temperature", "bcts", "isotonic"}
    assert record["chosen"] == min(scores, key=scores.get) != "none"
    assert record["valid_after"]["log_loss"] < record["valid_before"]["log_loss"]
    # already calibrated probabilities: nothing beats leaving them alone by much, and none stays a candidate
    from scipy.special import softmax

    _, record_cal = fit_calibration("auto", softmax(np.log(proba) / 3.0, axis=1), y, list("abcd"), "multiclass")
    assert record_cal["cv_log_loss"]["none"] <= min(record_cal["cv_log_loss"].values()) + 0.01


def test_multilabel_calibrates_each_label_on_its_own():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2000, 3)) * np.array([1.0, 2.0, 0.5])
    y = rng.random((2000, 3)) < 1 / (1 + np.exp(-logits))
    over = 1 / (1 + np.exp(-logits * np.array([2.0, 4.0, 1.0])))  # label 0 two-fold, label 1 four-fold, label 2 not
    cal = fit_method("temperature", over, y, ["x", "y", "z"], "multilabel")
    assert cal.temperatures == pytest.approx([2.0, 4.0, 1.0], rel=0.2)
    assert cal.params() == {"temperatures": dict(zip(["x", "y", "z"], cal.temperatures, strict=True))}
    iso = fit_method("isotonic", over, y, ["x", "y", "z"], "multilabel")
    out = iso.apply(over)
    assert all(c is not None for c in iso.curves)  # one curve per label, rows not renormalised
    assert not np.allclose(out.sum(axis=1), 1.0)
    for j in range(3):
        assert calibration_metrics(out[:, [j]], y[:, [j]], "multilabel")["ece"] <= \
            calibration_metrics(over[:, [j]], y[:, [j]], "multilabel")["ece"] + 1e-9


class _Base(Predictor):
    kind = "calibration_test"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        return cls(model_dir, meta)

    def predict_proba(self, texts):
        return np.tile([0.9, 0.1], (len(texts), 1))


class _Derived(_Base):
    def predict_proba(self, texts):  # a subclass's override calling super(): calibrated once, not twice
        return super().predict_proba(texts)


def test_predict_proba_is_calibrated_once_in_every_subclass():
    cal = Calibrator("temperature", "multiclass", ["a", "b"], temperatures=[2.0])
    for cls in (_Base, _Derived):
        p = cls(".", {"labels": ["a", "b"]})
        assert np.allclose(p.predict_proba(["x"]), [[0.9, 0.1]])
        p.calibration = cal
        once = cal.apply(np.array([[0.9, 0.1]]))
        assert np.allclose(p.predict_proba(["x"]), once) and not np.allclose(once, [[0.9, 0.1]])
        assert np.allclose(p.uncalibrated_proba(["x"]), [[0.9, 0.1]])
        assert np.allclose(p.predict_proba(["x"]), once)  # uncalibrated_proba switched it back on


# --------------------------------------------------------------------------- fastText end to end
@pytest.fixture(scope="module")
def overconfident(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "ft"
    train(out, *OVERCONFIDENT, "--set", "calibration=temperature")
    return out


def test_training_with_calibration_lowers_ece_on_an_over_confident_model(overconfident):
    meta = json.loads((overconfident / "meta.json").read_text())
    block = meta["calibration"]
    assert block["method"] == block["chosen"] == "temperature" and block["params"]["temperature"] > 2
    assert block["file"] in meta["files"] and (overconfident / block["file"]).is_file()
    assert block["valid_after"]["ece"] < 0.5 * block["valid_before"]["ece"]
    predictor = load_predictor(overconfident)
    texts, labels = texts_labels(DATA / "test.csv")
    y = np.array([predictor.labels.index(label) for label in labels])
    raw, cal = predictor.uncalibrated_proba(texts), predictor.predict_proba(texts)
    before, after = calibration_metrics(raw, y), calibration_metrics(cal, y)
    assert before["ece"] > 0.12 and after["ece"] < 0.6 * before["ece"]
    assert after["log_loss"] < before["log_loss"] and after["brier"] < before["brier"]
    assert np.array_equal(raw.argmax(axis=1), cal.argmax(axis=1))  # temperature keeps every decision
    assert meta["metrics"]["test"]["ece"] == pytest.approx(after["ece"], abs=1e-9)
    assert "calibration  ECE=" in (overconfident / "metrics.txt").read_text()


def test_calibrate_round_trip_in_another_process(overconfident, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(overconfident, model)
    old = json.loads((model / "meta.json").read_text())["calibration"]["file"]
    result = run("calibrate", "--model_path", model, "--valid_path", DATA / "valid.csv", "--method", "isotonic")
    assert result.exit_code == 0, result.output
    assert "calibration isotonic: valid ECE" in result.output
    meta = json.loads((model / "meta.json").read_text())
    new = meta["calibration"]["file"]
    assert new != old and not (model / old).exists() and old not in meta["files"] and new in meta["files"]
    texts = texts_labels(DATA / "test.csv")[0][:50]
    here = load_predictor(model).predict_proba(texts)
    code = ("import json, sys; from textclf.core.loading import load_predictor; "
            "print(json.dumps(load_predictor(sys.argv[1]).predict_proba(json.loads(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(model), json.dumps(texts)], capture_output=True, text=True, check=True)
    assert np.allclose(np.array(json.loads(out.stdout)), here, atol=1e-12)
    assert not np.allclose(here, load_predictor(overconfident).predict_proba(texts))
    # --method bcts: a temperature and a bias per class, shown, stored, loaded by another process the same
    result = run("calibrate", "--model_path", model, "--valid_path", DATA / "valid.csv", "--method", "bcts")
    assert result.exit_code == 0, result.output
    params = json.loads((model / "meta.json").read_text())["calibration"]["params"]
    assert set(params) == {"temperature", "biases"} and params["biases"]["negative"] == 0.0
    assert (f"calibration bcts (T={params['temperature']:.3f}; biases negative +0.000, "
            f"positive {params['biases']['positive']:+.3f}): valid ECE") in result.output
    here = load_predictor(model).predict_proba(texts)
    out = subprocess.run([sys.executable, "-c", code, str(model), json.dumps(texts)], capture_output=True, text=True, check=True)
    assert np.allclose(np.array(json.loads(out.stdout)), here, atol=1e-12)
    new = json.loads((model / "meta.json").read_text())["calibration"]["file"]
    # --method none removes it: the family's own probabilities again
    assert run("calibrate", "--model_path", model, "--method", "none").exit_code == 0
    meta = json.loads((model / "meta.json").read_text())
    assert "calibration" not in meta and new not in meta["files"] and not (model / new).exists()
    assert np.allclose(load_predictor(model).predict_proba(texts), load_predictor(overconfident).uncalibrated_proba(texts))


def test_bad_input_is_one_line_exit_2(overconfident, tmp_path):
    def fails(*args) -> str:
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1
        return result.output.strip()

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\ngreat,positive\nmeh,neutral\nso so,neutral\n")
    assert fails("calibrate", "--model_path", overconfident, "--valid_path", unknown) == \
        f"Error: {unknown}:3: label(s) 'neutral' unknown to the model (its labels: negative, positive)"  # its first row
    few = tmp_path / "few.csv"
    few.write_text("text,label\ngreat,positive\nbad,negative\n")
    assert fails("calibrate", "--model_path", overconfident, "--valid_path", few) == \
        "Error: calibration needs at least 10 labelled valid rows, got 2"
    assert fails("calibrate", "--model_path", tmp_path / "nope", "--valid_path", few) == \
        f"Error: {tmp_path / 'nope'}: model directory not found"
    assert "--valid_path is required" in fails("calibrate", "--model_path", overconfident)
    assert fails("train", "fasttext", "--train_path", DATA / "train.csv", "--valid_path", DATA / "valid.csv",
                 "--output_dir", tmp_path / "x", "--set", "calibration=platt") == \
        "Error: calibration 'platt': choose one of none, temperature, bcts, isotonic, auto"
    assert not (tmp_path / "x" / "meta.json").exists()


def test_an_edited_calibration_file_is_refused(overconfident, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(overconfident, model)
    meta = json.loads((model / "meta.json").read_text())
    path = model / meta["calibration"]["file"]
    path.write_text(path.read_text().replace('"temperatures": [', '"temperatures": [1'))
    with pytest.raises(ModelError, match="calibration-"):
        load_predictor(model)
    # a file that passes the hash check but is not a calibrator (meta.json rewritten by hand): one line
    from textclf.core.integrity import file_record

    path.write_text('{"format": 1, "method": "platt"}')
    meta["files"][path.name] = file_record(path)
    (model / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"not a textclf calibration file: method 'platt'"):
        load_calibrator(model, meta)


def test_thresholds_and_ensembles_use_the_calibrated_probabilities(overconfident, tmp_path):
    other = tmp_path / "plain"
    train(other, "--set", "model.dim=20", "--set", "model.bucket=20000", "--set", "model.thread=1")
    ens = tmp_path / "ens"
    result = run("ensemble", "--model_path", overconfident, "--model_path", other, "--valid_path", DATA / "valid.csv",
                 "--output_dir", ens, "--method", "weighted", "--bags", "0")
    assert result.exit_code == 0, result.output
    ensemble = load_predictor(ens)
    member = ensemble.members[0]
    assert member.calibration is not None and ensemble.members[1].calibration is None
    texts = texts_labels(DATA / "test.csv")[0][:40]
    # the members' calibrated probabilities (then the ensemble's own temperature per member), not their raw ones
    calibrated = ensemble.combine(ensemble.tempered([m.predict_proba(texts) for m in ensemble.members]))
    raw = ensemble.combine(ensemble.tempered([m.uncalibrated_proba(texts) for m in ensemble.members]))
    assert np.allclose(ensemble.predict_proba(texts), calibrated)
    assert ensemble.weights[0] == 0 or not np.allclose(calibrated, raw)
    # the ensemble itself can be calibrated too, like any model directory
    assert run("calibrate", "--model_path", ens, "--valid_path", DATA / "valid.csv", "--method", "temperature").exit_code == 0
    assert load_predictor(ens).calibration is not None
    # tune-thresholds reads predict_proba: it tunes on the calibrated probabilities
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(overconfident, tuned)
    result = run("tune-thresholds", "--model_path", tuned, "--valid_path", DATA / "valid.csv", "--json")
    assert result.exit_code == 0, result.output


def test_multilabel_fasttext_calibrates_per_label(tmp_path):
    meta = train(tmp_path / "ml", "--set", "model.lr=0.5", "--set", "model.epoch=50", "--set", "model.bucket=20000",
                 "--set", "model.dim=20", "--set", "calibration=temperature", data=MULTILABEL, ext="jsonl")
    labels = meta["labels"]
    block = meta["calibration"]
    assert set(block["params"]["temperatures"]) == set(labels)
    assert block["valid_after"]["log_loss"] <= block["valid_before"]["log_loss"]
    predictor = load_predictor(tmp_path / "ml")
    proba = predictor.predict_proba(["rain storm flood vote", "goal match team"])
    assert proba.shape == (2, len(labels)) and not np.allclose(proba.sum(axis=1), 1.0)
    result = run("calibrate", "--model_path", tmp_path / "ml", "--valid_path", MULTILABEL / "valid.jsonl", "--method", "isotonic",
                 "--json")
    assert result.exit_code == 0, result.output
    stored = json.loads(result.output)
    assert set(stored["params"]["breakpoints"]) == set(labels)
    assert stored["valid_after"]["ece"] <= stored["valid_before"]["ece"]


def test_leaderboard_shows_the_calibrated_probabilities_scores(overconfident):
    result = run("leaderboard", overconfident, "--json", "--no-isolate", "--n_boot", "10")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output[result.output.index("{"):])["rows"][0]  # after the progress line
    test = json.loads((overconfident / "meta.json").read_text())["metrics"]["test"]
    for key in ("ece", "brier", "log_loss"):
        assert row[key] == pytest.approx(test[key], abs=1e-9)
    markdown = run("leaderboard", overconfident, "--no-isolate", "--n_boot", "10").output
    assert "| ECE | Brier | log-loss |" in markdown


def test_bench_rotations_test_every_row_once_and_the_ece_floor_is_what_sampling_adds(tweets, tmp_path, monkeypatch):
    """bench_trust --rotations: every text is a test text exactly once; the ECE floor of a calibrated model."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_common import rotation_paths
    from bench_trust import ece_floor

    from textclf.core.data import read_labelled

    rows = [read_labelled(tweets[s]) for s in ("train", "valid", "test")]
    everything = sorted(zip([t for d in rows for t in d.texts], [x for d in rows for x in d.labels], strict=True))
    rotations = rotation_paths({k: str(v) for k, v in tweets.items()}, tmp_path, 10)
    seen = []
    for r, split in enumerate(rotations):
        parts = {s: read_labelled(split[s]) for s in ("train", "valid", "test")}
        assert sorted(p for d in parts.values() for p in zip(d.texts, d.labels, strict=True)) == everything
        assert len(parts["test"]) in (419, 420, 421) and len(parts["valid"]) in (419, 420, 421)
        assert parts["valid"].texts == read_labelled(rotations[(r + 1) % 10]["test"]).texts  # valid = the next test fold
        seen += parts["test"].texts
    assert sorted(seen) == sorted(t for t, _ in everything)  # each row tested once
    # a model calibrated by construction: the ECE that sampling alone gives shrinks with the number of texts
    conf = np.random.default_rng(1).uniform(0.5, 1.0, 5000)
    proba = np.column_stack([conf, 1 - conf])
    assert 0.040 < ece_floor(proba, 420) < 0.050 and 0.010 < ece_floor(proba, 4196) < 0.017
    assert ece_floor(proba, 420, quantile=0.95) > ece_floor(proba, 420)
    assert ece_floor(np.array([[1.0, 0.0]] * 10), 420) == 0.0  # sure and always right: nothing to sample

"""Loading a model directory runs no code the user did not agree to (issue 23, "Safety v3").

Planted code (a plug-in file, pickles in every place textclf used to write one, a torch checkpoint)
writes a marker file when it runs: without consent it must be refused with one line and the
marker must not exist; with ``--trust-code`` / ``TEXTCLF_TRUST_CODE=1`` / ``trust_code=True`` it runs.
Paths in meta.json / onnx.json stay inside the model directory. A hypothesis fuzz mutates a real
fastText model's meta.json / onnx.json: no traceback, no marker, a one-line error or success.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textclf.core.errors import ModelError, TextclfError
from textclf.core.integrity import file_record, load_checkpoint
from textclf.core.loading import load_predictor
from textclf.core.skops_io import TRUSTED_TYPES, load_sklearn, save_sklearn

sys.path.insert(0, str(Path(__file__).parent))
from conftest import head_csv, train_family_cli  # noqa: E402

CLI = [sys.executable, "-c", "from textclf.cli import main; main()"]
CONSENT = ("pass --trust-code (or set TEXTCLF_TRUST_CODE=1, or trust_code=True in Python)")


class Marker:
    """Unpickling it writes ``path`` (what a planted pickle would do instead of something worse)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def plant_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Marker(marker)))
    return path


def no_trust_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TEXTCLF_TRUST_CODE"}


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env or no_trust_env(), timeout=300)


def one_line_exit_2(done) -> str:
    """The single ``Error:`` line of a refused command (exit 2, no traceback)."""
    lines = [line for line in done.stderr.strip().splitlines() if " INFO " not in line]  # training's log lines
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tweets):
    d = tmp_path_factory.mktemp("safety_data")
    (d / "texts.txt").write_text("good day\nawful news\n")
    return {"train": head_csv(tweets["train"], d / "train.csv", 300), "valid": head_csv(tweets["valid"], d / "valid.csv", 100),
            "test": head_csv(tweets["test"], d / "test.csv", 60), "texts": d / "texts.txt"}


@pytest.fixture(scope="module")
def fasttext_model(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("safety_ft") / "model"
    from textclf.cli.family_cmd import train_command

    args = ["--train_path", data["train"], "--valid_path", data["valid"], "--output_dir", out, "--n_trials", "0", "--set", "model.epoch=2",
            "--set", "model.dim=8"]
    result = CliRunner().invoke(train_command("fasttext"), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def ft(fasttext_model, tmp_path) -> Path:
    """A private copy of the fastText model (tests edit it)."""
    return Path(shutil.copytree(fasttext_model, tmp_path / "ft"))


def edit_meta(model_dir: Path, **changes) -> dict:
    meta = json.loads((model_dir / "meta.json").read_text())
    meta.update(changes)
    (model_dir / "meta.json").write_text(json.dumps(meta))
    return meta


# --------------------------------------------------------------------------- plug-in code
PLUGIN = '''
from pathlib import Path
Path({marker!r}).write_text("ran")
from textclf.core.registry import Family, register_family
from textclf.families.fasttext.model import FastTextPredictor

class MarkerPredictor(FastTextPredictor):
    kind = "marker_family"

register_family(Family(name="marker_family", fit=lambda cfg, splits, context: None, predictor=MarkerPredictor))
'''


def make_plugin_model(ft: Path, marker: Path) -> Path:
    """The fastText model relabelled as a plug-in family whose code (in the directory) writes ``marker``."""
    (ft / "plugin").mkdir()
    (ft / "plugin" / "marker.py").write_text(PLUGIN.format(marker=str(marker)))
    meta = json.loads((ft / "meta.json").read_text())
    edit_meta(ft, kind="marker_family", plugin_code="plugin/marker.py",
              files={**meta["files"], "plugin/marker.py": file_record(ft / "plugin" / "marker.py")})
    return ft


def test_plugin_code_is_refused_without_consent_and_runs_with_it(ft, data, tmp_path):
    marker = tmp_path / "marker"
    model = make_plugin_model(ft, marker)
    out = tmp_path / "out.txt"
    for command in (["predict", "--model_path", model, "--input_path", data["texts"], "--output_path", out],
                    ["evaluate", "--model_path", model, "--data_path", data["valid"]]):
        line = one_line_exit_2(cli(*command))
        assert line == (f"Error: {model / 'plugin' / 'marker.py'}: loading this model would import the plug-in code in "
                        f"this file, which can run arbitrary code; if you trust the model directory, {CONSENT}")
        assert not marker.exists() and not out.exists()
    with pytest.raises(ModelError, match="marker.py: loading this model would import the plug-in code"):
        load_predictor(model, trust_code=False)
    assert not marker.exists()

    done = cli("predict", "--trust-code", "--model_path", model, "--input_path", data["texts"], "--output_path", out)
    assert done.returncode == 0, done.stderr and marker.read_text() == "ran"
    assert f"warning: model {model} runs plug-in code from its directory" in done.stderr
    assert len(out.read_text().splitlines()) == 2
    marker.unlink()
    out.unlink()
    done = cli("predict", "--model_path", model, "--input_path", data["texts"], "--output_path", out,
               env={**no_trust_env(), "TEXTCLF_TRUST_CODE": "1"})
    assert done.returncode == 0, done.stderr
    assert marker.exists() and len(out.read_text().splitlines()) == 2


def test_a_family_registered_from_one_model_directory_needs_consent_for_the_next(ft, tmp_path):
    """In one process, trusting model A's plug-in file does not let model B (same kind) load without consent."""
    marker = tmp_path / "marker"
    first = make_plugin_model(ft, marker)
    second = shutil.copytree(first, tmp_path / "second")
    assert load_predictor(first, trust_code=True).kind == "marker_family" and marker.read_text() == "ran"
    marker.unlink()
    with pytest.raises(ModelError, match=r"second/plugin/marker\.py: loading this model would run plug-in code \(its family "
                                         r"came from a model directory's code, not an installed package\)"):
        load_predictor(second, trust_code=False)
    assert load_predictor(second, trust_code=True).kind == "marker_family"
    assert not marker.exists()  # the family's code was imported once, from the first directory


def test_every_model_loading_command_has_trust_code():
    from textclf.cli import cli as root

    for name in ("predict", "evaluate", "serve", "export", "leaderboard", "report", "ensemble", "tune-thresholds"):
        result = CliRunner().invoke(root, [name, "--help"])
        assert "--trust-code" in result.output, name


def test_trust_code_flag_ends_with_its_command(ft, data, tmp_path):
    """In one process (CliRunner), a command's --trust-code does not leak into the next command."""
    from textclf.cli.predict_cmd import predict
    from textclf.core.trust import code_trusted

    out = tmp_path / "o.txt"
    result = CliRunner().invoke(predict, ["--trust-code", "--model_path", str(ft), "--input_path", str(data["texts"]),
                                          "--output_path", str(out)])
    assert result.exit_code == 0, result.output
    assert code_trusted() is (os.environ.get("TEXTCLF_TRUST_CODE") == "1")


# --------------------------------------------------------------------------- pickles
def test_skops_allow_list_covers_every_object_textclf_writes(tmp_path):
    """The types textclf saves (every embeddings classifier, the TF-IDF pipelines, heads, stackers) need no more trust."""
    import skops.io as sio
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from textclf.core.sklearn_model import one_vs_rest
    from textclf.families.common.encoders import TfidfSvdEncoder
    from textclf.families.embeddings.classifiers import CLASSIFIERS, make_classifier
    from textclf.families.embeddings.model import TRUSTED_TYPES as EMB_TYPES

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)), np.array(["a", "b", "c"] * 20)
    texts = [f"word{i % 7} other{i % 3} thing{i % 5}" for i in range(60)]
    objects = [make_classifier(name, {}, n_train=60, min_class_count=20).fit(x, y) for name in CLASSIFIERS]
    objects.append(TfidfSvdEncoder(n_components=4).fit(texts).pipeline)
    objects.append(Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2))), ("lr", LogisticRegression())]).fit(texts, y))
    # label sets: one-vs-rest, with a label on every training row (scikit-learn keeps a constant predictor for it)
    indicator = np.stack([np.ones(60, dtype=int), (np.arange(60) % 2 == 0).astype(int)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Label 0 is present in all training examples"
        objects.append(one_vs_rest(LogisticRegression(), multilabel=True).fit(x, indicator))
    for i, obj in enumerate(objects):
        path = save_sklearn(obj, tmp_path / f"{i}.skops")
        assert set(sio.get_untrusted_types(file=path)) <= TRUSTED_TYPES | set(EMB_TYPES), type(obj).__name__
        again = load_sklearn(path, also=EMB_TYPES, needs=())
        assert type(again) is type(obj)


class Evil:
    """A type textclf never writes: skops would rebuild it only when told to trust it."""

    def predict_proba(self, x):
        return x


def test_skops_refuses_untrusted_types_and_planted_pickles(tmp_path):
    import skops.io as sio

    sio.dump({"model": Evil()}, tmp_path / "evil.skops")
    with pytest.raises(ModelError, match=r"evil.skops: refusing to load type\(s\) textclf does not write: "
                                         r"\S*test_safety_loading.Evil; the file was not written by textclf or was edited"):
        load_sklearn(tmp_path / "evil.skops")
    marker = tmp_path / "marker"
    plant_pickle(tmp_path / "planted.skops", marker)
    with pytest.raises(ModelError, match="planted.skops: not a readable skops file"):
        load_sklearn(tmp_path / "planted.skops")
    save_sklearn(np.zeros(3), tmp_path / "array.skops")
    with pytest.raises(ModelError, match=r"array.skops: expected a classifier with predict_proba, "
                                         r"found a numpy.ndarray without predict_proba; "):
        load_sklearn(tmp_path / "array.skops")
    assert not marker.exists()


@pytest.fixture(scope="module")
def tfidf_embeddings(tmp_path_factory, data) -> Path:
    """A real embeddings model over the TF-IDF + SVD encoder (no neural model; a few seconds)."""
    cache = tmp_path_factory.mktemp("safety_cache")
    os.environ["TEXTCLF_CACHE"] = str(cache)
    try:
        out = tmp_path_factory.mktemp("safety_emb") / "model"
        train_family_cli("embeddings", data, out, "--model_name", "tfidf_svd", "--classifier", "logreg",
                         "--set", "tfidf_svd.n_components=16")
    finally:
        os.environ.pop("TEXTCLF_CACHE", None)
    return out


@pytest.mark.slow  # trains an embeddings model per file (quick: test_skops_allow_list_covers_every_object_textclf_writes)
@pytest.mark.parametrize("name", ["classifier.skops", "tfidf_svd.skops"])
def test_planted_pickle_in_an_embeddings_model_is_refused(tfidf_embeddings, tmp_path, data, name):
    model = Path(shutil.copytree(tfidf_embeddings, tmp_path / "emb"))
    assert {"classifier.skops", "tfidf_svd.skops"} <= set(json.loads((model / "meta.json").read_text())["files"])
    marker = tmp_path / "marker"
    plant_pickle(model / name, marker)
    meta = json.loads((model / "meta.json").read_text())
    edit_meta(model, files={**meta["files"], name: file_record(model / name)})  # whoever plants can edit meta.json too
    line = one_line_exit_2(cli("predict", "--model_path", model, "--input_path", data["texts"], "--output_path",
                               tmp_path / "out.txt"))
    assert f"{model / name}: not a readable skops file" in line
    assert not marker.exists()


@pytest.mark.slow  # trains an embeddings model (quick: tests/test_compat.py's v1 fixtures)
def test_legacy_joblib_classifier_needs_trust_code(tfidf_embeddings, tmp_path, data):
    """A classifier.joblib (older versions) loads only with --trust-code; meta.json's model_file names it."""
    import joblib

    model = Path(shutil.copytree(tfidf_embeddings, tmp_path / "emb"))
    clf = load_sklearn(model / "classifier.skops")
    joblib.dump(clf, model / "classifier.joblib")
    (model / "classifier.skops").unlink()
    meta = json.loads((model / "meta.json").read_text())
    files = {k: v for k, v in meta["files"].items() if k != "classifier.skops"}
    edit_meta(model, model_file="classifier.joblib", files={**files, "classifier.joblib": file_record(model / "classifier.joblib")})
    out = tmp_path / "out.txt"
    line = one_line_exit_2(cli("predict", "--model_path", model, "--input_path", data["texts"], "--output_path", out))
    assert line == (f"Error: {model / 'classifier.joblib'}: loading this model would unpickle this file (saved with "
                    f"joblib by an older textclf), which can run arbitrary code; if you trust the model directory, {CONSENT}")
    done = cli("predict", "--trust-code", "--model_path", model, "--input_path", data["texts"], "--output_path", out)
    assert done.returncode == 0, done.stderr
    assert f"note: unpickling {model / 'classifier.joblib'}" in done.stderr  # the file actually deserialized
    assert len(out.read_text().splitlines()) == 2


def test_planted_tfidf_svd_cache_entry_is_refused_and_refitted(tmp_path, caplog):
    from textclf.families.common.cache import EmbeddingCache, cache_key, sha256_texts
    from textclf.families.common.encoders import TFIDF_SVD, TfidfSvdEncoder

    texts = [f"word{i % 7} other{i % 3} thing{i % 5}" for i in range(40)]
    enc = TfidfSvdEncoder(n_components=4)
    cache = EmbeddingCache(tmp_path / "cache")
    cache.root.mkdir()
    key = cache_key(TFIDF_SVD, json.dumps(enc.params, sort_keys=True), sha256_texts(texts), None, "tfidf", True)
    marker = tmp_path / "marker"
    plant_pickle(cache.artifact(key, ".skops"), marker)
    with caplog.at_level("WARNING"):
        assert enc.fit_cached(texts, cache) == key
    assert not marker.exists()
    assert "tfidf_svd cache entry refused" in caplog.text and "refitting" in caplog.text
    assert enc.encode(texts[:3]).shape == (3, 4)
    again = TfidfSvdEncoder(n_components=4)
    again.fit_cached(texts, cache)  # the refitted entry is a real skops file now: a hit
    np.testing.assert_allclose(again.encode(texts[:3]), enc.encode(texts[:3]), atol=1e-6)


def test_planted_setfit_head_and_stacker_are_refused(ft, tmp_path):
    from textclf.families.setfit.head import load_head

    marker = tmp_path / "marker"
    plant_pickle(tmp_path / "head.skops", marker)
    with pytest.raises(ModelError, match="head.skops: not a readable skops file"):
        load_head(tmp_path, {"type": "logreg", "n_classes": 2})
    plant_pickle(tmp_path / "head.joblib", marker)
    with pytest.raises(ModelError, match="head.joblib: loading this model would unpickle this file"):
        load_head(tmp_path, {"type": "logreg", "n_classes": 2, "file": "head.joblib"})
    with pytest.raises(ModelError, match="'head.file' '../head.skops' points outside the model directory"):
        load_head(tmp_path / "sub", {"type": "logreg", "n_classes": 2, "file": "../head.skops"})
    # a stacking ensemble over the real fastText model, its stacker planted
    ens = tmp_path / "ens"
    shutil.copytree(ft, ens / "members" / "0_ft")
    plant_pickle(ens / "stacker.skops", marker)
    labels = json.loads((ft / "meta.json").read_text())["labels"]
    (ens / "meta.json").write_text(json.dumps({
        "kind": "ensemble", "labels": labels, "method": "stacking", "weights": None, "stacker_file": "stacker.skops",
        "members": [{"path": "members/0_ft", "kind": "fasttext"}], "files": {"stacker.skops": file_record(ens / "stacker.skops")}}))
    with pytest.raises(ModelError, match="stacker.skops: not a readable skops file"):
        load_predictor(ens)
    assert not marker.exists()


def test_planted_pickle_as_the_example_plugins_model_is_refused(ft, tmp_path):
    """examples/plugins/tfidf_logreg.py (SklearnPredictor): model.skops must be a skops file; model.joblib needs consent."""
    from textclf.core.registry import load_code

    load_code(Path(__file__).parents[1] / "examples" / "plugins" / "tfidf_logreg.py")
    from textclf.core.registry import all_families

    cls = all_families()["tfidf_logreg"].predictor_class()
    marker = tmp_path / "marker"
    meta = {"kind": "tfidf_logreg", "labels": ["a", "b"]}
    plant_pickle(tmp_path / "model.skops", marker)
    with pytest.raises(ModelError, match="model.skops: not a readable skops file"):
        cls.load(tmp_path, meta)
    plant_pickle(tmp_path / "model.joblib", marker)
    with pytest.raises(ModelError, match="model.joblib: loading this model would unpickle this file"):
        cls.load(tmp_path, {**meta, "model_file": "model.joblib"}, None)
    assert not marker.exists()


# --------------------------------------------------------------------------- torch checkpoints
@pytest.mark.slow  # trains a BiLSTM to plant a checkpoint (quick: test_plugin_code_is_refused_without_consent_and_runs_with_it)
def test_planted_checkpoint_is_refused(tmp_path, data):
    import torch

    marker = tmp_path / "marker"
    path = tmp_path / "last.pth"
    torch.save({"epoch": 1, "evil": Marker(marker)}, path)
    with pytest.raises(ModelError, match=r"last.pth: refused: it holds objects other than weights \(.*\), which loading "
                                         "would run as code"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"epoch": 1, "state": {"w": torch.zeros(2)}, "score": np.float64(0.5)}, tmp_path / "ok.pth")
    assert load_checkpoint(tmp_path / "ok.pth")["score"] == 0.5  # numpy scalars (logged metrics) are allowed
    # train lstm --resume with a planted checkpoint: one line, exit 2, nothing ran
    out = tmp_path / "lstm"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "evil": Marker(marker)}, out / "checkpoints" / "last.ckpt")
    done = cli("train", "lstm", "--train_path", data["train"], "--valid_path", data["valid"], "--output_dir", out,
               "--device", "cpu", "--epochs", "1", "--resume", "--set", "model.embedding_dim=8", "--set", "model.hidden_size=8")
    line = one_line_exit_2(done)
    assert "last.ckpt: refused: it holds objects other than weights" in line
    assert not marker.exists()


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("value, problem", [
    ("../../other/model.bin", "points outside the model directory"),
    ("/etc/passwd", "points outside the model directory"),
    ("link.bin", "a symlink out of the model directory"),
    ("copy.bin", "is not listed (size and SHA-256) in 'files'"),
])
def test_model_file_stays_inside_the_directory_and_is_listed(ft, data, tmp_path, value, problem):
    outside = tmp_path / "elsewhere.bin"
    shutil.copy(ft / "model.bin", outside)
    shutil.copy(ft / "model.bin", ft / "copy.bin")
    if value == "link.bin":
        (ft / "link.bin").symlink_to(outside)
    edit_meta(ft, model_file=value)
    line = one_line_exit_2(cli("predict", "--model_path", ft, "--input_path", data["texts"], "--output_path", tmp_path / "o"))
    assert problem in line and "Error: " in line


def test_a_symlink_out_of_the_directory_is_refused(ft, data, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    (ft / "model.bin").rename(outside)
    (ft / "model.bin").symlink_to(outside)
    line = one_line_exit_2(cli("predict", "--model_path", ft, "--input_path", data["texts"], "--output_path", tmp_path / "o"))
    assert line.startswith(f"Error: {ft.resolve() / 'model.bin'}: a symlink out of the model directory")


@pytest.mark.parametrize("default", ["../x.onnx", "/etc/passwd", "model.onnx"])
def test_onnx_default_stays_inside_and_is_listed(tmp_path, default):
    from textclf.core.onnx_runtime import onnx_file_of

    (tmp_path / "model.onnx").write_bytes(b"x")
    info = {"files": {"model.int8.onnx": {"bytes": 1}}, "default": default}
    with pytest.raises(ModelError, match="onnx.json: 'default'"):
        onnx_file_of(tmp_path, info, None)


def test_encoder_weights_are_verified(tmp_path):
    from textclf.families.common.encoders import load_encoder

    with pytest.raises(ModelError, match="its weights differ from the ones the model was trained with"):
        load_encoder(tmp_path, {"type": "sentence", "name": "minilm", "weights": "0" * 64})


# --------------------------------------------------------------------------- fuzz
PATHS = st.sampled_from(["model.bin", "../model.bin", "../../other/model.bin", "/etc/passwd", "plugin/evil.py",
                         "evil.joblib", "meta.json", "", ".", "plugin", "model.bin/..", "C:\\x", "~/.ssh/id_rsa"])
RECORDS = st.dictionaries(st.sampled_from(["bytes", "sha256"]), st.one_of(st.integers(-1, 10**9), st.text(max_size=64)))
VALUES = st.one_of(PATHS, st.none(), st.integers(-3, 3), st.text(max_size=12), st.lists(PATHS, max_size=2),
                   st.dictionaries(PATHS, st.one_of(st.none(), st.integers(), RECORDS)))
META_KEYS = st.sampled_from(["model_file", "plugin_code", "stacker_file", "files", "kind", "members", "method"])
KINDS = st.sampled_from(["fasttext", "ensemble", "lstm", "embeddings", "setfit", "bert", "evil_family"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(META_KEYS, VALUES, max_size=3), kind=st.one_of(st.none(), KINDS),
       onnx=st.one_of(st.none(), st.dictionaries(st.sampled_from(["default", "files"]), VALUES, max_size=2)))
@pytest.mark.slow  # hypothesis fuzzing over many examples
def test_fuzz_meta_and_onnx_json(fasttext_model, tmp_path_factory, changes, kind, onnx):
    model = Path(shutil.copytree(fasttext_model, tmp_path_factory.mktemp("fuzz") / "m"))
    marker = model.parent / "marker"
    (model / "plugin").mkdir()
    (model / "plugin" / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    plant_pickle(model / "evil.joblib", marker)
    if kind:
        changes["kind"] = kind
    edit_meta(model, **changes)
    if onnx is not None:
        (model / "onnx.json").write_text(json.dumps(onnx))
    try:
        predictor = load_predictor(model, trust_code=False)
        predictor.predict_proba(["good day"])
    except TextclfError as exc:
        assert exc.exit_code == 2
        assert len(exc.format_message().splitlines()) == 1, exc.format_message()
    assert not marker.exists()


def test_a_file_name_with_a_nul_byte_is_refused_in_one_line(ft):
    # found by test_fuzz_meta_and_onnx_json: Path.resolve raised ValueError ("embedded null byte")
    edit_meta(ft, model_file="\x00")
    with pytest.raises(ModelError, match=r"'model_file' must be a file name inside the model directory, got '\\x00'"):
        load_predictor(ft)

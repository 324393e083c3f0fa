"""Safety v3 (issue 23): writing output never damages anything else, and the last tracebacks are one line.

Outputs: ``-`` is stdout; a device, FIFO or socket is streamed in place (never renamed over); a
symlink's final target is replaced atomically and the link stays. Tracebacks: meta.json labels
that disagree with the model, a model body damaged in place, bad search budgets, Ctrl-C during a
search, a deserialized object of the wrong type, and JSONL texts worded alike by train and predict.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.atomic import atomic_replace_file, atomic_write_json, atomic_write_text, output_target
from textclf.core.errors import ModelError
from textclf.core.model_checks import check_label_indices, check_loaded_object

sys.path.insert(0, str(Path(__file__).parent))
from conftest import head_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V1 = REPO / "tests" / "fixtures" / "v1_models"
TEXTS = V1 / "texts.txt"
TEXTCLF = Path(sys.executable).parent / "textclf"
DATA = REPO / "data" / "tweets_sentiment"


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def only_error(result, expected: str) -> None:
    """Exit code 2 and, as the last line, exactly ``Error: <expected>``; no traceback anywhere."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {expected}", result.output


@pytest.fixture()
def v1(tmp_path) -> Path:
    """A private copy of the v1 fixture models (fastText, LSTM, ...): small, trained by older code."""
    return shutil.copytree(V1, tmp_path / "v1")


@pytest.fixture()
def expected(v1, tmp_path) -> str:
    """What ``predict`` writes for the fastText fixture into a regular file."""
    out = tmp_path / "expected.txt"
    assert invoke("predict", "--model_path", v1 / "fasttext", "--input_path", TEXTS, "--output_path", out).exit_code == 0
    text = out.read_text()
    assert len(text.splitlines()) == 60
    return text


def predict_to(v1: Path, target) -> object:
    return invoke("predict", "--model_path", v1 / "fasttext", "--input_path", TEXTS, "--output_path", target)


def no_temps(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- outputs


def read_fifo(path: Path, into: list) -> threading.Thread:
    def reader():
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_streamed_to_its_reader_and_stays_a_fifo(v1, tmp_path, expected):
    fifo = tmp_path / "preds.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    result = predict_to(v1, fifo)
    thread.join(30)
    assert result.exit_code == 0, result.output
    assert got == [expected.encode()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    no_temps(tmp_path)


def test_a_symlink_stays_and_its_target_is_replaced_atomically(v1, tmp_path, expected):
    real = tmp_path / "real" / "preds.txt"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    assert output_target(link) == ("file", real.resolve())
    assert predict_to(v1, link).exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == expected
    no_temps(tmp_path)
    no_temps(real.parent)

    chain = tmp_path / "chain.txt"  # a link to a link: the final target is written
    chain.symlink_to(link)
    atomic_write_json(chain, {"a": 1})
    assert chain.is_symlink() and link.is_symlink() and json.loads(real.read_text()) == {"a": 1}

    dangling = tmp_path / "dangling.txt"  # a link to nothing yet: its target is created, the link stays
    dangling.symlink_to(tmp_path / "new" / "made.txt")
    atomic_write_text(dangling, "made\n")
    assert dangling.is_symlink() and (tmp_path / "new" / "made.txt").read_text() == "made\n"

    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")  # a loop is refused; neither link is touched
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    only_error(predict_to(v1, tmp_path / "loop1"),
               f"{tmp_path / 'loop1'}: cannot write the predictions: Too many levels of symbolic links; nothing was written there")
    assert os.readlink(tmp_path / "loop1") == str(tmp_path / "loop2") and (tmp_path / "loop2").is_symlink()


def test_a_symlink_to_a_fifo_is_streamed(v1, tmp_path, expected):
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "to_fifo"
    link.symlink_to(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    assert predict_to(v1, link).exit_code == 0
    thread.join(30)
    assert got == [expected.encode()] and link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)


def test_dev_null_is_written_in_place(v1):
    before = os.stat("/dev/null")
    result = predict_to(v1, "/dev/null")
    assert result.exit_code == 0, result.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    atomic_write_json("/dev/null", {"a": 1})  # meta.json/report writers: the same rule
    atomic_replace_file(lambda tmp: Path(tmp).write_text("x"), "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_is_a_one_line_error_and_stays_a_device(v1):
    before = os.stat("/dev/full")
    only_error(predict_to(v1, "/dev/full"), "/dev/full: cannot write the predictions: No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and os.stat("/dev/full").st_rdev == before.st_rdev
    with pytest.raises(OSError) as exc:  # every writer: the error names the device
        atomic_replace_file(lambda tmp: Path(tmp).write_text("x" * 10000), "/dev/full")
    assert exc.value.filename == "/dev/full" and exc.value.strerror == "No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dash_and_dev_stdout_write_to_standard_output(v1, tmp_path, expected):
    args = [str(TEXTCLF), "predict", "--model_path", str(v1 / "fasttext"), "--input_path", str(TEXTS), "--output_path"]
    proc = subprocess.run([*args, "-"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected and proc.stderr.strip().splitlines()[-1] == "wrote 60 predictions to -"
    redirected = tmp_path / "redirected.txt"  # /dev/stdout names the open descriptor: written in place, not renamed
    with open(redirected, "w") as fh:
        proc = subprocess.run([*args, "/dev/stdout"], stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert redirected.read_text() == expected and os.path.islink("/dev/stdout")
    assert output_target("/dev/stdout")[0] == "stream" and output_target("-")[0] == "stdout"


def test_a_unix_socket_gets_a_connection_not_a_rename(tmp_path):
    path = tmp_path / "out.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def serve():
        conn, _ = server.accept()
        with conn:
            got.append(b"".join(iter(lambda: conn.recv(65536), b"")))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    atomic_write_json(path, {"labels": ["a", "b"]})
    thread.join(30)
    server.close()
    assert json.loads(got[0]) == {"labels": ["a", "b"]} and stat.S_ISSOCK(os.lstat(path).st_mode)


# --------------------------------------------------------------------------- tracebacks that are one line now


def with_labels(model_dir: Path, labels: list[str]) -> Path:
    meta = json.loads((model_dir / "meta.json").read_text())
    meta["labels"] = labels
    meta.pop("thresholds", None)
    (model_dir / "meta.json").write_text(json.dumps(meta))
    return model_dir


def test_meta_labels_that_disagree_with_the_model_are_one_line(v1, tmp_path):
    out = tmp_path / "p.txt"
    only_error(invoke("predict", "--model_path", with_labels(v1 / "fasttext", ["only"]), "--input_path", TEXTS, "--output_path", out),
               f"{v1 / 'fasttext' / 'model.bin'}: the model has 2 label(s) (__label__0, __label__1) but meta.json lists 1 "
               "(only); meta.json and the model do not belong together")
    only_error(invoke("predict", "--model_path", with_labels(v1 / "lstm", ["only"]), "--input_path", TEXTS, "--output_path", out),
               f"{v1 / 'lstm' / 'model.pt'}: the model has 2 classes but meta.json lists 1 label(s) (only); "
               "meta.json and the model do not belong together")
    only_error(invoke("evaluate", "--model_path", with_labels(v1 / "lstm", ["a", "b", "c"]), "--data_path", DATA / "valid.csv"),
               f"{v1 / 'lstm' / 'model.pt'}: the model has 2 classes but meta.json lists 3 label(s) (a, b, c); "
               "meta.json and the model do not belong together")
    assert not out.exists()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety_small")
    return {"train": head_csv(DATA / "train.csv", d / "train.csv", 200), "valid": head_csv(DATA / "valid.csv", d / "valid.csv", 60),
            "test": head_csv(DATA / "test.csv", d / "test.csv", 60)}


@pytest.fixture(scope="module")
def tfidf_model(tmp_path_factory, small) -> Path:
    """The tfidf_logreg example plug-in (a SklearnPredictor: model.skops with classes_ names)."""
    out = tmp_path_factory.mktemp("safety_tfidf") / "model"
    result = invoke("train", "--code", REPO / "examples" / "plugins" / "tfidf_logreg.py", "tfidf_logreg", "--train_path",
                    small["train"], "--valid_path", small["valid"], "--output_dir", out, "--no-track")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def embeddings_model(tmp_path_factory, small, cache_dir) -> Path:
    """An embeddings model on the tfidf_svd encoder (no download, a second to train): classifier.joblib with index classes."""
    out = tmp_path_factory.mktemp("safety_emb") / "model"
    result = invoke("train", "embeddings", "--train_path", small["train"], "--valid_path", small["valid"], "--output_dir", out,
                    "--no-track", "--device", "cpu", "--model_name", "tfidf_svd", "--classifier", "logreg",
                    "--set", "tfidf_svd.n_components=16")
    assert result.exit_code == 0, result.output
    return out


def test_scikit_learn_and_embeddings_labels_that_disagree_are_one_line(tfidf_model, embeddings_model, tmp_path):
    tfidf = with_labels(shutil.copytree(tfidf_model, tmp_path / "tfidf"), ["only"])
    only_error(invoke("--code", REPO / "examples" / "plugins" / "tfidf_logreg.py", "predict", "--model_path", tfidf,
                      "--input_path", TEXTS, "--output_path", tmp_path / "p.txt"),
               f"{tfidf / 'model.skops'}: the model has classes (negative, positive) that meta.json's labels (only) lack: "
               "negative, positive; meta.json and the model do not belong together")
    emb = with_labels(shutil.copytree(embeddings_model, tmp_path / "emb"), ["only"])
    classifier = emb / json.loads((emb / "meta.json").read_text()).get("model_file", "classifier.joblib")
    only_error(invoke("predict", "--model_path", emb, "--input_path", TEXTS, "--output_path", tmp_path / "p.txt"),
               f"{classifier}: the classifier has classes 0, 1 but meta.json lists 1 label(s) (only); "
               "meta.json and the model do not belong together")


def rewrite_recorded(model_dir: Path, name: str, write) -> Path:
    """Replace ``model_dir/name`` with what ``write(path)`` writes, and record its new size/hash (whoever can write one can write both)."""
    from textclf.core.integrity import file_record

    path = model_dir / name
    write(path)
    meta = json.loads((model_dir / "meta.json").read_text())
    if name in meta.get("files", {}):
        meta["files"][name] = file_record(path)
        (model_dir / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_deserialized_object_of_the_wrong_type_is_refused_when_loading(embeddings_model, tmp_path):
    from sklearn.preprocessing import StandardScaler

    from textclf.core.skops_io import save_sklearn

    emb = shutil.copytree(embeddings_model, tmp_path / "emb")
    name = json.loads((emb / "meta.json").read_text())["model_file"]
    path = rewrite_recorded(emb, name, lambda p: save_sklearn(StandardScaler().fit(np.eye(3)), p))
    only_error(invoke("predict", "--model_path", emb, "--input_path", TEXTS, "--output_path", tmp_path / "p.txt"),
               f"{path}: expected a classifier with predict_proba, classes_, found a "
               "sklearn.preprocessing._data.StandardScaler without predict_proba, classes_; the file does not belong to this model")
    with pytest.raises(ModelError, match=r"^x\.joblib: expected a stacker with predict_proba, classes_, found a builtins\.dict "):
        check_loaded_object({}, "x.joblib", what="stacker", attributes=("classes_",))

    class Strings:
        classes_ = np.array(["a", "b"])

        def predict_proba(self, x):
            return x

    with pytest.raises(ModelError, match=r"^h\.joblib: the classifier's classes_ are not label indices"):
        check_label_indices(Strings(), "h.joblib", ["a", "b"])


def nan_body(path: Path) -> None:
    """NaN floats written over the middle of a fastText model: same size, header intact."""
    body = bytearray(path.read_bytes())
    nan = np.full(4000, np.nan, dtype=np.float32).tobytes()
    body[len(body) // 2: len(body) // 2 + len(nan)] = nan
    path.write_bytes(bytes(body))


@pytest.mark.parametrize("how", ["no-files-block", "sha256-off"])
def test_a_fasttext_body_damaged_in_place_is_one_line_at_predict(v1, tmp_path, monkeypatch, how):
    model = v1 / "fasttext"
    nan_body(model / "model.bin")
    meta = json.loads((model / "meta.json").read_text())
    if how == "no-files-block":
        meta.pop("files")
        (model / "meta.json").write_text(json.dumps(meta))
    else:
        monkeypatch.setenv("TEXTCLF_VERIFY_SHA256", "0")
    for fmt in ("txt", "jsonl"):  # fastText's own predict and the probabilities
        only_error(invoke("predict", "--model_path", model, "--input_path", TEXTS, "--output_path", tmp_path / f"p.{fmt}"),
                   f"{model / 'model.bin'}: fastText cannot predict with it (Encountered NaN.): its weights are damaged; "
                   "restore or retrain the model")
        assert not (tmp_path / f"p.{fmt}").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--n_jobs", "0", "search.n_jobs must be an integer >= 1 (parallel trials in this process), got 0"),
    ("--n_trials", "-1", "search.n_trials must be an integer >= 0 (finished trials the study should hold; 0: no search), got -1"),
    ("--timeout", "-5", "search.timeout must be a number above 0 (seconds), got -5.0"),
    ("--timeout", "0", "search.timeout must be a number above 0 (seconds), got 0.0"),
])
def test_bad_search_budgets_stop_before_anything_is_created(small, tmp_path, flag, value, message):
    out = tmp_path / "out"
    result = invoke("tune", "fasttext", "--train_path", small["train"], "--valid_path", small["valid"], "--output_dir", out,
                    "--no-track", "--n_trials", "2", flag, value)
    only_error(result, message)
    assert not out.exists() and not list(tmp_path.rglob("*.journal"))


@pytest.mark.slow  # fastText trials and a refit in two subprocesses (about 20 s)
def test_ctrl_c_during_a_search_is_one_line_exit_130_and_the_same_command_resumes(tmp_path):
    """A real SIGINT to a real ``textclf tune fasttext`` on data/ (its first 600/150 rows)."""
    import optuna

    train, valid = head_csv(DATA / "train.csv", tmp_path / "train.csv", 600), head_csv(DATA / "valid.csv", tmp_path / "valid.csv", 150)
    out = tmp_path / "out"
    cmd = [str(TEXTCLF), "tune", "fasttext", "--train_path", str(train), "--valid_path", str(valid), "--output_dir", str(out),
           "--no-track", "--n_trials", "50"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a child of a shell's background job inherits SIGINT ignored: give the search the default handler, as a terminal does
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "search trial 2/50" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    done = [t.number for t in optuna.load_study(study_name="fasttext", storage=storage).trials if t.state.is_finished()
            and t.state != optuna.trial.TrialState.FAIL]
    assert rest.strip().splitlines() == [f"interrupted after {len(done)} trials; run the same command to resume"]
    assert len(done) >= 2

    again = subprocess.run([*cmd[:-1], str(len(done) + 1)], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="fasttext", storage=storage)
    complete = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete[: len(done)] == done and len(complete) == len(done) + 1  # resumed: the old trials kept, one new
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize(("value", "name"), [("null", "null"), ("5", "number"), ("2.5", "number"), ('["a"]', "array"),
                                             ("true", "boolean"), ('{"a": 1}', "object")])
def test_train_and_predict_word_a_bad_jsonl_text_the_same_way(v1, tmp_path, value, name):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "good day", "label": "a"}\n' f'{{"text": {value}, "label": "b"}}\n')
    expected = f"{data}:2: text must be a string, found {name}"
    only_error(invoke("train", "fasttext", "--train_path", data, "--valid_path", data, "--output_dir", tmp_path / "m",
                      "--no-track"), expected)
    only_error(invoke("predict", "--model_path", v1 / "fasttext", "--input_path", data, "--output_path", tmp_path / "p.txt"),
               expected)
    only_error(invoke("evaluate", "--model_path", v1 / "fasttext", "--data_path", data), expected)

"""Hardening: what a probe of the CLI found (issue 15), property tests of the readers, and fault tests.

Every bad input, damaged model directory or failing disk must end in one line ``Error: ...`` with
exit code 2, never a traceback, and never leave a partial file at the target path.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import textclf
from textclf.cli import cli
from textclf.core.data import Dataset, iter_texts, read_labelled, sha256_datasets, write_labelled
from textclf.core.errors import DataError, ModelError
from textclf.core.predictor import predict_file
from textclf.core.tuning import TrialSeededTPESampler, make_storage, open_study, run_search

REPO = Path(__file__).resolve().parents[1]
TEXTCLF = Path(sys.executable).parent / "textclf"
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *parts: str) -> None:
    """Exit code 2 and a single ``Error: ...`` line holding every part (plug-in notes aside), no traceback."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    for part in parts:
        assert part in lines[0], result.output


@pytest.fixture(scope="module")
def ft_model(tmp_path_factory, tweets) -> Path:
    out = tmp_path_factory.mktemp("hard_ft") / "model"
    result = invoke("train", "fasttext", "--train_path", tweets["train"], "--valid_path", tweets["valid"], "--output_dir", out,
                    "--n_trials", "0", "--set", "model.dim=10", "--set", "model.bucket=50000")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def texts_file(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("I love it\nI hate it\n\n")
    return path


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- the probe's list


def test_model_files_are_recorded_and_checked_before_loading(ft_model, tmp_path, texts_file, monkeypatch):
    """A damaged model.bin is caught by its recorded size/hash: fastText never gets to load it (a truncated
    file would make it allocate for minutes and crash)."""
    import fasttext

    loaded: list[str] = []
    real_load = fasttext.load_model
    monkeypatch.setattr(fasttext, "load_model", lambda path: loaded.append(path) or real_load(path))
    meta = json.loads((ft_model / "meta.json").read_text())
    assert meta["files"]["model.bin"]["bytes"] == (ft_model / "model.bin").stat().st_size
    out = tmp_path / "o.txt"
    for name, damage, message in [
        ("random", lambda p: p.write_bytes(os.urandom(5000)), "model.bin: truncated"),
        ("empty", lambda p: p.write_bytes(b""), "model.bin: truncated"),
        ("cut2m", lambda p: os.truncate(p, min(2_000_000, p.stat().st_size // 2)), "model.bin: truncated"),
        ("cut100k", lambda p: os.truncate(p, 100_000), "model.bin: truncated"),
        ("flipped", lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\x00" * 8), "model.bin: SHA-256 differs"),
    ]:
        model = copy_model(ft_model, tmp_path / name)
        damage(model / "model.bin")
        one_line_error(invoke("predict", "--model_path", model, "--input_path", texts_file, "--output_path", out), message)
    assert loaded == [] and not out.exists()
    assert invoke("predict", "--model_path", ft_model, "--input_path", texts_file, "--output_path", out).exit_code == 0
    assert loaded == [str(ft_model / "model.bin")]  # the intact model does reach fastText's loader


def test_damaged_fasttext_files_without_a_record_are_caught_by_the_header_check(ft_model, tmp_path, texts_file):
    """Models trained before meta.json recorded files: the fastText header says how big the file must be."""
    for name, damage, message in [
        ("random", lambda p: p.write_bytes(os.urandom(5000)), "not a fastText model file"),
        ("empty", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        ("cut2m", lambda p: os.truncate(p, min(2_000_000, p.stat().st_size // 2)), "truncated fastText model"),
        ("cut100k", lambda p: os.truncate(p, 100_000), "truncated fastText model"),
    ]:
        model = copy_model(ft_model, tmp_path / name)
        meta = json.loads((model / "meta.json").read_text())
        del meta["files"]
        (model / "meta.json").write_text(json.dumps(meta))
        damage(model / "model.bin")
        one_line_error(invoke("predict", "--model_path", model, "--input_path", texts_file, "--output_path",
                              tmp_path / "o.txt"), f"{model / 'model.bin'}", message)


def test_partial_model_directories_name_the_file(ft_model, tmp_path, texts_file):
    out = tmp_path / "o.txt"
    no_meta = copy_model(ft_model, tmp_path / "no_meta")
    (no_meta / "meta.json").unlink()
    one_line_error(invoke("predict", "--model_path", no_meta, "--input_path", texts_file, "--output_path", out),
                   "no meta.json")
    for name, edit, message in [
        ("no_labels", lambda m: m.pop("labels"), "meta.json: 'labels' must be a non-empty list"),
        ("unknown_kind", lambda m: m.update(kind="nosuch"), "meta.json: unknown model kind 'nosuch'"),
        ("no_kind", lambda m: m.pop("kind"), "meta.json: 'kind'"),
    ]:
        model = copy_model(ft_model, tmp_path / name)
        meta = json.loads((model / "meta.json").read_text())
        edit(meta)
        (model / "meta.json").write_text(json.dumps(meta))
        one_line_error(invoke("predict", "--model_path", model, "--input_path", texts_file, "--output_path", out), message)
    broken = copy_model(ft_model, tmp_path / "broken_json")
    (broken / "meta.json").write_text('{"kind": ')
    one_line_error(invoke("predict", "--model_path", broken, "--input_path", texts_file, "--output_path", out),
                   "meta.json:1: invalid JSON")
    missing = copy_model(ft_model, tmp_path / "missing")
    (missing / "model.bin").unlink()
    one_line_error(invoke("predict", "--model_path", missing, "--input_path", texts_file, "--output_path", out),
                   "model.bin: model file missing")
    assert not out.exists()


def test_truncated_torch_weights_name_the_file(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_export import make_lstm_dir

    model = make_lstm_dir(tmp_path / "lstm", "max", True, 1)
    weights = model / "model.pt"
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(ModelError, match=r"model\.pt: cannot read the weights .*truncated or damaged"):
        textclf.load_predictor(model)


def _chattr(flag: str, *paths: Path) -> bool:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_unwritable_outputs_are_one_line_errors(ft_model, tmp_path, texts_file):
    parent_is_file = tmp_path / "afile"
    parent_is_file.write_text("x")
    one_line_error(invoke("predict", "--model_path", ft_model, "--input_path", texts_file, "--output_path",
                          parent_is_file / "out.txt"), "a parent of it is a file")
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    target = tmp_path / "immutable.txt"
    target.write_text("old predictions\n")
    if os.geteuid() == 0:
        if not _chattr("+i", locked_dir, target):
            pytest.skip("chattr +i is not supported here (root ignores file modes)")
    else:
        locked_dir.chmod(0o555)
        target.chmod(0o444)
        tmp_path.chmod(0o555)
    try:
        one_line_error(invoke("predict", "--model_path", ft_model, "--input_path", texts_file, "--output_path",
                              locked_dir / "out.txt"), f"{locked_dir / 'out.txt'}: cannot write the predictions")
        one_line_error(invoke("predict", "--model_path", ft_model, "--input_path", texts_file, "--output_path", target),
                       f"{target}: cannot write the predictions")
    finally:
        if os.geteuid() == 0:
            _chattr("-i", locked_dir, target)
        else:
            tmp_path.chmod(0o755)
            locked_dir.chmod(0o755)
    assert target.read_text() == "old predictions\n"
    assert not list(tmp_path.glob(".immutable.txt.*")) and not list(locked_dir.iterdir())


def test_config_mistakes_fail_before_any_trial(tweets, tmp_path):
    base = ["train", "fasttext", "--train_path", tweets["train"], "--valid_path", tweets["valid"]]
    for i, (overrides, message) in enumerate([
        (["--set", "search.metric=nosuch", "--n_trials", "2"], "search.metric 'nosuch': unknown metric"),
        (["--set", "search.metric=macro_f2", "--n_trials", "2"], "search.metric: unknown metric 'macro_f2'"),
        (["--set", "search.space.epoch.low=50", "--set", "search.space.epoch.high=10", "--n_trials", "2"],
         "search.space.epoch: low 50 is above high 10"),
        (["--set", 'search.space.dim={"type": "categorical", "choices": []}', "--n_trials", "2"], "non-empty 'choices'"),
        (["--set", "search.space.lr.low=-1", "--n_trials", "2"], "search.space.lr: a log-scale range needs low > 0"),
        (["--set", "search.space.wordNgrams.low=0", "--n_trials", "2"], "wordNgrams must be >= 1"),
        (["--set", "model.lr=-1", "--n_trials", "0"], "model.lr: fastText's lr must be > 0"),
        (["--set", "model.epoch=0", "--n_trials", "0"], "model.epoch: fastText's epoch must be >= 1"),
    ]):
        out = tmp_path / f"m{i}"
        one_line_error(invoke(*base, "--output_dir", out, *overrides), message)
        assert not (out / "study.journal").exists() and not (out / "model.bin").exists()


def test_predict_rejects_what_train_rejects(ft_model, tmp_path):
    out = tmp_path / "o.txt"
    out.write_text("old\n")
    cases = [
        ("empty.txt", b"", "file is empty"),
        ("header.csv", b"text,label\n", "no data rows"),
        ("int.jsonl", b'{"text": "fine"}\n{"text": 5}\n', "in.jsonl:2: text must be a string, found number"),
        ("null.jsonl", b'{"text": null}\n', "text must be a string, found null"),
        ("list.jsonl", b'{"text": ["a"]}\n', "text must be a string, found array"),
        ("surrogate.jsonl", b'{"text": "a\\ud800"}\n', "lone surrogate"),
        ("deep.jsonl", b"[" * 100000 + b"]" * 100000 + b"\n", "nested too deeply"),
        ("quote.csv", b'text,label\n"abc,positive\nfoo,negative\n', "in.csv:2: unterminated quote"),
        ("utf16.txt", "hello\nworld\n".encode("utf-16"), "the file is UTF-16"),
        ("utf16le.csv", "text\nhello\n".encode("utf-16-le"), "looks like UTF-16 without a byte-order mark"),
        ("binary.txt", b"ab\x00\x01\x02cd\xff\n", "NUL byte at column 3; the file looks binary"),
        ("nocol.csv", b"body,label\nhi,a\n", "missing text column 'text' (columns: body, label); pass --text_column NAME"),
    ]
    for name, content, message in cases:
        path = tmp_path / ("in" + Path(name).suffix)
        path.write_bytes(content)
        one_line_error(invoke("predict", "--model_path", ft_model, "--input_path", path, "--output_path", out), message)
        assert out.read_text() == "old\n", name  # the old output stays intact
    assert not list(tmp_path.glob(".o.txt.*"))


def test_click_usage_errors_are_one_line(ft_model):
    for args, message in [
        (["predict", "--model_path", ft_model], "Missing option '--input_path'. (see '"),
        (["predict", "--bogus"], "No such option '--bogus'"),
        (["predict", "--model_path", ft_model, "--input_path", "x", "--output_path", "y", "--format", "xml"],
         "Invalid value for '--format'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["train", "nosuchfamily"], "nosuchfamily"),
    ]:
        one_line_error(invoke(*args), message)
    assert invoke().exit_code in (0, 2) and "Usage:" in invoke().output  # no arguments: the help


def test_workers_without_slurm_draw_different_points_and_one_worker_is_reproducible():
    storage = optuna.storages.InMemoryStorage()
    a = open_study("s", storage, seed=13)
    b = open_study("s", storage, seed=13)  # a second worker on the same study, same seed, no SLURM_ARRAY_TASK_ID
    ta, tb = a.ask(), b.ask()
    xa, xb = ta.suggest_float("x", 0, 1), tb.suggest_float("x", 0, 1)
    assert xa != xb
    again = open_study("s", optuna.storages.InMemoryStorage(), seed=13).ask().suggest_float("x", 0, 1)
    assert again == xa
    assert isinstance(a.sampler, TrialSeededTPESampler)


def test_search_log_says_what_ran(tmp_path, caplog):
    storage = make_storage(None, tmp_path)
    study = open_study("fresh", storage, seed=1)
    for lr in (0.1, 0.2):
        study.enqueue_trial({"lr": lr})

    def objective(trial):
        return trial.suggest_float("lr", 0.01, 1.0)

    with caplog.at_level(logging.INFO, logger="textclf.core.tuning"):
        assert run_search(study, objective, 2) == 2
    assert "already held" not in caplog.text
    with caplog.at_level(logging.INFO, logger="textclf.core.tuning"):
        assert run_search(study, objective, 2) == 0
    assert "already held 2 finished trials before this run (target 2): no new trial" in caplog.text


# --------------------------------------------------------------------------- property tests of the readers

LABEL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12).filter(
    lambda s: s.strip() != "")
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.one_of(st.text(TEXT_CHARS, min_size=1, max_size=30), st.sampled_from(
    ["a,b", 'say "hi"', "line\nbreak", "crlf\r\nhere", "cr\ronly", "\ufeffbom", "tab\there", "  padded  ", "é" * 50,
     "__label__x text", "'quoted'"])).filter(lambda s: s.strip() != "")


@HYPOTHESIS
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=2, max_size=12), fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_labelled_files_round_trip(tmp_path_factory, rows, fmt):
    labels = [label.strip() for _, label in rows]
    assume(len(set(labels)) >= 2)
    path = tmp_path_factory.mktemp("rt") / f"d.{fmt}"
    write_labelled(path, Dataset([t for t, _ in rows], labels))
    ds = read_labelled(path)
    expected = [t.replace("\r\n", "\n") if fmt != "jsonl" else t for t, _ in rows]
    assert ds.texts == expected and ds.labels == labels


@HYPOTHESIS
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"text,label\n"]),
       fmt=st.sampled_from(["csv", "jsonl", "txt"]))
def test_any_bytes_read_or_fail_with_one_line(tmp_path_factory, data, prefix, fmt):
    path = tmp_path_factory.mktemp("bytes") / f"d.{fmt}"
    path.write_bytes(prefix + data)
    for read in (lambda: read_labelled(path), lambda: list(iter_texts(path))):
        try:
            read()
        except DataError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)


@HYPOTHESIS
@given(lines=st.lists(st.one_of(st.text(TEXT_CHARS, max_size=20), st.sampled_from(["", " ", "\t", "\r", "a\x00b"])),
                      max_size=15),
       ending=st.sampled_from(["\n", "\r\n", "mixed"]), bom=st.booleans(), final_newline=st.booleans())
def test_predict_output_is_aligned_or_absent(ft_model, tmp_path_factory, lines, ending, bom, final_newline):
    d = tmp_path_factory.mktemp("pred")
    joiners = ["\n", "\r\n"] if ending == "mixed" else [ending]
    body = "".join(line + joiners[i % len(joiners)] for i, line in enumerate(lines))
    if not final_newline and body:
        body = body[:-1] if body.endswith("\n") else body
        body = body[:-1] if body.endswith("\r") else body
    raw = (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8")
    (d / "in.txt").write_bytes(raw)
    out = d / "out.txt"
    predictor = ft_model_predictor(ft_model)
    try:
        n = predict_file(predictor, d / "in.txt", out, progress=False)
    except DataError as exc:
        assert "\n" not in str(exc) and not out.exists()
        assert not raw or b"\x00" in raw or raw == b"\xef\xbb\xbf"
        return
    text = raw.decode("utf-8-sig")
    expected = text.split("\n")
    if text.endswith("\n"):
        expected.pop()
    assert n == len(expected) and len(out.read_text().splitlines()) == n


_PREDICTORS: dict = {}


def ft_model_predictor(path: Path):
    if path not in _PREDICTORS:
        _PREDICTORS[path] = textclf.load_predictor(path)
    return _PREDICTORS[path]


def test_one_megabyte_lines_are_read(tmp_path, ft_model):
    big = "word " * 200_000  # 1 MB
    (tmp_path / "a.txt").write_text(f"short\n{big}\n")
    (tmp_path / "a.csv").write_text(f'text,label\n"{big}",x\nok,y\n')
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": big, "label": "x"}) + "\n" + '{"text": "ok", "label": "y"}\n')
    assert [len(t) for t in iter_texts(tmp_path / "a.txt")] == [5, len(big)]
    assert read_labelled(tmp_path / "a.csv").texts[0] == big
    assert read_labelled(tmp_path / "a.jsonl").texts[0] == big
    predictor = ft_model_predictor(ft_model)
    assert predict_file(predictor, tmp_path / "a.csv", tmp_path / "o.jsonl", progress=False) == 2


# --------------------------------------------------------------------------- faults

SLOW_PLUGIN = '''
import time
import numpy as np
from textclf.core.predictor import Predictor
from textclf.core.registry import kinds


class SlowPredictor(Predictor):
    kind = "slow_test"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        return cls(model_dir, meta)

    def predict_proba(self, texts):
        time.sleep(0.05)
        return np.tile([0.3, 0.7], (len(texts), 1))


kinds.register("slow_test", func=SlowPredictor)
'''


@pytest.fixture()
def slow_model(tmp_path) -> Path:
    """A model whose predictions take 50 ms a batch (a plug-in kind carried in its directory)."""
    model = tmp_path / "slow"
    (model / "plugin").mkdir(parents=True)
    (model / "plugin" / "slow.py").write_text(SLOW_PLUGIN)
    (model / "meta.json").write_text(json.dumps({"kind": "slow_test", "labels": ["a", "b"],
                                                 "plugin_code": "plugin/slow.py"}))
    return model


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_predict_leaves_the_old_output_and_no_temp(slow_model, tmp_path, sig):
    inp = tmp_path / "in.txt"
    inp.write_text("".join(f"text {i}\n" for i in range(2000)))
    out = tmp_path / "out.txt"
    out.write_text("old output\n")
    proc = subprocess.Popen([str(TEXTCLF), "predict", "--trust-code", "--model_path", str(slow_model), "--input_path", str(inp),
                             "--output_path", str(out), "--batch_size", "10"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    temps = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".out.txt.")]  # noqa: E731
    _wait_for(lambda: temps() or proc.poll() is not None)
    time.sleep(0.5)  # some batches written
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    assert out.read_text() == "old output\n"
    if sig == signal.SIGTERM:
        assert code == 143 and not temps(), proc.stderr.read()
        return
    assert code == -9 and len(temps()) == 1  # kill -9 gives no chance to clean up ...
    small = tmp_path / "small.txt"
    small.write_text("one\ntwo\n")
    result = invoke("predict", "--trust-code", "--model_path", slow_model, "--input_path", small, "--output_path", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == "b\nb\n" and not temps()  # ... the next run for the target sweeps it


def _trials(out: Path):
    return optuna.load_study(study_name="fasttext", storage=make_storage(None, out)).trials


@pytest.mark.slow  # 30-50 epoch fastText trials in a subprocess, a kill, a resumed search and a refit
def test_killed_search_resumes_and_its_temp_folder_is_swept(tweets, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = tmp_path / "search"
    base = [str(TEXTCLF), "train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
            "--output_dir", str(out), "--set", "model.bucket=100000", "--set",
            'search.space.bucket={"type": "categorical", "choices": [100000]}']
    proc = subprocess.Popen([*base, "--n_trials", "40", "--set", "search.start_params=[]", "--set",
                             "search.space.epoch.low=30", "--set", "search.space.epoch.high=50"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running_after_one():
        if proc.poll() is not None or not (out / "study.journal").exists():
            return proc.poll() is not None
        try:
            trials = _trials(out)
        except KeyError:  # the journal file exists, the study record is not written yet
            return False
        if not trials:
            return False
        last = trials[-1]  # running, and already recorded which process runs it
        # and its fit has made its temp folder: a loaded machine showed a RUNNING trial whose folder did not exist yet
        made = any(p.name.startswith("textclf-ft-") for p in tmp.iterdir())
        return (sum(t.state.name == "COMPLETE" for t in trials) >= 1 and last.state.name == "RUNNING"
                and "pid" in last.user_attrs and made)

    _wait_for(running_after_one, 180)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftover = [p for p in tmp.iterdir() if p.name.startswith("textclf-ft-")]
    assert len(leftover) == 1 and str(proc.pid) in leftover[0].name
    kept = [(t.number, t.params) for t in _trials(out) if t.state.name == "COMPLETE"]
    assert kept and not (out / "meta.json").exists()
    resumed = subprocess.run([*base, "--n_trials", str(len(kept) + 1), "--set", "search.space.epoch.low=5", "--set",
                              "search.space.epoch.high=8"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = _trials(out)
    assert [(t.number, t.params) for t in after if t.number in dict(kept)] == kept  # nothing finished is lost
    assert [t.state.name for t in after if t.state.name != "COMPLETE"] == ["FAIL"]  # only the killed trial
    assert (out / "meta.json").exists() and not list(tmp.iterdir())  # the stale folder is gone, and this run's too


def test_sigterm_during_a_search_removes_its_temp_folder(tweets, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "search"
    proc = subprocess.Popen([str(TEXTCLF), "train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path",
                             str(tweets["valid"]), "--output_dir", str(out), "--n_trials", "40", "--set",
                             "search.space.epoch.low=20", "--set", "search.space.epoch.high=40"],
                            env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: proc.poll() is not None or (out / "study.journal").exists() and any(tmp.iterdir()), 180)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    # fastText's C training does not return to Python until its fit ends, so SIGTERM takes effect
    # after the running trial; the bound only stops a hung process from hanging the suite (a loaded
    # 2-core CI machine took over 60 s for a 100-epoch trial)
    assert proc.wait(timeout=300) == 143
    assert not list(tmp.iterdir())


def test_full_disk_is_a_clear_error_with_no_partial_output(ft_model, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        inp = tmp_path / "in.txt"
        inp.write_text("".join(f"some text number {i}\n" for i in range(5000)))
        target = disk / "out.csv"
        one_line_error(invoke("predict", "--model_path", ft_model, "--input_path", inp, "--output_path", target),
                       f"{target}: cannot write the predictions: No space left on device")
        assert not list(disk.iterdir())  # neither the target nor a temp file
        (disk / "keep.txt").write_text("x" * 1000)
        result = invoke("predict", "--model_path", ft_model, "--input_path", tmp_path / "small.txt", "--output_path",
                        disk / "small.txt")
        one_line_error(result, "file not found")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_resume_on_other_data_is_refused_and_names_what_changed(ft_model, tweets, tmp_path):
    """``--resume`` continues a run only on the data it started with (core.resume_check): other training rows in the
    same model directory stop at once with a one-line error, before any training; the same data resumes."""
    from textclf.core.resume_check import RESUME_FILE

    out = copy_model(ft_model, tmp_path / "model")
    saved = json.loads((out / RESUME_FILE).read_text())
    lines = tweets["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    smaller = tmp_path / "train_small.csv"
    smaller.write_text("".join(lines[:301]), encoding="utf-8")  # the header and 300 rows
    new_sha = sha256_datasets([read_labelled(smaller)])
    before = (out / "model.bin").stat().st_mtime_ns
    settings = ["--n_trials", "0", "--set", "model.dim=10", "--set", "model.bucket=50000"]
    result = invoke("train", "fasttext", "--train_path", smaller, "--valid_path", tweets["valid"], "--output_dir", out,
                    "--resume", *settings)
    one_line_error(result, f"{out}: cannot resume, the run there was started on other data (train: {saved['train']['rows']} "
                           f"rows sha256 {saved['train']['sha256'][:12]} -> 300 rows sha256 {new_sha[:12]}); rerun without "
                           "--resume to start over, or choose another --output_dir")
    assert (out / "model.bin").stat().st_mtime_ns == before  # nothing was trained or replaced
    assert json.loads((out / RESUME_FILE).read_text()) == saved
    again = invoke("train", "fasttext", "--train_path", tweets["train"], "--valid_path", tweets["valid"], "--output_dir", out,
                   "--resume", *settings)
    assert again.exit_code == 0, again.output
    fresh = invoke("train", "fasttext", "--train_path", smaller, "--valid_path", tweets["valid"], "--output_dir", out, *settings)
    assert fresh.exit_code == 0, fresh.output  # without --resume a new run replaces the model and its record
    assert json.loads((out / RESUME_FILE).read_text())["train"] == {"rows": 300, "sha256": new_sha}


def test_evaluate_scores_labels_the_model_does_not_know_and_says_so(ft_model, tmp_path):
    """evaluate counts rows whose label the model cannot predict as errors (they are part of the task), with a note on
    stderr naming how many and the first line; tune-thresholds refuses the same file (it fits on those labels)."""
    data = tmp_path / "eval.csv"
    data.write_text("text,label\nI love it,positive\nmeh,neutral\nso so,neutral\nawful,negative\n")
    result = CliRunner().invoke(cli, ["evaluate", "--model_path", str(ft_model), "--data_path", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (f"note: 2 row(s) of {data} hold a label the model does not know (first: 'neutral' at "
                                     f"{data}:3); the model never predicts it, so those rows count as errors")
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 4 and metrics["accuracy"] <= 0.5
    one_line_error(invoke("tune-thresholds", "--model_path", ft_model, "--valid_path", data),
                   f"{data}:3: label(s) 'neutral' unknown to the model (its labels: negative, positive)")
    board = CliRunner().invoke(cli, ["leaderboard", str(ft_model), "--data_path", str(data), "--no-isolate", "--n_boot",
                                     "10", "--json"])
    assert board.exit_code == 0, board.output
    assert (f"{ft_model.name}: note: 2 row(s) of {data} hold a label the model does not know (first: 'neutral' at "
            f"{data}:3); the model never predicts it, so those rows count as errors") in board.stderr.splitlines()
    assert json.loads(board.stdout)["rows"][0]["accuracy"] <= 0.5


def test_csv_output_of_labels_with_commas_quotes_and_spaces(tmp_path):
    """A model whose labels hold commas, quotes and spaces writes CSV/JSONL that read back exactly."""
    from textclf.core.predictor import Predictor

    labels = ['a, b', 'say "x"', "  spaced label ", "ünï"]

    class Fixed(Predictor):
        kind = "fixed_test"

        @classmethod
        def load(cls, model_dir, meta=None, model_file=None):
            raise NotImplementedError

        def predict_proba(self, texts):
            return np.eye(len(labels))[[i % len(labels) for i in range(len(texts))]]

    p = Fixed("", {"labels": labels, "kind": "fixed_test"})
    (tmp_path / "in.txt").write_text("1\n2\n3\n4\n")
    predict_file(p, tmp_path / "in.txt", tmp_path / "o.csv", progress=False)
    rows = list(csv.DictReader((tmp_path / "o.csv").open(encoding="utf-8", newline="")))
    assert [r["label"] for r in rows] == labels and set(rows[0]) == {"label", *[f"p_{x}" for x in labels]}
    predict_file(p, tmp_path / "in.txt", tmp_path / "o.jsonl", progress=False)
    got = [json.loads(line)["label"] for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert got == labels


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_that_library_code_swallows_still_stops_the_search(signum):
    """Optuna's journal lock, hit by SIGTERM (or Ctrl-C) while it releases its lock file, turns the SystemExit
    (KeyboardInterrupt) into a FileNotFoundError, which the search records as a failed trial and goes on; the
    search stops all the same: SIGTERM exits 143, Ctrl-C is the resumable one-line interruption."""
    import optuna

    from textclf.core.errors import Interrupted
    from textclf.core.tempfiles import sigterm_as_exit
    from textclf.core.tuning import run_search

    def objective(trial):
        if trial.number == 1:
            try:
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler raises SystemExit / KeyboardInterrupt here
            except (SystemExit, KeyboardInterrupt):
                raise FileNotFoundError(2, "No such file or directory") from None  # what the lock release raised
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study(direction="maximize")
    expected = SystemExit if signum == signal.SIGTERM else Interrupted
    # a process started in a shell's background job (CI) inherits SIGINT ignored: give it Python's handler,
    # as a terminal does (sigterm_as_exit leaves an ignored or custom SIGINT alone)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigterm_as_exit(), pytest.raises(expected) as exc:
            run_search(study, objective, n_trials=10)
    finally:
        signal.signal(signal.SIGINT, inherited)
    if signum == signal.SIGTERM:
        assert exc.value.code == 143
    else:
        assert exc.value.message == "interrupted after 1 trials; run the same command to resume"
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]  # no third trial
    with sigterm_as_exit():  # a new command starts with no signal pending
        assert run_search(optuna.create_study(direction="maximize"), lambda t: t.suggest_float("x", 0, 1), n_trials=2) == 2

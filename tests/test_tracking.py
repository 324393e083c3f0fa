"""The experiment store for real: fastText runs through the CLI land in an MLflow SQLite store.

One store per module (MLflow migrates a new SQLite database for a few seconds). Tracking is off
for the rest of the suite (conftest sets TEXTCLF_TRACK=0); these tests turn it on with --track.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.cli.runs_cmd import fmt
from textclf.services.tracking import (
    TAG,
    TrackSettings,
    curve_metrics,
    flatten,
    open_store,
    run_tracked,
    tracking_enabled,
)

REPO = Path(__file__).resolve().parents[1]
INFRA = os.environ.get("TEXTCLF_INFRA_TESTS") == "1"
TRAIN_ROWS = 1500
SMALL = ("--set", "model.bucket=20000", "--set", "model.dim=25")  # the default 2M x 100 matrix is 800 MB


@pytest.fixture(scope="module")
def data(tweets, tmp_path_factory) -> dict[str, Path]:
    """A small copy of the tweets dataset in a folder named ``tweets_small`` (the dataset's name)."""
    d = tmp_path_factory.mktemp("data") / "tweets_small"
    d.mkdir()
    with open(tweets["train"], newline="", encoding="utf-8") as src, open(d / "train.csv", "w", newline="",
                                                                           encoding="utf-8") as dst:
        rows = list(csv.reader(src))
        csv.writer(dst).writerows(rows[: TRAIN_ROWS + 1])
    for name in ("valid", "test"):
        shutil.copy(tweets[name], d / f"{name}.csv")
    return {name: d / f"{name}.csv" for name in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One SQLite store for the module, migrated once."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    open_store(url)
    return url


def train(data, out, uri, *extra, ok=True):
    args = ["train", "fasttext", "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--test_path", str(data["test"]), "--output_dir", str(out), "--n_trials", "0", "--track",
            "--tracking_uri", uri, *SMALL, *extra]
    result = CliRunner().invoke(cli, args)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def runs_of(uri):
    return open_store(uri).search()


def run_id_of(output: str) -> str:
    line = next(x for x in output.splitlines() if x.startswith("recorded: run "))
    return line.split()[2]


@pytest.fixture(scope="module")
def first(data, uri, tmp_path_factory):
    """A tracked fastText run: (run, model dir, meta)."""
    out = tmp_path_factory.mktemp("runs") / "ft"
    result = train(data, out, uri, "--seed", "13")
    run = open_store(uri).client.get_run(run_id_of(result.output))
    return run, out, json.loads((out / "meta.json").read_text())


def test_run_records_data_config_metrics_and_code_version(first, data):
    run, out, meta = first
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags[f"{TAG}family"] == "fasttext" and tags[f"{TAG}dataset"] == "tweets_small"
    assert tags[f"{TAG}data_sha256"] == meta["data_sha256"]
    for split in ("train", "valid", "test"):
        assert tags[f"{TAG}sha256.{split}"] == hashlib.sha256(data[split].read_bytes()).hexdigest()
    assert tags[f"{TAG}model_dir"] == str(out.resolve())
    assert tags[f"{TAG}git_commit"] == meta["git_commit"].removesuffix("-dirty")
    assert tags[f"{TAG}git_dirty"] == str(meta["git_commit"].endswith("-dirty")).lower()
    assert tags[f"{TAG}host"] == os.uname().nodename and tags[f"{TAG}device"] == "cpu"
    assert tags[f"{TAG}command"] == "train"
    assert json.loads(tags[f"{TAG}versions"])["fasttext-community"] == meta["versions"]["fasttext-community"]
    assert json.loads(tags[f"{TAG}paths"])["train"] == str(data["train"].resolve())
    assert params == flatten(meta["config"])
    assert params["model.lr"] == "auto" and params["search.n_trials"] == "0" and params["seed"] == "13"
    for split in ("valid", "test"):
        for key in ("accuracy", "macro_f1", "macro_f0.5"):
            assert metrics[f"{split}.{key}"] == meta["metrics"][split][key]
        for label in meta["labels"]:
            assert metrics[f"{split}.class.{label}.f1"] == meta["metrics"][split]["per_class"][label]["f1"]
    assert metrics["train_seconds"] > 0
    inputs = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert inputs == {f"tweets_small/{s}": tags[f"{TAG}sha256.{s}"][:16] for s in ("train", "valid", "test")}


def test_config_and_model_files_are_artifacts(first, uri, tmp_path):
    run, _, meta = first
    client = open_store(uri).client
    names = {a.path for a in client.list_artifacts(run.info.run_id)} | \
            {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model/meta.json", "model/metrics.txt"} <= names
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
    assert config == meta["config"]


def test_no_track_and_env_leave_the_store_alone(data, uri, tmp_path):
    before = len(runs_of(uri))
    train(data, tmp_path / "a", uri, "--no-track")
    args = ["train", "fasttext", "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--output_dir", str(tmp_path / "b"), "--n_trials", "0", "--tracking_uri", uri, *SMALL]
    assert CliRunner().invoke(cli, args).exit_code == 0  # TEXTCLF_TRACK=0 (conftest)
    assert (tmp_path / "a" / "meta.json").is_file() and (tmp_path / "b" / "meta.json").is_file()
    assert len(runs_of(uri)) == before
    assert not tracking_enabled(None) and tracking_enabled(True)


def test_unreachable_store_warns_and_keeps_the_model(data, tmp_path, monkeypatch):
    """A server that does not answer fails the quick /health probe: MLflow's client, which retries for minutes,
    is never created."""
    import mlflow

    clients: list[str] = []
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: clients.append(a) or pytest.fail("MLflow client made"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    result = train(data, tmp_path / "m", f"http://127.0.0.1:{port}", "--seed", "3")
    warnings = [x for x in result.output.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and f"experiment store http://127.0.0.1:{port} unreachable: URLError" in warnings[0]
    assert "Connection refused" in warnings[0] and clients == []
    assert (tmp_path / "m" / "meta.json").is_file() and (tmp_path / "m" / "model.bin").is_file()


def test_identical_run_trains_again_unless_reuse_copies_it(first, data, uri, tmp_path):
    """A run asked to write OUTPUT_DIR always leaves a model there: reusing an identical run is opt-in and copies it."""
    run, out, _ = first
    again = train(data, tmp_path / "again", uri, "--seed", "13")
    new = open_store(uri).client.get_run(run_id_of(again.output))
    assert new.info.status == "FINISHED" and new.data.tags[f"{TAG}config_hash"] == run.data.tags[f"{TAG}config_hash"]
    assert (tmp_path / "again" / "meta.json").is_file()

    before = len(runs_of(uri))
    reused = train(data, tmp_path / "copy", uri, "--seed", "13", "--reuse")
    assert reused.output.startswith("reused: fasttext with this config and data already ran: run ")
    assert "reused: copied " in reused.output and str(tmp_path / "copy") in reused.output
    copied = json.loads((tmp_path / "copy" / "meta.json").read_text())
    assert copied["metrics"] == json.loads((Path(out) / "meta.json").read_text())["metrics"] or \
        copied["metrics"] == json.loads((tmp_path / "again" / "meta.json").read_text())["metrics"]
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(p.name for p in Path(out).iterdir())
    assert len(runs_of(uri)) == before  # nothing trained, nothing recorded

    skip = train(data, tmp_path / "skip", uri, "--seed", "13", "--skip-existing")
    assert "reused: copied " in skip.output and (tmp_path / "skip" / "meta.json").is_file()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    refused = train(data, tmp_path / "busy", uri, "--seed", "13", "--reuse", ok=False)
    assert refused.exit_code == 2
    assert f"--reuse: {tmp_path / 'busy'} exists and is not empty" in refused.output

    forced = train(data, tmp_path / "forced", uri, "--seed", "13", "--reuse", "--force")
    assert run_id_of(forced.output) and (tmp_path / "forced" / "meta.json").is_file()
    assert len(runs_of(uri)) == before + 1


def test_failing_train_is_recorded_failed(data, uri, tmp_path):
    result = train(data, tmp_path / "bad", uri, "--set", "model.loss=bogus", ok=False)
    assert result.exit_code != 0 and "Unrecognized loss name" in str(result.exception)
    [run] = open_store(uri).search("params.`model.loss` = 'bogus'")
    assert run.info.status == "FAILED"
    assert run.data.tags[f"{TAG}error"] == "RuntimeError: final fastText fit failed 3 times: Unrecognized loss name"


def test_keyboard_interrupt_is_recorded_killed(data, uri, tmp_path):
    from textclf.core.registry import get_family
    from textclf.core.training import load_splits

    family = get_family("fasttext")
    cfg = family.default_config()
    cfg["seed"] = 99
    splits = load_splits(str(data["train"]), str(data["valid"]), None, cfg["data"])
    started = []

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tracked(interrupted, family, cfg, splits, tmp_path / "k",
                    TrackSettings(enabled=True, uri=uri, on_start=started.append))
    run = open_store(uri).client.get_run(started[0])
    assert run.info.status == "KILLED" and run.data.tags[f"{TAG}error"] == "interrupted (KeyboardInterrupt)"


def test_runs_list_show_diff_rerun(first, uri, tmp_path):
    run, out, meta = first
    rid = run.info.run_id
    # rerun with one change: same data paths, parent linked, the override recorded
    result = CliRunner().invoke(cli, ["runs", "rerun", rid[:8], "--set", "model.lr=0.5", "--tracking_uri", uri,
                                      "--output_dir", str(tmp_path / "rerun")])
    assert result.exit_code == 0, (result.output, result.exception)
    child = open_store(uri).client.get_run(run_id_of(result.output))
    assert child.data.tags[f"{TAG}parent_run"] == rid
    assert json.loads(child.data.tags[f"{TAG}overrides"]) == ["model.lr=0.5"]
    assert child.data.tags[f"{TAG}data_sha256"] == run.data.tags[f"{TAG}data_sha256"]
    assert child.data.tags[f"{TAG}command"] == "rerun" and child.data.params["model.lr"] == "0.5"
    child_meta = json.loads((tmp_path / "rerun" / "meta.json").read_text())
    assert child_meta["config"] == {**meta["config"], "model": {**meta["config"]["model"], "lr": "0.5"}}

    # list: one row per run with the exact metrics; filters; JSON
    listing = invoke("runs", "list", "--tracking_uri", uri, "--family", "fasttext", "--dataset", "tweets_small")
    header, *rows = listing.splitlines()
    assert header.split() == ["run", "started", "family", "task", "dataset", "status", "valid_f1", "test_f1", "test_acc",
                              "test_ece", "size_mb", "seconds", "model_dir"]
    row = next(r.split() for r in rows if r.startswith(rid[:8]))
    # run, started (date and time), family, task, dataset, status, valid_f1, test_f1, test_acc, test_ece, size_mb, seconds,
    # model_dir
    assert row[3:8] == ["fasttext", "multiclass", "tweets_small", "FINISHED", fmt(meta["metrics"]["valid"]["macro_f1"])]
    assert row[8:10] == [fmt(meta["metrics"]["test"]["macro_f1"]), fmt(meta["metrics"]["test"]["accuracy"])]
    assert row[10] == fmt(meta["metrics"]["test"]["ece"])
    model_file = out / meta["model_file"]
    assert 0 < meta["model_mb"] <= 20 and meta["model_mb"] == round(model_file.stat().st_size / 2**20, 3)
    assert row[11] == fmt(meta["model_mb"])
    assert row[12] == fmt(run.data.metrics["train_seconds"]) and row[13] == str(out.resolve())
    assert run.data.tags[f"{TAG}task"] == "multiclass"
    f1s = [float(r.split()[8]) for r in rows if r.split()[8] != "-"]
    assert f1s == sorted(f1s, reverse=True)
    assert invoke("runs", "list", "--tracking_uri", uri, "--dataset", "other").strip() == f"no runs in {uri}"
    as_json = json.loads(invoke("runs", "list", "--tracking_uri", uri, "--json", "--status", "FINISHED"))
    entry = next(e for e in as_json if e["run_id"] == rid)
    assert entry["metrics"]["valid.macro_f1"] == meta["metrics"]["valid"]["macro_f1"]
    assert {e["status"] for e in as_json} == {"FINISHED"}

    # show
    shown = invoke("runs", "show", rid[:10], "--tracking_uri", uri).splitlines()
    assert shown[0] == f"run        {rid}" and "status     FINISHED" in shown
    assert "  model.lr = auto" in shown and f"  valid.macro_f1 = {fmt(meta['metrics']['valid']['macro_f1'])}" in shown
    assert f"parent     {rid} (--set model.lr=0.5)" in invoke("runs", "show", child.info.run_id, "--tracking_uri", uri)

    # diff: model.lr is the only config key that differs; only differing metrics
    lines = invoke("runs", "diff", rid, child.info.run_id, "--tracking_uri", uri).splitlines()
    assert lines[0].split() == [rid[:8], child.info.run_id[:8]]
    config = lines[lines.index("config:") + 1: lines.index("metrics:")]
    assert [x.split() for x in config] == [["model.lr", "auto", "0.5"]]
    for line in lines[lines.index("metrics:") + 1:]:
        key, va, vb = line.split()
        assert va != vb
        assert va == fmt(run.data.metrics[key]) and vb == fmt(child.data.metrics[key])
    assert "run:" not in lines  # same family, data and commit
    same = invoke("runs", "diff", rid, rid, "--tracking_uri", uri).strip()
    assert same == f"runs {rid[:8]} and {rid[:8]} have the same config, data and metrics"


def test_unknown_run_is_a_one_line_error(uri):
    result = CliRunner().invoke(cli, ["runs", "show", "nosuchrun", "--tracking_uri", uri])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: run 'nosuchrun' not found in {uri} (experiment 'textclf')"


def test_lstm_run_has_learning_curves(data, uri, tmp_path):
    """A family with a per-epoch history: each epoch is a metric step."""
    args = ["train", "lstm", "--train_path", str(data["train"]), "--valid_path", str(data["valid"]), "--output_dir",
            str(tmp_path / "lstm"), "--epochs", "2", "--device", "cpu", "--batch_size", "64", "--set",
            "model.embedding_dim=16", "--set", "model.hidden_size=16", "--set", "train.num_threads=1",
            "--track", "--tracking_uri", uri]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    run_id = run_id_of(result.output)
    client = open_store(uri).client
    run = client.get_run(run_id)
    assert run.data.tags[f"{TAG}family"] == "lstm" and run.data.tags[f"{TAG}device"] == "cpu"
    history = json.loads((tmp_path / "lstm" / "history.json").read_text())
    steps = client.get_metric_history(run_id, "curve.valid_macro_f1")
    assert [(m.step, m.value) for m in steps] == [(h["epoch"], h["valid_macro_f1"]) for h in history]
    assert len(steps) == 2


def test_learning_curves_from_history_and_stages(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": 0, "train_loss": 0.9, "valid_macro_f1": 0.5},
                                                       {"epoch": 1, "train_loss": 0.5, "valid_macro_f1": 0.7}]))
    meta = {"training": {"stages": [{"name": "stage2", "history": [{"epoch": 1, "valid": {"loss": 0.4}}]}]}}
    assert curve_metrics(tmp_path, meta) == [
        ("curve.train_loss", 0.9, 0), ("curve.valid_macro_f1", 0.5, 0),
        ("curve.train_loss", 0.5, 1), ("curve.valid_macro_f1", 0.7, 1), ("curve.stage2.valid.loss", 0.4, 1)]


# --------------------------------------------------------------------------- a team server (infra tests)
# the `cluster` and `postgres_url` fixtures live in conftest.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(url: str, name: str) -> str:
    """A new database on the server of ``url``; returns its SQLAlchemy URL (psycopg 3)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


@pytest.mark.postgres
def test_mlflow_server_on_postgresql(postgres_url, data, tmp_path):
    """`mlflow server` (PostgreSQL backend) on loopback: a train lands there and `runs list` shows it."""
    backend = create_database(postgres_url, "mlflow_store")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp_path, stdout=log, stderr=log,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
                time.sleep(1)
        result = train(data, tmp_path / "m", uri, "--seed", "21")
        rid = run_id_of(result.output)
        listing = invoke("runs", "list", "--tracking_uri", uri)
        assert rid[:8] in listing and "tweets_small" in listing
        run = open_store(uri).client.get_run(rid)
        assert run.info.status == "FINISHED" and "config.json" in {a.path for a in
                                                                  open_store(uri).client.list_artifacts(rid)}
    finally:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
        log.close()

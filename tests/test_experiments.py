"""Grids of runs and the notebook API: ``textclf queue grid``, ``textclf worker``, :mod:`textclf.services.experiments`.

A grid file expands to one task per family x data x point; a bad one is a one-line error naming
the file. The notebook workflow runs for real: ``Queue.grid`` of 4 small fastText tasks,
``Queue.start_workers(2)`` (background ``textclf worker`` processes), every task done once, and
:func:`textclf.services.experiments.runs` shows the 4 runs. Two ``textclf train --track`` processes on a
fresh store both land. The same grid through a SLURM worker array runs in the infra tests
(TEXTCLF_INFRA_TESTS=1, root: ``make test_infra``), like tests/test_slurm.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from textclf.cli import cli
from textclf.core.errors import ConfigError, TextclfError
from textclf.services.experiments import Queue, runs
from textclf.services.queue import Task, open_queue
from textclf.services.tracking import open_store

sys.path.insert(0, str(Path(__file__).parent))
from conftest import job_states, make, wait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

REPO = Path(__file__).resolve().parents[1]
TEXTCLF = [sys.executable, "-c", "from textclf.cli import main; main()"]
SMALL = {"search.n_trials": 0, "model.bucket": 20000}
TRAIN_ROWS = 800


@pytest.fixture(scope="module")
def data_dir(tweets, tmp_path_factory) -> Path:
    """A dataset folder: the first 800 training rows of tweets_sentiment, its valid and test splits."""
    d = tmp_path_factory.mktemp("data") / "tweets_small"
    d.mkdir()
    with open(tweets["train"], newline="", encoding="utf-8") as src, open(d / "train.csv", "w", newline="",
                                                                           encoding="utf-8") as dst:
        csv.writer(dst).writerows(list(csv.reader(src))[: TRAIN_ROWS + 1])
    for name in ("valid", "test"):
        shutil.copy(tweets[name], d / f"{name}.csv")
    return d


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module, migrated once (before workers start)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    open_store(url)
    return url


def invoke(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def small_grid(data: Path | str, **axes: list) -> dict:
    return {"family": "fasttext", "data": str(data), "set": {**SMALL, **axes}}


# --------------------------------------------------------------------------- grid files
def test_grid_file_queues_one_task_per_family_data_and_point(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b").mkdir()
    shutil.copy(data_dir / "train.csv", "b/tr.csv")
    shutil.copy(data_dir / "valid.csv", "b/va.csv")
    grid = {"family": ["fasttext", "lstm"], "data": [str(data_dir), {"train": "b/tr.csv", "valid": "b/va.csv"}],
            "set": {"model.dropout": [0.1, 0.3], "seed": [1, 2], "search.n_trials": 0}}
    Path("exp1.json").write_text(json.dumps(grid))
    storage = "sqlite:///q.db"
    # fastText has no model.dropout: 2 data x 2 seeds; lstm: 2 data x 2 dropouts x 2 seeds
    listed = invoke("queue", "grid", "exp1.json", "--storage", storage, "--list").splitlines()
    assert len(listed) == 12 and not Path("q.db").exists()
    out = invoke("queue", "grid", "exp1.json", "--storage", storage)
    assert out.strip() == f"queued 12 task(s) on 'exp1' ({storage}): {', '.join(map(str, range(12)))}"
    tasks = [Task.from_trial(t) for t in open_queue("exp1", storage).trials]
    folder = [str(data_dir / "train.csv")], str(data_dir / "valid.csv"), str(data_dir / "test.csv")
    explicit = [str(tmp_path / "b" / "tr.csv")], str(tmp_path / "b" / "va.csv"), None
    expected = [("fasttext", d, ["search.n_trials=0", f"seed={s}"]) for d in (folder, explicit) for s in (1, 2)]
    expected += [("lstm", d, ["search.n_trials=0", f"model.dropout={p}", f"seed={s}"])
                 for d in (folder, explicit) for p in (0.1, 0.3) for s in (1, 2)]
    assert [(t.family, (t.train_path, t.valid_path, t.test_path), t.overrides) for t in tasks] == expected
    assert {t.code == [] and t.config is None and t.metric == "macro_f1" for t in tasks} == {True}
    assert [re.fullmatch(r" *\d+  (.+)  \(.+\)", line).group(1) for line in listed] == [t.label() for t in tasks]
    # --queue names the queue; the same file again adds 12 more tasks to it
    invoke("queue", "grid", "exp1.json", "--storage", storage, "--queue", "other")
    assert len(open_queue("other", storage).trials) == 12


BAD_GRIDS = [
    ('{"family": "fasttext", "data": ', ":1: invalid JSON: Expecting value (column 32)"),
    ("[1, 2]", ': a grid is a JSON object: {"family": [...], "data": [...], "set": {"key": [values]}}'),
    ({"family": "fasttext"}, ': no "data"'),
    ({"family": "fasttext", "data": "DATA", "sets": {}}, ": unknown key 'sets'; a grid has the keys family, data, set,"),
    ({"family": [], "data": "DATA"}, ': "family" must be a string or a non-empty list of strings, got []'),
    ({"family": "fasttext", "data": "nowhere"}, ": data 'nowhere': no such folder"),
    ({"family": "fasttext", "data": {"train": "DATA/train.csv"}}, ': data {"train": '),
    ({"family": "fasttext", "data": {"train": "DATA/nope.csv", "valid": "DATA/valid.csv"}}, "/nope.csv': file not found"),
    ({"family": "nope", "data": "DATA"}, ": unknown model family 'nope'"),
    ({"family": "fasttext", "data": "DATA", "set": {"model.dropout": [0.1]}},
     ": set 'model.dropout': no family of the grid (fasttext) has this config key"),
    ({"family": "fasttext", "data": "DATA", "set": {"model.lr": []}}, ": set 'model.lr': empty list of values"),
    ({"family": "fasttext", "data": "DATA", "set": {"model.t": ["fast"]}}, ": model.t: expected float, got str 'fast'"),
    ({"family": "fasttext", "data": "DATA", "config": "missing.json"}, ": missing.json: config file not found"),
]


@pytest.mark.parametrize(("content", "problem"), BAD_GRIDS, ids=range(len(BAD_GRIDS)))
def test_bad_grid_file_is_one_line_naming_it(content, problem, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = content if isinstance(content, str) else json.dumps(content).replace("DATA", str(data_dir))
    Path("grid.json").write_text(text)
    result = CliRunner().invoke(cli, ["queue", "grid", "grid.json", "--storage", "sqlite:///q.db"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: grid.json"), result.output
    assert problem.replace("DATA", str(data_dir)) in result.output
    assert not Path("q.db").exists()  # nothing queued, no queue created


def test_missing_grid_file(tmp_path):
    result = CliRunner().invoke(cli, ["queue", "grid", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and result.output == f"Error: {tmp_path / 'nope.json'}: grid file not found\n"


def test_worker_alias_takes_both_spellings(tmp_path):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    Queue("empty", storage)
    old = signal.getsignal(signal.SIGTERM)  # the worker turns SIGTERM into KeyboardInterrupt
    try:
        for cmd in (["worker", "--max-tasks", "1", "--idle-exit", "0"], ["worker", "--max_tasks", "1", "--idle_exit", "0"],
                    ["queue", "worker", "--max-tasks", "0"]):
            assert invoke(*cmd, "--queue", "empty", "--storage", storage, "--poll", "0").strip().endswith(
                "worker done: 0 task(s) run from 'empty'")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert "--idle_exit, --idle-exit" in invoke("worker", "--help")


# --------------------------------------------------------------------------- the notebook workflow
def test_queue_add_and_cancel_from_python(data_dir, tmp_path):
    q = Queue("py", f"sqlite:///{tmp_path / 'q.db'}")
    assert q.status().empty and q.counts()["waiting"] == 0
    numbers = q.add("fasttext", data_dir / "train.csv", data_dir / "valid.csv", set={"seed": 3, "model.loss": "ova"},
                    grid={"model.lr": [0.1, 0.2]})
    assert numbers == [0, 1]
    tasks = [Task.from_trial(t) for t in q.study.trials]
    assert [t.overrides for t in tasks] == [["seed=3", "model.loss=ova", f"model.lr={lr}"] for lr in (0.1, 0.2)]
    assert tasks[0].train_path == [str(data_dir / "train.csv")] and tasks[0].test_path is None
    with pytest.raises(ConfigError, match="nope.csv: file not found"):
        q.add("fasttext", tmp_path / "nope.csv", data_dir / "valid.csv")
    with pytest.raises(ConfigError, match="--set model.nope: unknown key 'model.nope'"):
        q.add(["fasttext"], [data_dir / "train.csv"], data_dir / "valid.csv", set={"model.nope": 1})
    assert q.cancel([1]) == [1]
    assert q.counts() == {"waiting": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 1}
    assert list(q.status().state) == ["waiting", "cancelled"] and q.status().attrs["counts"]["cancelled"] == 1


@pytest.mark.slow  # two background worker processes run 4 tracked fastText tasks, then idle out
def test_notebook_workflow_grid_workers_runs(data_dir, uri, tmp_path, monkeypatch):
    """Queue.grid of 4 fastText tasks, 2 background workers, every task done once, runs() shows 4 FINISHED runs."""
    monkeypatch.chdir(tmp_path)
    q = Queue("nb", storage="sqlite:///runs/queue.db")
    assert q.storage == f"sqlite:///{tmp_path / 'runs' / 'queue.db'}"  # absolute: workers may start anywhere
    assert q.grid(small_grid(data_dir, **{"model.lr": [0.2, 0.4], "model.dim": [10, 20]})) == [0, 1, 2, 3]
    status = q.status()
    assert list(status.index) == [0, 1, 2, 3] and set(status.state) == {"waiting"}
    assert status.task[0] == "fasttext --set search.n_trials=0 --set model.bucket=20000 --set model.lr=0.2 --set model.dim=10"

    workers = q.start_workers(2, idle_exit=3, track=True, tracking_uri=uri, args=["--poll", "0.3"])
    for w in workers:
        try:
            w.wait(timeout=240)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
        assert w.returncode == 0, w.log_path.read_text()[-3000:]
    ran = [int(re.search(r"worker done: (\d+) task", w.log_path.read_text()).group(1)) for w in workers]
    assert sum(ran) == 4 and all(w.log_path.parent == tmp_path / "runs" / "workers" for w in workers)

    q = Queue("nb", storage="sqlite:///runs/queue.db", create=False)  # "come back later": a fresh handle
    with pytest.raises(TextclfError, match="queue 'nb2' not found in the storage"):
        Queue("nb2", storage="sqlite:///runs/queue.db", create=False)
    assert q.counts() == {"waiting": 0, "running": 0, "done": 4, "failed": 0, "cancelled": 0}
    assert q.wait(timeout=1) == q.counts()
    trials = q.study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} == {TrialState.COMPLETE}  # none twice, none lost
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 4

    df = runs(uri, queue="nb")
    assert len(df) == 4 and set(df.status) == {"FINISHED"} and set(df.family) == {"fasttext"}
    assert sorted(df.queue_task) == ["0", "1", "2", "3"] and set(df.dataset) == {"tweets_small"}
    assert df["test.macro_f1"].notna().all() and df["valid.accuracy"].notna().all()
    assert sorted(zip(df["params.model.lr"], df["params.model.dim"], strict=True)) == [
        ("0.2", "10"), ("0.2", "20"), ("0.4", "10"), ("0.4", "20")]
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in trials}
    for run_id, row in df.set_index("run_id").iterrows():
        trial = by_run[run_id]
        assert Path(row["model_dir"]) == tmp_path / "models" / "queue" / "nb" / f"{trial.number:04d}-fasttext"
        assert trial.value == row["valid.macro_f1"]
    assert list(df.columns[:5]) == ["run_id", "started", "family", "dataset", "status"]
    assert len(q.runs(uri)) == 4 and len(runs(uri, family="fasttext", dataset="tweets_small")) == 4
    assert runs(uri, family="lstm").empty


@pytest.mark.slow  # two `textclf train --track` processes, each importing the stack and migrating a store
def test_two_processes_training_at_once_both_land(data_dir, tmp_path):
    """Two `textclf train --track` processes on a fresh store (its first use races): two FINISHED runs."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    procs = []
    for seed in (1, 2):
        cmd = [*TEXTCLF, "train", "fasttext", "--train_path", data_dir / "train.csv", "--valid_path",
               data_dir / "valid.csv", "--test_path", data_dir / "test.csv", "--output_dir", tmp_path / f"m{seed}",
               *sets, "--set", f"seed={seed}", "--track", "--tracking_uri", uri]
        procs.append(subprocess.Popen([str(c) for c in cmd], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1")))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0 and "recorded: run " in out, out[-3000:]
    df = runs(uri)
    assert len(df) == 2 and set(df.status) == {"FINISHED"} and df["test.macro_f1"].notna().all()
    assert sorted(df.model_dir) == [str(tmp_path / "m1"), str(tmp_path / "m2")]
    assert sorted(df["params.seed"]) == ["1", "2"]


# --------------------------------------------------------------------------- SLURM (infra tests)
# the `cluster` and `postgres_url` fixtures live in conftest.py


@pytest.mark.slurm
@pytest.mark.parametrize("kind", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_grid_through_a_slurm_worker_array(kind, cluster, data_dir, tmp_path, request):
    """The notebook grid executed by `make workers_slurm N_WORKERS=2` (a SLURM job array) on a journal file
    (one node) or PostgreSQL (many nodes)."""
    storage = str(tmp_path / "queue.journal") if kind == "journal" else request.getfixturevalue("postgres_url")
    uri, logs = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "logs"
    q = Queue(f"slurm-{kind}", storage)
    assert q.grid(small_grid(data_dir, **{"model.lr": [0.2, 0.4], "model.dim": [10, 20]})) == [0, 1, 2, 3]
    open_store(uri)  # migrated before the workers start
    # the jobs run in tmp_path (models/queue/... lands there) and record into the test's store
    env = dict(cluster, TEXTCLF_TRACK="1", MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1")
    proc = make("workers_slurm", env, N_WORKERS="2", QUEUE=q.name, QUEUE_STORAGE=storage, IDLE_EXIT="5",
                       WORKER_CPUS="1", WORKER_MEM="1G", TIME_LIMIT="0:15:00", SLURM_LOGS=str(logs),
                       SBATCH_EXTRA=f"--chdir={tmp_path}", VENV=str(REPO / ".venv"))
    array = proc.stdout.strip().splitlines()[-1].split(";")[0]
    assert array.isdigit(), proc.stdout
    assert wait(env, array) == 0, "".join(p.read_text()[-2000:] for p in logs.iterdir())
    assert job_states(env, array) == [("COMPLETED", 0), ("COMPLETED", 0)]
    outs = sorted(logs.iterdir())
    assert [p.name for p in outs] == [f"textclf-worker-{array}_1.out", f"textclf-worker-{array}_2.out"]
    assert sum(int(re.search(r"worker done: (\d+) task", p.read_text()).group(1)) for p in outs) == 4

    trials = q.study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert {t.user_attrs["slurm_array_task_id"] for t in trials} <= {"1", "2"}
    df = runs(uri, queue=q.name)
    assert len(df) == 4 and set(df.status) == {"FINISHED"} and df["test.macro_f1"].notna().all()
    assert {Path(d).parent for d in df.model_dir} == {tmp_path / "models" / "queue" / q.name}

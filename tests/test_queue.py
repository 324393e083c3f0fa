"""The run queue on an Optuna storage, with real worker processes.

Workers run as subprocesses of ``textclf queue worker`` (a plug-in family registers in its worker
only). A worker killed with SIGKILL mid-task has its task failed and retried: by the heartbeat
on SQLite (and PostgreSQL in the infra tests), by ``textclf queue requeue`` on a journal file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from textclf.cli import cli
from textclf.services.queue import Task, add_tasks, open_queue, status_rows
from textclf.services.tracking import TAG, open_store

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

REPO = Path(__file__).resolve().parents[1]
TEXTCLF = [sys.executable, "-c", "from textclf.cli import main; main()"]
SMALL = ["search.n_trials=0", "model.bucket=20000"]
TRAIN_ROWS = 800

SLEEPY = '''
"""A plug-in family that sleeps on its first attempt (a marker file says whether one started), then
predicts the majority class."""
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from textclf.core.predictor import Predictor
from textclf.core.registry import Family, register_family

CONFIG = {"seed": 1, "data": {"format": None, "text_column": "text", "label_column": "label", "reader": None},
          "model": {"sleep_s": 0.0, "marker": ""}}


class MajorityPredictor(Predictor):
    kind = "sleepy"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        from textclf.core.meta import read_meta

        return cls(model_dir, meta or read_meta(model_dir))

    def predict_proba(self, texts):
        out = np.zeros((len(texts), len(self.labels)))
        out[:, self.labels.index(self.meta["majority"])] = 1.0
        return out


def train(cfg, splits, output_dir, resume=False):
    from textclf.core.training import finish_run

    marker = Path(cfg["model"]["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(cfg["model"]["sleep_s"])
    majority = Counter(splits.train.labels).most_common(1)[0][0]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    predictor = MajorityPredictor(output_dir, {"labels": splits.labels, "kind": "sleepy", "majority": majority})
    finish_run(output_dir, predictor, splits, cfg, echo=False, majority=majority)
    return output_dir


register_family(Family(name="sleepy", train=train, predictor=MajorityPredictor, config=CONFIG,
                       description="sleeps, then predicts the majority class"))
'''


@pytest.fixture(scope="module")
def data(tweets, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data") / "tweets_small"
    d.mkdir()
    with open(tweets["train"], newline="", encoding="utf-8") as src, open(d / "train.csv", "w", newline="",
                                                                           encoding="utf-8") as dst:
        csv.writer(dst).writerows(list(csv.reader(src))[: TRAIN_ROWS + 1])
    for name in ("valid", "test"):
        shutil.copy(tweets[name], d / f"{name}.csv")
    return {name: str(d / f"{name}.csv") for name in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module, migrated once (before workers start)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    open_store(url)
    return url


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "sleepy.py"
    path.write_text(SLEEPY)
    return str(path)


def invoke(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def start_worker(tmp: Path, queue: str, storage: str, uri: str, *extra: str) -> subprocess.Popen:
    """A ``textclf queue worker`` process (its output in ``tmp/worker-<pid>.log``)."""
    log = open(tmp / f"worker-{time.monotonic_ns()}.log", "w")
    cmd = [*TEXTCLF, "queue", "worker", "--queue", queue, "--storage", storage, "--output_root", str(tmp / "models"),
           "--poll", "0.3", "--track", "--tracking_uri", uri, *extra]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    proc.log = log.name  # type: ignore[attr-defined]
    log.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """Wait for a worker; assert it exited 0; return its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out = Path(proc.log).read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(predicate, timeout: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sleepy_task(data: dict, sleepy: str, marker: Path) -> Task:
    return Task("sleepy", [data["train"]], data["valid"], data["test"],
                [f"model.marker={marker}", "model.sleep_s=300"], code=[sleepy])


def queue_runs(uri: str, queue: str) -> list:
    return open_store(uri).search(f"tags.`{TAG}queue` = '{queue}'")


# --------------------------------------------------------------------------- adding, status, cancel
def test_add_enqueues_one_task_per_grid_point(data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    out = invoke("queue", "add", "--queue", "g", "--storage", storage, "--family", "fasttext",
                 "--train_path", data["train"], "--valid_path", data["valid"], "--set", "search.n_trials=0",
                 "--grid", "model.lr=0.1,0.5", "--grid", "model.dim=[25, 50]")
    assert out.strip() == f"queued 4 task(s) on 'g' ({storage}): 0, 1, 2, 3"
    rows = status_rows(open_queue("g", storage))
    assert [r["task"] for r in rows] == [f"fasttext --set search.n_trials=0 --set model.lr={lr} --set model.dim={dim}"
                                         for lr in ("0.1", "0.5") for dim in ("25", "50")]
    task = Task.from_trial(open_queue("g", storage).trials[0])
    assert task.train_path == [str(Path(data["train"]).resolve())] and task.test_path is None
    status = invoke("queue", "status", "--queue", "g", "--storage", storage).splitlines()
    assert status[0] == "queue g: 4 waiting, 0 running, 0 done, 0 failed, 0 cancelled"
    assert status[1].split() == ["0", "waiting", "tweets_small", "fasttext", "--set", "search.n_trials=0", "--set", "model.lr=0.1",
                                 "--set", "model.dim=25"]
    assert invoke("queue", "cancel", "--queue", "g", "--storage", storage, "--task", "3").strip() == "cancelled 1 task(s): 3"
    counts = json.loads(invoke("queue", "status", "--queue", "g", "--storage", storage, "--json"))["counts"]
    assert counts == {"waiting": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 1}


def test_add_checks_config_keys_and_queue_names(data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    result = CliRunner().invoke(cli, ["queue", "add", "--queue", "bad", "--storage", storage, "--family", "fasttext",
                                      "--train_path", data["train"], "--valid_path", data["valid"],
                                      "--grid", "model.nope=1,2"])
    assert result.exit_code == 2 and result.output.startswith("Error: --set model.nope: unknown key 'model.nope'")
    result = CliRunner().invoke(cli, ["queue", "status", "--queue", "missing", "--storage", storage])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: queue 'missing' not found in the storage (textclf queue add creates it)"


# --------------------------------------------------------------------------- workers
@pytest.mark.slow  # two worker processes, 4 tracked runs, 3 s idle exit (quick: test_experiments' notebook grid)
def test_two_workers_run_every_task_exactly_once(data, uri, tmp_path):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    invoke("queue", "add", "--queue", "grid4", "--storage", storage, "--family", "fasttext",
           "--train_path", data["train"], "--valid_path", data["valid"], "--test_path", data["test"],
           *[x for s in SMALL for x in ("--set", s)], "--grid", "model.lr=0.2,0.4", "--grid", "model.dim=10,20")
    workers = [start_worker(tmp_path, "grid4", storage, uri, "--idle_exit", "3") for _ in range(2)]
    outputs = [finish(w) for w in workers]
    ran = [int(next(x for x in out.splitlines() if x.startswith("worker done:")).split()[2]) for out in outputs]
    assert sum(ran) == 4
    trials = open_queue("grid4", storage).get_trials()
    assert len(trials) == 4 and {t.state for t in trials} == {TrialState.COMPLETE}
    runs = {r.info.run_id: r for r in queue_runs(uri, "grid4")}
    assert len(runs) == 4
    assert sorted(r.data.tags[f"{TAG}queue_task"] for r in runs.values()) == ["0", "1", "2", "3"]
    for t in trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags[f"{TAG}queue_task"] == str(t.number) and run.info.status == "FINISHED"
        assert t.value == run.data.metrics["valid.macro_f1"] == t.user_attrs["valid_macro_f1"]
        assert Path(t.user_attrs["model_dir"]) == tmp_path / "models" / "grid4" / f"{t.number:04d}-fasttext"
        assert (Path(t.user_attrs["model_dir"]) / "meta.json").is_file()
    status = invoke("queue", "status", "--queue", "grid4", "--storage", storage).splitlines()
    assert status[0] == "queue grid4: 0 waiting, 0 running, 4 done, 0 failed, 0 cancelled"


@pytest.mark.slow  # waits out the heartbeat grace period between two worker processes
def test_killed_worker_task_is_retried_through_the_heartbeat(data, uri, sleepy, tmp_path):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    marker = tmp_path / "started"
    study = open_queue("kill", storage, create=True)
    add_tasks(study, [sleepy_task(data, sleepy, marker)])
    beat = ("--heartbeat", "1", "--grace", "3")
    first = start_worker(tmp_path, "kill", storage, uri, *beat, "--max_tasks", "1")
    wait_for(marker.exists, what="the first worker to start the task")
    [running] = study.get_trials(states=(TrialState.RUNNING,))
    assert running.user_attrs["pid"] == first.pid
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = start_worker(tmp_path, "kill", storage, uri, *beat, "--max_tasks", "1", "--idle_exit", "60")
    finish(second)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.user_attrs["task"] == dead.user_attrs["task"] and retry.user_attrs["pid"] == second.pid
    assert (tmp_path / "models" / "kill" / "0000-sleepy" / "meta.json").is_file()
    store = open_store(uri)
    assert store.client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert store.client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    status = invoke("queue", "status", "--queue", "kill", "--storage", storage).splitlines()
    assert status[0] == "queue kill: 0 waiting, 0 running, 1 done, 1 failed, 0 cancelled"
    assert "(retry of 0; value" in status[2]


@pytest.mark.slow  # a worker process killed mid-task (quick: test_requeue_judges_each_running_task_by_its_owner_record)
def test_sigterm_stops_a_worker_and_requeues_its_task(data, uri, sleepy, tmp_path):
    """scancel / docker stop: the task is failed and enqueued again at once, its MLflow run KILLED."""
    storage = str(tmp_path / "q.journal")
    marker = tmp_path / "started"
    study = open_queue("term", storage, create=True)
    add_tasks(study, [sleepy_task(data, sleepy, marker)])
    worker = start_worker(tmp_path, "term", storage, uri)
    wait_for(marker.exists, what="the worker to start the task")
    wait_for(lambda: "mlflow_run_id" in study.get_trials()[0].user_attrs, what="the MLflow run")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    assert worker.returncode != 0
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and dead.user_attrs["error"] == "worker interrupted"
    assert retry.state == TrialState.WAITING and RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    run = open_store(uri).client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


@pytest.mark.slow  # two worker processes one after the other (quick: the SIGTERM requeue above)
def test_journal_queue_requeues_with_the_command(data, uri, sleepy, tmp_path):
    storage = str(tmp_path / "q.journal")
    marker = tmp_path / "started"
    study = open_queue("journal", storage, create=True)
    add_tasks(study, [sleepy_task(data, sleepy, marker)])
    first = start_worker(tmp_path, "journal", storage, uri, "--max_tasks", "1")
    wait_for(marker.exists, what="the first worker to start the task")
    args = ("queue", "requeue", "--queue", "journal", "--storage", storage)
    assert invoke(*args).strip() == "requeued 0 task(s)"  # its worker is alive
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert invoke(*args).strip() == "requeued 1 task(s): 0"
    assert invoke(*args).strip() == "requeued 0 task(s)"
    finish(start_worker(tmp_path, "journal", storage, uri, "--max_tasks", "1"))
    dead, retry = open_queue("journal", storage).get_trials()
    assert dead.state == TrialState.FAIL and dead.user_attrs["error"].startswith("requeued: worker gone after")
    assert retry.state == TrialState.COMPLETE and RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0


def test_requeue_judges_each_running_task_by_its_owner_record(tmp_path, monkeypatch):
    """The one liveness rule (textclf.core.claims) on the tasks' owner records: a reused pid is gone, another host is not."""
    from textclf.core.claims import owner_record
    from textclf.services.queue import _record_worker, pop_task, requeue

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = {**owner_record(killed.pid), "slurm_job_id": "7"}  # a worker of SLURM job 7, on this host
    killed.kill()
    killed.wait()
    try:
        study = open_queue("owners", str(tmp_path / "q.journal"), create=True)
        add_tasks(study, [Task("fasttext", ["/t.csv"], "/v.csv")] * 4)
        remote = {**dead, "host": "elsewhere", "slurm_job_id": None}  # another host outside SLURM: nobody here can tell
        holders = [owner_record(live.pid), {**owner_record(live.pid), "pid_start": 1.0}, remote, dead]
        for record in holders:
            trial = pop_task(study)
            for key, value in record.items():
                trial.set_user_attr(key, value)
        assert requeue(study) == [1, 3]  # the reused pid's and the killed worker's, not the live or the remote one
        # a retried task carries its dead attempt's attributes: a worker outside SLURM clears the SLURM ids it lacks
        for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
            monkeypatch.delenv(var, raising=False)
        pop_task(study)
        retry_of_3 = pop_task(study)
        assert retry_of_3.user_attrs["slurm_job_id"] == "7" and retry_of_3.user_attrs["pid"] == killed.pid
        _record_worker(retry_of_3)
        assert retry_of_3.user_attrs["slurm_job_id"] is None and retry_of_3.user_attrs["pid"] == os.getpid()
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------- PostgreSQL (infra tests)
# the `cluster` and `postgres_url` fixtures live in conftest.py


@pytest.mark.postgres
def test_queue_on_postgresql(postgres_url, data, uri, sleepy, tmp_path):
    """Two workers on PostgreSQL run a grid once each; a SIGKILLed worker's task is retried via the heartbeat."""
    invoke("queue", "add", "--queue", "pg", "--storage", postgres_url, "--family", "fasttext",
           "--train_path", data["train"], "--valid_path", data["valid"], *[x for s in SMALL for x in ("--set", s)],
           "--set", "seed=7", "--grid", "model.lr=0.2,0.4")
    workers = [start_worker(tmp_path, "pg", postgres_url, uri, "--idle_exit", "3") for _ in range(2)]
    for w in workers:
        finish(w)
    trials = open_queue("pg", postgres_url).get_trials()
    assert len(trials) == 2 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert len(queue_runs(uri, "pg")) == 2

    marker = tmp_path / "started"
    study = open_queue("pgkill", postgres_url, create=True)
    add_tasks(study, [sleepy_task(data, sleepy, marker)])
    beat = ("--heartbeat", "1", "--grace", "3")
    first = start_worker(tmp_path, "pgkill", postgres_url, uri, *beat, "--max_tasks", "1")
    wait_for(marker.exists, what="the first worker to start the task")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    finish(start_worker(tmp_path, "pgkill", postgres_url, uri, *beat, "--max_tasks", "1", "--idle_exit", "60"))
    dead, retry = study.get_trials()
    assert (dead.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0

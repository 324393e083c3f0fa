"""Experiments from Python (a notebook): queue runs, start workers, read the experiment store as a DataFrame.

A thin layer over :mod:`textclf.services.queue` (a queue is an Optuna study whose waiting trials are
tasks) and :mod:`textclf.services.tracking` (every run an MLflow run)::

    from textclf.services.experiments import Queue, runs

    q = Queue("exp1")                                    # storage sqlite:///runs/queue.db
    q.grid({"family": ["fasttext", "lstm"], "data": ["data/tweets_sentiment"],
            "set": {"seed": [1, 2], "search.n_trials": 0}})
    q.start_workers(2)                                   # background `textclf worker` processes
    # ... close the notebook, come back later ...
    q = Queue("exp1"); q.status(); q.counts()            # one row per task; tasks per state
    runs(queue="exp1").sort_values("test.macro_f1")      # the recorded runs, one row each

Workers started here outlive the notebook (their own session, output in ``runs/workers/``);
``textclf worker --queue exp1`` on any other machine that reaches the storage works the same
queue. Relative paths (data, storage and tracking URIs) are made absolute against the working
directory, so the workers may start anywhere.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from textclf.services.queue import (
    DEFAULT_OUTPUT_ROOT,
    DEFAULT_STORAGE,
    add_tasks,
    cancel,
    expand_grid,
    grid_tasks,
    load_grid,
    make_tasks,
    open_queue,
    raw_value,
    requeue,
    state_counts,
    status_rows,
)
from textclf.services.tracking import TAG, open_store

__all__ = ["Queue", "runs"]

#: the first columns of :func:`runs` (metrics, ``model_dir`` and ``params.*`` follow)
RUN_COLUMNS = ["run_id", "started", "family", "dataset", "status", "command", "queue", "queue_task"]
STATUS_COLUMNS = ["state", "task", "dataset", "retry_of", "value", "mlflow_run_id", "host", "pid", "age_s", "error"]


def absolute_url(url: str) -> str:
    """A storage or tracking URI whose relative file part is made absolute (``sqlite:///runs/q.db``, a journal path)."""
    if url.startswith("sqlite:///") and not url.startswith(("sqlite:////", "sqlite:///:memory:")):
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).absolute())
    if "://" not in url:
        return str(Path(url).absolute())
    return url


def _names(value: str | list[str] | tuple[str, ...]) -> list[str]:
    return [value] if isinstance(value, str | Path) else list(value)


class Queue:
    """A run queue on an Optuna storage: ``sqlite:///file.db`` (default ``runs/queue.db``), ``postgresql://...``
    or a journal file; created when missing unless ``create=False`` (then a missing queue is an error)."""

    def __init__(self, name: str, storage: str | None = None, create: bool = True):
        self.name = name
        self.storage = absolute_url(storage or DEFAULT_STORAGE)
        self.study = open_queue(name, self.storage, create=create)

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, storage={self.storage!r})"

    # ---------------------------------------------------------------- adding
    def add(self, family: str | list[str], train_path: str | list[str], valid_path: str, test_path: str | None = None,
            set: dict[str, Any] | None = None, grid: dict[str, list] | None = None,  # noqa: A002 - `--set`
            config: str | None = None, code: str | list[str] | None = None, metric: str = "macro_f1",
            force: bool = False, reuse: bool = False) -> list[int]:
        """Queue one task per family (x point of ``grid``, ``{key: [values]}``) as ``textclf queue add`` does.

        ``set`` holds fixed config values (``{"model.lr": 0.3}``); returns the task numbers.
        """
        overrides = [f"{k}={raw_value(v)}" for k, v in (set or {}).items()]
        points = expand_grid(overrides, {k: [raw_value(v) for v in values] for k, values in (grid or {}).items()})
        tasks = make_tasks(_names(family), [str(p) for p in _names(train_path)], str(valid_path),
                           str(test_path) if test_path else None, points, config, _names(code or []), metric, force, reuse)
        return add_tasks(self.study, tasks)

    def grid(self, spec: dict | str | Path) -> list[int]:
        """Queue a grid (the dict a grid file holds, or the file's path; see ``textclf queue grid --help``)."""
        tasks = grid_tasks(spec) if isinstance(spec, dict) else load_grid(spec)
        return add_tasks(self.study, tasks)

    # ---------------------------------------------------------------- watching
    def status(self):
        """One row per task (index: task number): state, task, dataset, value, MLflow run id, host/pid/age while running, error.

        ``.attrs["counts"]`` holds the tasks per state (:meth:`counts`).
        """
        import pandas as pd

        rows = status_rows(self.study)
        frame = pd.DataFrame(rows, columns=["number", *STATUS_COLUMNS]).set_index("number")
        frame.attrs["counts"] = state_counts(rows)
        return frame

    def counts(self) -> dict[str, int]:
        """Tasks per state: waiting, running, done, failed, cancelled."""
        return state_counts(status_rows(self.study))

    def wait(self, timeout: float | None = None, poll: float = 5.0,
             workers: list[subprocess.Popen] | None = None) -> dict[str, int]:
        """Block until no task waits or runs (or every one of ``workers`` exited); returns :meth:`counts`.

        A ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.counts()
            if counts["waiting"] == 0 and counts["running"] == 0:
                return counts
            if workers and all(w.poll() is not None for w in workers):
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.name!r} still has tasks after {timeout}s: {counts}")
            time.sleep(poll)

    def runs(self, tracking_uri: str | None = None, **filters):
        """The recorded runs of this queue's tasks (:func:`runs` with ``queue=self.name``)."""
        return runs(tracking_uri, queue=self.name, **filters)

    # ---------------------------------------------------------------- managing
    def cancel(self, numbers: list[int] | None = None) -> list[int]:
        """Cancel waiting tasks (all, or those numbered); returns their numbers."""
        return cancel(self.study, numbers)

    def requeue(self, older_than: float | None = None, failed: bool = False) -> list[int]:
        """Journal queues: re-enqueue tasks whose worker died (``textclf queue requeue``); returns their numbers."""
        return requeue(self.study, older_than, failed)

    # ---------------------------------------------------------------- workers
    def start_workers(self, n: int = 1, *, idle_exit: float | None = 60, max_tasks: int | None = None,
                      output_root: str | Path | None = None, tracking_uri: str | None = None,
                      track: bool | None = None, log_dir: str | Path = "runs/workers", cwd: str | Path | None = None,
                      env: dict[str, str] | None = None, args: list[str] | tuple[str, ...] = ()) -> list[subprocess.Popen]:
        """Start ``n`` background ``textclf worker`` processes on this queue; returns their ``Popen`` handles.

        Each runs in its own session (closing the notebook or its terminal does not stop it) and
        writes to ``log_dir/worker-<queue>-<time>-<i>.log`` (the handle's ``log_path``). They stop
        when the queue stayed empty ``idle_exit`` seconds (None: never) or after ``max_tasks``.
        Models go to ``output_root/<queue>/<task>-<family>`` (default ``models/queue``); runs to
        ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///runs/mlflow.db``).
        """
        script = Path(sys.executable).with_name("textclf")
        cmd = [str(script)] if script.is_file() else [sys.executable, "-c", "from textclf.cli import main; main()"]
        cmd += ["worker", "--queue", self.name, "--storage", self.storage,
                "--output_root", str(Path(output_root or DEFAULT_OUTPUT_ROOT).absolute())]
        if idle_exit is not None:
            cmd += ["--idle-exit", str(idle_exit)]
        if max_tasks is not None:
            cmd += ["--max-tasks", str(max_tasks)]
        if tracking_uri:
            cmd += ["--tracking_uri", absolute_url(tracking_uri)]
        if track is not None:
            cmd.append("--track" if track else "--no-track")
        cmd += list(args)
        logs = Path(log_dir).absolute()
        logs.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        procs = []
        for i in range(n):
            log_path = logs / f"worker-{self.name}-{stamp}-{i}.log"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            proc.log_path = log_path  # type: ignore[attr-defined]
            procs.append(proc)
        return procs


def runs(tracking_uri: str | None = None, family: str | None = None, dataset: str | None = None,
         queue: str | None = None, status: str | None = None, per_class: bool = False):
    """The experiment store as a pandas DataFrame, newest run first (``textclf runs list`` as a table).

    One row per run: ``run_id``, ``started``, ``family``, ``dataset``, ``status`` (FINISHED,
    FAILED, KILLED, RUNNING), ``command`` (train, tune, rerun, queue), ``queue``/``queue_task``
    for queued runs, the metrics (``valid.*``, ``test.*``, ``search.*``, ``train_seconds``;
    ``per_class``: ``test.class.<label>.f1`` too), ``model_dir``, ``parent_run``, ``data_sha256``,
    ``git_commit`` and the effective config as ``params.<key>`` columns (strings, as MLflow keeps them).
    """
    import pandas as pd

    from textclf.services.runs import run_summary

    store = open_store(tracking_uri, create=False)
    wanted = {"family": family, "dataset": dataset, "queue": queue}
    rows = []
    for run in store.search(f"attributes.status = '{status.upper()}'" if status else ""):
        tags = run.data.tags
        if any(value is not None and tags.get(f"{TAG}{key}") != str(value) for key, value in wanted.items()):
            continue
        summary = run_summary(run)
        row = {"run_id": summary["run_id"], "started": _dt.datetime.fromtimestamp(run.info.start_time / 1000),
               "family": summary["family"], "dataset": summary["dataset"], "status": summary["status"],
               "command": summary["command"], "queue": tags.get(f"{TAG}queue"), "queue_task": tags.get(f"{TAG}queue_task")}
        row.update({k: v for k, v in summary["metrics"].items()
                    if not k.startswith("curve.") and (per_class or ".class." not in k)})
        row.update({"model_dir": summary["model_dir"], "parent_run": summary["parent_run"],
                    "data_sha256": summary["data_sha256"], "git_commit": tags.get(f"{TAG}git_commit")})
        row.update({f"params.{k}": v for k, v in sorted(run.data.params.items())})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "model_dir"])
    metrics = sorted({k for r in rows for k in r if k not in RUN_COLUMNS and "." in k and not k.startswith("params.")},
                     key=lambda k: (not k.startswith("valid."), not k.startswith("test."), k))
    rest = [c for c in frame.columns if c not in RUN_COLUMNS and c not in metrics and not c.startswith("params.")]
    params = sorted(c for c in frame.columns if c.startswith("params."))
    return frame[[*RUN_COLUMNS, *metrics, *rest, *params]]

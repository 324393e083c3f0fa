"""``textclf queue``: a run queue on the shared Optuna storage (add, grid, worker, status, requeue, cancel).

See :mod:`textclf.services.queue`: a queue is an Optuna study whose WAITING trials are tasks; workers
on any machine that reaches the storage pop and run them, recording MLflow runs. ``textclf worker``
is ``textclf queue worker`` (the same command object, registered at the top level too).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from textclf.cli.family_cmd import store_options
from textclf.services.queue import DEFAULT_OUTPUT_ROOT, DEFAULT_STORAGE, HEARTBEAT_S, MAX_RETRY


def storage_option(fn):
    """``--storage URL``."""
    return click.option("--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
                        help="Optuna storage holding the queue: sqlite:///file.db (local disk), postgresql://..., "
                        "or a journal file path (no heartbeat: use `queue requeue`).")(fn)


def queue_options(fn):
    """``--queue NAME`` and ``--storage URL``."""
    fn = storage_option(fn)
    fn = click.option("--queue", "name", required=True, help="Queue name (an Optuna study).")(fn)
    return fn


@click.group()
def queue() -> None:
    """A run queue on the shared Optuna storage: add tasks, start workers anywhere, watch and requeue."""


@queue.command("add")
@queue_options
@click.option("--family", "families", multiple=True, required=True,
              help="Model family to train (repeatable: one task per family and grid point).")
@click.option("--train_path", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled training file (repeatable: concatenated).")
@click.option("--valid_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Labelled validation file.")
@click.option("--test_path", default=None, type=click.Path(exists=True, dir_okay=False), help="Labelled test file.")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON config merged over the family's defaults.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override for every task. Repeatable.")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="Grid axis: one task per value (or JSON list), the product over every --grid. Repeatable.")
@click.option("--code", "code", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Plug-in file the workers import (repeatable).")
@click.option("--metric", default="macro_f1", show_default=True, help="Valid metric reported as the task's value.")
@click.option("--reuse", "--skip-existing", "reuse", is_flag=True,
              help="A task whose family, config and data equal a finished run in the store copies its model instead of training.")
@click.option("--force", is_flag=True, help="Never reuse an earlier run (overrides --reuse).")
def add(name, storage, families, train_path, valid_path, test_path, config_path, overrides, grid, code, metric,
        reuse, force) -> None:
    """Enqueue one task per family x grid point (config keys checked now, data read by the workers)."""
    from textclf.services.queue import add_tasks, expand_grid, make_tasks, open_queue, parse_grid

    points = expand_grid(list(overrides), parse_grid(grid))
    tasks = make_tasks(families, train_path, valid_path, test_path, points, config_path, code, metric, force, reuse)
    numbers = add_tasks(open_queue(name, storage, create=True), tasks)
    click.echo(f"queued {len(tasks)} task(s) on {name!r} ({storage}): {', '.join(map(str, numbers))}")


@queue.command("grid")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--queue", "name", default=None, help="Queue name (an Optuna study; default: the grid file's name "
              "without .json).")
@storage_option
@click.option("--list", "list_only", is_flag=True, help="Print the tasks the grid makes and queue nothing.")
def grid_cmd(grid_file, name, storage, list_only) -> None:
    """Enqueue a grid file: one task per family x data x point of the "set" lists.

    \b
    {"family": ["fasttext", "lstm"],
     "data": ["data/a", {"train": "b/train.csv", "valid": "b/valid.csv", "test": "b/test.csv"}],
     "set": {"model.dropout": [0.1, 0.3], "search.n_trials": 0},
     "config": "my.json", "code": "plugin.py"}

    "data" folders hold train/valid(/test).csv (or .tsv/.jsonl/.txt); a list in "set" is an axis,
    any other value is fixed; a "set" key applies to the families whose config has it (a key none
    has is an error). "config" is a file or {"family": file}; "code" a plug-in file or a list;
    "metric", "force" and "reuse" as in `queue add`. Relative paths start at the working directory.
    """
    from textclf.services.queue import add_tasks, load_grid, open_queue

    tasks = load_grid(grid_file)
    if list_only:
        for i, task in enumerate(tasks):
            click.echo(f"{i:>5}  {task.label()}  ({task.train_path[0]})")
        return
    name = name or Path(grid_file).stem
    numbers = add_tasks(open_queue(name, storage, create=True), tasks)
    click.echo(f"queued {len(tasks)} task(s) on {name!r} ({storage}): {', '.join(map(str, numbers))}")


@queue.command("worker")
@queue_options
@click.option("--output_root", default=DEFAULT_OUTPUT_ROOT, show_default=True, type=click.Path(file_okay=False),
              help="Model directories go to OUTPUT_ROOT/QUEUE/<task>-<family>.")
@click.option("--max_tasks", "--max-tasks", "max_tasks", type=int, default=None,
              help="Stop after this many tasks (default: no limit).")
@click.option("--idle_exit", "--idle-exit", "idle_exit", type=float, default=None, metavar="SECONDS",
              help="Stop when the queue stayed empty this long (default: wait for tasks forever).")
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between looks at an empty queue.")
@click.option("--heartbeat", type=int, default=HEARTBEAT_S, show_default=True,
              help="RDB storages: seconds between heartbeats of the running task.")
@click.option("--grace", type=int, default=None,
              help="RDB storages: a task without a heartbeat this long is failed and retried (default 3 x heartbeat).")
@click.option("--max_retry", type=int, default=MAX_RETRY, show_default=True, help="Retries of a task whose worker died.")
@store_options
def worker(name, storage, output_root, max_tasks, idle_exit, poll, heartbeat, grace, max_retry, tracking_uri, track) -> None:
    """Pop tasks one at a time and train them in this process (run as many workers as you like, anywhere).

    `textclf worker` and `textclf queue worker` are the same command.
    """
    from textclf.core.progress import setup_logging
    from textclf.services.queue import Tracking, open_queue, work

    setup_logging()
    _stop_on_sigterm()
    study = open_queue(name, storage, heartbeat=heartbeat, grace=grace, max_retry=max_retry)
    done = work(study, output_root, max_tasks, idle_exit, poll, Tracking(track, tracking_uri))
    click.echo(f"worker done: {done} task(s) run from {name!r}")


def _stop_on_sigterm() -> None:
    """SIGTERM (scancel, docker stop) stops the worker like Ctrl-C: its task is failed and enqueued again."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@queue.command("status")
@queue_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON: counts and one row per task.")
def status(name, storage, as_json) -> None:
    """Counts per state and one line per task: number, state, dataset, family and overrides (running ones with host,
    pid and age)."""
    from textclf.services.queue import open_queue, state_counts, status_rows

    rows = status_rows(open_queue(name, storage))
    counts = state_counts(rows)
    if as_json:
        click.echo(json.dumps({"counts": counts, "tasks": rows}, indent=2))
        return
    click.echo(f"queue {name}: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    for r in rows:
        extra = []
        if r["retry_of"] is not None:
            extra.append(f"retry of {r['retry_of']}")
        if r["state"] == "running":
            extra.append(f"on {r['host']} pid {r['pid']} for {r['age_s']}s")
        if r["value"] is not None:
            extra.append(f"value {r['value']:.4f}")
        if r.get("task_type") == "multilabel":
            extra.append("multi-label")
        if r["mlflow_run_id"]:
            extra.append(f"run {r['mlflow_run_id'][:8]}")
        if r["error"]:
            extra.append(f"error: {r['error']}")
        click.echo(f"{r['number']:>5}  {r['state']:<9}  {r['dataset']}  {r['task']}"
                   + (f"  ({'; '.join(extra)})" if extra else ""))


@queue.command("requeue")
@queue_options
@click.option("--older_than", type=float, default=None, metavar="SECONDS",
              help="Also requeue RUNNING tasks started longer ago than this (their worker is presumed dead).")
@click.option("--failed", is_flag=True, help="Also requeue FAILED tasks not retried yet.")
def requeue_cmd(name, storage, older_than, failed) -> None:
    """Journal-file queues (no heartbeat): fail and re-enqueue tasks whose worker died."""
    from textclf.services.queue import open_queue, requeue

    numbers = requeue(open_queue(name, storage), older_than, failed)
    click.echo(f"requeued {len(numbers)} task(s)" + (f": {', '.join(map(str, numbers))}" if numbers else ""))


@queue.command("cancel")
@queue_options
@click.option("--task", "numbers", type=int, multiple=True, help="Task number to cancel (repeatable; default: all waiting).")
def cancel_cmd(name, storage, numbers) -> None:
    """Cancel waiting tasks (running ones finish)."""
    from textclf.services.queue import cancel, open_queue

    done = cancel(open_queue(name, storage), list(numbers) or None)
    click.echo(f"cancelled {len(done)} task(s)" + (f": {', '.join(map(str, done))}" if done else ""))

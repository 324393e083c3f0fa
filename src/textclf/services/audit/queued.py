"""``textclf audit --queue STORAGE``: the audit's K x families fold fits as tasks of the run queue.

Without ``--queue`` the folds run in the audit's own process (:mod:`.oof`). With it, each
(family, fold) pair becomes one task of the queue in ``STORAGE`` (the Optuna storage of
:mod:`textclf.services.queue`: SQLite on a local disk, a journal file on a shared filesystem,
or PostgreSQL across machines), so ``textclf queue worker`` processes on other cores, machines or
SLURM nodes share the fits:

1. the folds are written as ``<audit dir>/folds/<k>/{train,held}.jsonl`` (what the task reads;
   the audit directory must be reachable by the workers under the same path);
2. a task a (family, fold) is added unless the queue already holds the same task waiting,
   running or done (a rerun of the audit reuses finished fits, and two audits of one file do
   not train twice);
3. unless ``work=False``, this process works the queue too, then waits until every one of
   its tasks is done or failed (a failed task is a one-line error naming it and its error);
4. each fold model (its ``model_dir``, recorded by the worker) predicts its held-out rows.

The task trains as ``textclf train`` would with the audit's overrides and the fold as ``valid``:
the same config and data as the in-process fit, so the out-of-fold probabilities are the same
(bit for bit for families that are deterministic for a seed). They are memoised like the
in-process ones (:func:`.oof.family_oof`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from textclf.core.data import Dataset, write_labelled
from textclf.core.errors import TextclfError
from textclf.services.audit.oof import audit_family, family_overrides, fill_held_out

log = logging.getLogger(__name__)

FOLDS_DIR = "folds"
MODELS_DIR = "queue_models"
#: the fold files are JSONL with the built-in keys, whatever the audited file's format or columns were
FOLD_DATA = ("data.format=jsonl", "data.text_column=text", "data.label_column=label", "data.reader=null",
             "data.label_separator=null")


def write_folds(ds: Dataset, folds: list[tuple[np.ndarray, np.ndarray]], out: Path) -> list[tuple[str, str]]:
    """Write each fold's training and held-out rows under ``out``/folds/<k>/; returns their (train, held) paths."""
    paths = []
    for number, (train_idx, held_idx) in enumerate(folds, 1):
        folder = out / FOLDS_DIR / str(number)
        folder.mkdir(parents=True, exist_ok=True)
        train, held = folder / "train.jsonl", folder / "held.jsonl"
        write_labelled(train, ds.subset(train_idx), "jsonl")
        write_labelled(held, ds.subset(held_idx), "jsonl")
        paths.append((str(train.resolve()), str(held.resolve())))
    return paths


def fold_tasks(name: str, ds: Dataset, fold_paths: list[tuple[str, str]], seed: int, overrides) -> list:
    """One queue Task a fold of family ``name``: the audit's overrides, the seed, the fold files' data settings."""
    from textclf.services.queue import make_tasks

    point = [f"seed={seed}", *family_overrides(name, overrides), *FOLD_DATA,
             f"data.task={'multilabel' if ds.multilabel else 'multiclass'}"]
    metric = "micro_f1" if ds.multilabel else "macro_f1"
    return [make_tasks([name], [train], held, points=[point], metric=metric)[0] for train, held in fold_paths]


def enqueue(study, tasks: list) -> list[int]:
    """The queue trial number of each task: an equal task waiting, running or done is reused, the others are added."""
    from optuna.trial import TrialState

    from textclf.services.queue import TASK_ATTR, add_tasks

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    known = {}
    for trial in study.get_trials(deepcopy=False):
        spec = trial.user_attrs.get(TASK_ATTR)
        if isinstance(spec, dict) and trial.state in live:
            known.setdefault(repr(sorted(spec.items())), trial.number)
    numbers, missing = [], []
    for task in tasks:
        number = known.get(repr(sorted(asdict(task).items())))
        numbers.append(number)
        if number is None:
            missing.append(task)
    added = iter(add_tasks(study, missing))
    return [n if n is not None else next(added) for n in numbers]


def wait_for(study, numbers: list[int], poll: float, timeout: float | None) -> dict[int, str]:
    """Block until every trial in ``numbers`` finished; returns ``{number: model_dir}``; a failed one is a TextclfError.

    A task failed and retried (a dead worker's) is followed to its retry.
    """
    from optuna.trial import TrialState

    from textclf.services.queue import Task, original_number

    started = time.monotonic()
    while True:
        latest = {}  # each task's newest attempt (a retry names its first attempt; trials come in number order)
        for t in study.get_trials(deepcopy=False):
            latest[original_number(t)] = t
        done, waiting = {}, 0
        for number in numbers:
            trial = latest[number]
            current = trial.number
            if trial.state == TrialState.COMPLETE:
                done[number] = trial.user_attrs["model_dir"]
            elif trial.state == TrialState.FAIL:
                if trial.user_attrs.get("error") == "worker interrupted":
                    waiting += 1  # re-enqueued by the interrupted worker: its retry appears next poll
                    continue
                raise TextclfError(f"audit task {current} ({Task.from_trial(trial).label()}) failed: "
                                   f"{trial.user_attrs.get('error', 'no error recorded')}")
            elif trial.state == TrialState.PRUNED:
                raise TextclfError(f"audit task {current} was cancelled (textclf queue cancel); run the audit again")
            else:
                waiting += 1
        if not waiting:
            return done
        if timeout is not None and time.monotonic() - started > timeout:
            raise TextclfError(f"audit: {waiting} fold task(s) still unfinished after {timeout:g} s; start workers "
                               f"(textclf queue worker --queue {study.study_name} --storage ...) and run the audit again")
        time.sleep(poll)


def queued_oof(names: list[str], ds: Dataset, labels: list[str], folds: list[tuple[np.ndarray, np.ndarray]], seed: int,
               overrides, out: Path, storage: str, queue: str, work: bool = True, poll: float = 2.0,
               timeout: float | None = None) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of each family in ``names``, its fold fits run as tasks of queue ``queue`` in ``storage``."""
    from textclf.core.loading import load_predictor
    from textclf.services import queue as runqueue

    for name in names:
        audit_family(name).check_task(ds.task)
    fold_paths = write_folds(ds, folds, out)
    study = runqueue.open_queue(queue, storage, create=True)
    numbers = {name: enqueue(study, fold_tasks(name, ds, fold_paths, seed, overrides)) for name in names}
    log.info("audit: %d fold task(s) in queue %r", sum(map(len, numbers.values())), queue)
    if work:
        runqueue.work(study, out / MODELS_DIR, idle_exit=0, tracking=runqueue.Tracking(enabled=False))
    model_dirs = wait_for(study, [n for ns in numbers.values() for n in ns], poll, timeout)
    result = {}
    for name in names:
        proba = np.zeros((len(ds), len(labels)), dtype=np.float64)
        for number, (_, held_idx) in zip(numbers[name], folds, strict=True):
            fill_held_out(proba, labels, load_predictor(model_dirs[number], announce=False), ds, held_idx)
        result[name] = proba
    return result

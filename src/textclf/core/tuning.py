"""Optuna plumbing shared by every family: storages, resumable studies, search spaces, reports.

A study is a name plus a storage. The default storage is an Optuna journal file in
the output directory (safe for several processes on one machine, and resumable);
``--storage`` takes a journal path, ``redis://...`` or an RDB URL such as
``postgresql://user@host/db`` for workers on many machines.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from textclf.core.atomic import atomic_open
from textclf.core.claims import owner_gone, owner_record
from textclf.core.errors import ConfigError, Interrupted, TextclfError

log = logging.getLogger(__name__)
# multivariate TPE and the matplotlib plots are flagged experimental; they are stable enough for us
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

JOURNAL_FILE = "study.journal"
RDB_PREFIXES = ("postgresql", "postgres", "mysql", "sqlite", "oracle", "mssql")
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def wants_search(search: dict) -> bool:
    """Whether a ``search`` config block asks for a search: ``n_trials`` or ``timeout`` set (the one place this rule lives)."""
    return bool(search.get("n_trials") or search.get("timeout"))


class SearchError(TextclfError):
    """A search that produced nothing to refit (every trial failed): a one-line error, not a traceback."""


def make_storage(storage: str | None, output_dir: str | Path) -> optuna.storages.BaseStorage:
    """Turn ``--storage`` into an Optuna storage (optuna's own CLI rule).

    None -> journal file ``<output_dir>/study.journal``; ``redis://`` -> journal on Redis;
    a URL with an RDB scheme -> RDBStorage; anything else -> a journal file at that path.
    """
    # absolute paths: Optuna's journal lock is a symlink, and a relative one left by a kill -9 dangles
    # from the lock directory, so the next run would spin on it instead of breaking it after its grace period
    if not storage:
        path = (Path(output_dir) / JOURNAL_FILE).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if storage.startswith("redis"):
        from optuna.storages.journal import JournalRedisBackend

        return JournalStorage(JournalRedisBackend(storage))
    if storage.split(":", 1)[0].split("+", 1)[0] in RDB_PREFIXES and "://" in storage:
        return rdb_storage(storage)
    path = Path(storage).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def rdb_storage(url: str, attempts: int = 8) -> optuna.storages.RDBStorage:
    """An RDB storage; retries the schema creation that races when several workers start on an empty database.

    (Two workers creating Optuna's tables at once: one gets "duplicate key ... studydirection".)
    """
    import random
    import time

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except (IntegrityError, ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise
            log.info("storage schema being created by another worker (%s); retrying", type(exc).__name__)
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def open_study(name: str, storage: optuna.storages.BaseStorage, seed: int, direction: str = "maximize",
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study or load it if it exists (every worker can call this), with a seeded TPE sampler.

    The sampler draws each trial's random numbers from ``(seed, SLURM array task id or 0, trial
    number)`` (:class:`TrialSeededTPESampler`): trial numbers are unique within a study, so
    workers sharing it never draw the same points (with or without SLURM), while a lone worker
    stays reproducible.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress has its own lines (textclf.core.progress)
    worker = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
    sampler = TrialSeededTPESampler(seed=seed + worker, multivariate=True)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    fail_stale_trials(study)
    return study


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is reset from ``(seed, trial number)`` before every trial.

    Two workers with one seed on one study would otherwise draw identical start-up points (each
    process's sampler replays the same random stream); the trial number, unique in a study, makes
    their draws differ while a single worker's run stays the same for the same seed.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        if self._base_seed is None:
            return
        import numpy as np

        state = np.random.SeedSequence([self._base_seed % 2**32, trial.number]).generate_state(2)
        for owner, value in ((self, state[0]), (getattr(self, "_random_sampler", None), state[1])):
            rng = getattr(getattr(owner, "_rng", None), "rng", None)
            if rng is not None:
                rng.seed(int(value))


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials left by a killed process as FAIL; returns how many.

    A trial's user attributes are its worker's owner record (:func:`record_worker`); it is failed
    when :func:`textclf.core.claims.owner_gone` says so from what this host knows (its pid is gone or
    reused here, or it ran in an earlier run of this requeued SLURM job). Live workers elsewhere
    sharing the study are never disturbed (``squeue`` is not asked: every study opening would ask it).
    """
    stale = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if isinstance(t.user_attrs.get("pid"), int) and owner_gone(t.user_attrs):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            stale += 1
    if stale:
        log.warning("study %s: marked %d trial(s) of a killed run as FAIL", study.study_name, stale)
    return stale


def count_done(study: optuna.Study) -> int:
    """Trials that finished (complete or pruned) and count toward the study's total."""
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Sample one value per entry of a JSON search space.

    Entry forms: ``{"type": "float", "low": a, "high": b, "log": true}``,
    ``{"type": "int", "low": a, "high": b, "step": 1, "log": false}``,
    ``{"type": "categorical", "choices": [...]}``.
    """
    params = {}
    for name, spec in space.items():
        kind = spec.get("type")
        if kind == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        else:
            raise ConfigError(f"search space {name!r}: type must be float, int or categorical, got {kind!r}")
    return params


def start_points(space: dict, starts: list[dict]) -> list[dict]:
    """The configured start points reduced to what fits ``space`` (keys in it, values inside its ranges/choices)."""
    out = []
    for start in starts:
        point = {}
        for name, value in start.items():
            spec = space.get(name)
            if spec is None:
                continue
            if spec.get("type") == "categorical":
                fits = value in spec["choices"]
            else:
                fits = isinstance(value, int | float) and spec["low"] <= value <= spec["high"]
            if fits:
                point[name] = value
        if point:
            out.append(point)
    return out


def record_worker(trial: optuna.Trial) -> None:
    """Store which worker runs a trial, its owner record (host, pid, pid start, SLURM ids), as user attributes."""
    for key, value in owner_record().items():
        trial.set_user_attr(key, value)


def run_search(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int | None,
               timeout: float | None = None, n_jobs: int = 1, output_dir: str | Path | None = None) -> int:
    """Run trials until the study holds ``n_trials`` finished trials (resuming counts the old ones) or ``timeout``.

    ``n_trials`` is the study's total, shared by all workers (``MaxTrialsCallback``);
    failed trials (e.g. fastText's "Encountered NaN") are recorded and the search goes on.
    Progress (trial i/N, best so far, elapsed, ETA) goes to a bar on a terminal, the log and
    ``output_dir/progress.log``. Returns the number of trials this call ran. Ctrl-C raises
    :class:`textclf.core.errors.Interrupted` ("interrupted after N trials", N: the study's finished
    trials); the interrupted trial is recorded as failed, and the same command resumes the study.
    """
    from textclf.core.progress import search_callback

    progress = search_callback(n_trials, output_dir)
    quiet = _NoInterruptTraceback()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    try:
        ran = _optimize(study, objective, n_trials, timeout, n_jobs, progress)
        stop_if_terminated()  # a SIGTERM or Ctrl-C swallowed in the last trial
        return ran
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {count_done(study)} trials; run the same command to resume") from None
    finally:
        optuna_log.removeFilter(quiet)
        progress.close()


class _NoInterruptTraceback(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt()" records (a traceback, then "failed with value None").

    So that Ctrl-C prints one line (:func:`run_search`); other failed trials are logged as before.
    """

    def __init__(self):
        super().__init__()
        self.trial: str | None = None  # "Trial N" of the interrupted trial

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, type) and issubclass(exc, KeyboardInterrupt):
            self.trial = message.split(" failed", 1)[0]
            return False
        return not (self.trial and message.startswith(f"{self.trial} failed with value"))


def stop_if_terminated(*_args) -> None:
    """Raise again the ``SystemExit`` of a SIGTERM, or the ``KeyboardInterrupt`` of a Ctrl-C, that library code
    swallowed (:func:`textclf.core.tempfiles.exit_requested`).

    An Optuna callback: it runs after every trial, failed ones included.
    """
    import signal

    from textclf.core.tempfiles import exit_requested

    code = exit_requested()
    if code == 128 + signal.SIGINT:
        raise KeyboardInterrupt
    if code is not None:
        raise SystemExit(code)


def _optimize(study: optuna.Study, objective: Callable, n_trials: int | None, timeout: float | None, n_jobs: int,
              progress: Callable) -> int:
    """The search loop of :func:`run_search` (``progress`` is called after every trial)."""
    import time

    before = _started(study)
    deadline = time.monotonic() + timeout if timeout else None
    kwargs = {"n_jobs": n_jobs, "catch": (Exception,), "gc_after_trial": False, "show_progress_bar": False}
    if n_trials is None:
        study.optimize(objective, timeout=timeout, callbacks=[progress, stop_if_terminated], **kwargs)
        return _started(study) - before
    cap = [MaxTrialsCallback(n_trials, states=DONE_STATES), progress, stop_if_terminated]
    while (remaining := n_trials - count_done(study)) > 0:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        done_before = count_done(study)
        # failed trials do not count toward the target: run again for the ones still missing
        study.optimize(objective, n_trials=remaining, timeout=left, callbacks=cap, **kwargs)
        if count_done(study) == done_before:
            log.warning("study %s: the last %d trials all failed; stopping the search", study.study_name, remaining)
            break
    ran = _started(study) - before
    if ran == 0 and count_done(study) >= n_trials:
        log.info("study %s already held %d finished trials before this run (target %d): no new trial",
                 study.study_name, count_done(study), n_trials)
    return ran


def _started(study: optuna.Study) -> int:
    """Trials that have started (queued start points, still WAITING, are not counted)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial, with a clear error when every trial failed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"study {study.study_name!r} has no complete trial ({state_counts(study)}); "
                          "see the log for trial errors")
    return study.best_trial


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state (``{"COMPLETE": 18, "PRUNED": 2}``)."""
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def search_summary(study: optuna.Study, storage: str | None, output_dir: str | Path, metric: str) -> dict:
    """The ``search`` block of meta.json: study, storage, trials run (queued ones not counted), the best trial."""
    best = best_trial(study)
    return {"study_name": study.study_name, "storage": storage or str(Path(output_dir) / JOURNAL_FILE),
            "n_trials": len([t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]),
            "states": state_counts(study), "best_trial": best.number,
            "best_value": best.value, "metric": metric, "best_params": best.params}


def finish_search(study: optuna.Study, output_dir: str | Path) -> None:
    """Write ``trials.csv`` and the plots of a search (every family does this after searching)."""
    export_trials(study, output_dir)
    save_plots(study, output_dir)


def export_trials(study: optuna.Study, output_dir: str | Path) -> Path:
    """Write ``trials.csv`` (number, state, value, params, user attrs, duration) atomically."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    path = Path(output_dir) / "trials.csv"
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["number", "state", "value", "duration_s", *[f"params_{p}" for p in params], *[f"user_attrs_{a}" for a in attrs]])
        for t in trials:
            dur = t.duration.total_seconds() if t.duration else ""
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value, dur,
                        *[t.params.get(p, "") for p in params], *[t.user_attrs.get(a, "") for a in attrs]])
    return path


def save_plots(study: optuna.Study, output_dir: str | Path) -> list[Path]:
    """Optimisation history and parameter importance as PNG (matplotlib) and HTML (plotly).

    Skipped with a log line when the study has too few complete trials for a plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    out_dir = Path(output_dir)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [("optimization_history", vis.plot_optimization_history, vis_mpl.plot_optimization_history, 1)]
    plots.append(("param_importances", vis.plot_param_importances, vis_mpl.plot_param_importances, 2))
    for name, plotly_fn, mpl_fn, min_trials in plots:
        if len(complete) < min_trials:
            log.info("skipping %s plot: %d complete trial(s)", name, len(complete))
            continue
        try:
            fig = plotly_fn(study)
            html = out_dir / f"{name}.html"
            with atomic_open(html, "w") as fh:
                fh.write(fig.to_html(include_plotlyjs="cdn"))
            written.append(html)
            ax = mpl_fn(study)
            png = out_dir / f"{name}.png"
            ax.figure.tight_layout()
            with atomic_open(png, "wb") as fh:
                ax.figure.savefig(fh, format="png", dpi=100)
            plt.close(ax.figure)
            written.append(png)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.warning("could not draw %s: %s", name, exc)
    return written

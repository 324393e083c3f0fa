"""A run queue on the Optuna storage the searches already share: a queue is a study, a task a WAITING trial.

``add_tasks`` enqueues one trial per task (``study.enqueue_trial({}, user_attrs={"task": spec})``;
the spec names the family, data paths, ``--set`` overrides, config and plug-in files). A worker
(:func:`work`) pops the next WAITING trial with the storage's compare-and-set
(``set_trial_state_values(RUNNING)``, the call ``Study.ask`` makes, without ``ask``'s fallback of
creating a new trial when none waits), trains it as ``textclf train <family>`` would, records
the MLflow run id and the metrics as user attributes and tells the trial COMPLETE (value: the
valid metric) or FAIL.

Dead workers: on an RDB storage (PostgreSQL, or SQLite on a local disk) each running task
has Optuna's heartbeat; a worker runs ``optuna.storages.fail_stale_trials`` before each pop, so
a task whose worker stopped beating (kill -9, lost node) is failed and
``RetryHeartbeatStaleTrialCallback`` enqueues it again (``retried_trial_number`` names the
original). A journal file has no heartbeat: :func:`requeue` (``textclf queue requeue``) fails
and re-enqueues RUNNING tasks whose worker is gone (the liveness rule of :mod:`textclf.core.claims`,
on the owner record each task carries: this host's pid dead or reused, or its SLURM job ended) or
that started too long ago, through the same callback. Why the embeddings sweep is not run as tasks
of this queue is in :mod:`textclf.core.claims` too.

SQLite note: SQLAlchemy's pysqlite driver reads the trial before it opens the write transaction,
so two workers can both move one WAITING trial to RUNNING; :func:`queue_storage` makes every
SQLite transaction ``BEGIN IMMEDIATE``, which serialises the read-check-write.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from textclf.core.claims import SLURM_VARS, SlurmJobs, owner_gone, owner_record
from textclf.core.config import parse_value
from textclf.core.errors import ConfigError, TextclfError

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///runs/queue.db"
DEFAULT_OUTPUT_ROOT = "models/queue"
QUEUE_ATTR = "textclf_queue"
TASK_ATTR = "task"
HEARTBEAT_S = 60
MAX_RETRY = 3
STATE_NAMES = {TrialState.WAITING: "waiting", TrialState.RUNNING: "running", TrialState.COMPLETE: "done",
               TrialState.FAIL: "failed", TrialState.PRUNED: "cancelled"}


@dataclass
class Task:
    """One queued run: what ``textclf train <family> ...`` would be given (paths absolute)."""

    family: str
    train_path: list[str]
    valid_path: str
    test_path: str | None = None
    overrides: list[str] = field(default_factory=list)
    config: str | None = None
    code: list[str] = field(default_factory=list)
    metric: str = "macro_f1"
    force: bool = False
    #: copy an identical finished run's model instead of training (``queue add --reuse``; ``force`` wins)
    reuse: bool = False

    @classmethod
    def from_trial(cls, trial: FrozenTrial | optuna.Trial) -> Task:
        """The task a queue trial carries (a one-line error for a trial that is not a task)."""
        spec = trial.user_attrs.get(TASK_ATTR)
        if not isinstance(spec, dict):
            raise TextclfError(f"trial {trial.number} carries no textclf task")
        return cls(**spec)

    def label(self) -> str:
        """``family --set a=1 --set b=2`` for status lines."""
        return " ".join([self.family, *(f"--set {o}" for o in self.overrides)])


def _quiet(fn):
    """Run ``fn`` without Optuna's ExperimentalWarning (heartbeat and retry callback are flagged experimental)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- storage and study
def _serialise_sqlite(storage: RDBStorage) -> None:
    """Make every transaction of a SQLite storage ``BEGIN IMMEDIATE`` (see the module docstring)."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@_quiet
def queue_storage(url: str, heartbeat: int = HEARTBEAT_S, grace: int | None = None,
                  max_retry: int | None = MAX_RETRY) -> optuna.storages.BaseStorage:
    """The Optuna storage of a queue: RDB URLs with heartbeat and retry of stale tasks; else a journal.

    ``url`` follows ``--storage``'s rule (:func:`textclf.core.tuning.make_storage`): an RDB URL
    (``postgresql://...``, ``sqlite:///file.db``), ``redis://...`` or a journal file path.
    """
    from textclf.core.tuning import RDB_PREFIXES, make_storage

    if url.split(":", 1)[0].split("+", 1)[0] not in RDB_PREFIXES or "://" not in url:
        return make_storage(url, ".")
    sqlite = url.startswith("sqlite")
    if sqlite and url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"isolation_level": None, "timeout": 60}} if sqlite else {}
    storage = RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=grace or 3 * heartbeat,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    if sqlite:
        _serialise_sqlite(storage)
    return storage


def open_queue(name: str, storage: str | optuna.storages.BaseStorage, create: bool = False, **storage_kw) -> optuna.Study:
    """The queue's study (created when ``create``); a one-line error for a missing queue or a non-queue study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str):
        storage = queue_storage(storage, **storage_kw)
    sampler = optuna.samplers.RandomSampler()
    if create:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                    load_if_exists=True)
        if not study.user_attrs.get(QUEUE_ATTR):
            if study.get_trials(deepcopy=False):
                raise TextclfError(f"study {name!r} exists and is not a textclf queue; pick another --queue name")
            study.set_user_attr(QUEUE_ATTR, 1)
        return study
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise TextclfError(f"queue {name!r} not found in the storage (textclf queue add creates it)") from None
    if not study.user_attrs.get(QUEUE_ATTR):
        raise TextclfError(f"study {name!r} is not a textclf queue")
    return study


# --------------------------------------------------------------------------- adding
def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """``key=v1,v2`` (or ``key=[json list]``) -> ``{key: [raw values]}`` for :func:`expand_grid`."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,...")
        key, raw = item.split("=", 1)
        value = parse_value(raw)
        values = [json.dumps(v) for v in value] if isinstance(value, list) else raw.split(",")
        if not values or any(v == "" for v in values):
            raise ConfigError(f"--grid {item!r}: empty value")
        grid[key.strip()] = values
    return grid


def expand_grid(overrides: list[str], grid: dict[str, list[str]]) -> list[list[str]]:
    """One override list per grid point (the product of every key's values), after the fixed ``overrides``."""
    keys = list(grid)
    return [[*overrides, *(f"{k}={v}" for k, v in zip(keys, point, strict=True))]
            for point in itertools.product(*(grid[k] for k in keys))]


def _absolute(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _code_files(family: str, code: list[str] | tuple[str, ...]) -> list[str]:
    """The plug-in files a family's tasks carry: ``code``, and a plug-in family's own file."""
    from textclf.core.registry import get_family

    files = [_absolute(p) for p in code]
    plugin = get_family(family).code_file
    if plugin and _absolute(plugin) not in files:
        files.append(_absolute(plugin))
    return files


def _family_tasks(family: str, train_path, valid_path, test_path, points, config, files, metric, force,
                  reuse: bool = False) -> list[Task]:
    """One task per override list; each point's config is built now, so unknown keys and bad types fail here."""
    from textclf.core.config import load_config

    tasks = []
    for point in points:
        load_config(family, config, point)
        tasks.append(Task(family, [_absolute(p) for p in train_path], _absolute(valid_path), _absolute(test_path),
                          list(point), _absolute(config), list(files), metric, force, reuse))
    return tasks


def make_tasks(families: list[str] | tuple[str, ...], train_path: list[str] | tuple[str, ...], valid_path: str,
               test_path: str | None = None, points: list[list[str]] | None = None, config: str | None = None,
               code: list[str] | tuple[str, ...] = (), metric: str = "macro_f1", force: bool = False,
               reuse: bool = False) -> list[Task]:
    """One :class:`Task` per family x override list in ``points`` (default: one without overrides), paths absolute.

    The plug-in ``code`` files are imported here (a plug-in family's own file travels with its tasks).
    """
    from textclf.core.registry import load_code

    for path in [*train_path, valid_path, *([test_path] if test_path else []), *([config] if config else [])]:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: file not found")
    for path in code:
        load_code(path)
    return [task for family in families
            for task in _family_tasks(family, train_path, valid_path, test_path, points if points is not None else [[]],
                                      config, _code_files(family, code), metric, force, reuse)]


# --------------------------------------------------------------------------- grid files
GRID_KEYS = ("family", "data", "set", "config", "code", "metric", "force", "reuse")


def data_suffixes() -> list[str]:
    """The extensions of the data files a ``"data"`` folder holds: ``train.csv`` (or another labelled format), ``valid.*``, ``test.*``.

    Those the registered file formats that read labelled data claim, in registration order (``.csv`` first).
    """
    from textclf.core.registry import all_formats

    return list(dict.fromkeys(ext for fmt in all_formats("read").values() if fmt.files for ext in fmt.extensions))


def _names(value, key: str, bad) -> list[str]:
    """A string or a non-empty list of strings."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise bad(f'"{key}" must be a string or a non-empty list of strings, got {json.dumps(value)}')
    return values


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in data_suffixes():
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def _data_entry(entry, bad) -> tuple[list[str], str, str | None]:
    """``"folder"`` (train/valid/test files inside) or ``{"train": ..., "valid": ..., "test": ...}`` -> paths."""
    if isinstance(entry, str):
        folder = Path(entry)
        if not folder.is_dir():
            raise bad(f'data {entry!r}: no such folder (relative paths start at the working directory)')
        found = {split: _split_file(folder, split) for split in ("train", "valid", "test")}
        missing = [s for s in ("train", "valid") if found[s] is None]
        if missing:
            raise bad(f"data {entry!r}: no {' or '.join(f'{m}.csv' for m in missing)} (nor .tsv/.jsonl/.txt) in the folder")
        return [str(found["train"])], str(found["valid"]), str(found["test"]) if found["test"] else None
    if isinstance(entry, dict):
        spec = {k.removesuffix("_path"): v for k, v in entry.items()}
        unknown = sorted(set(spec) - {"train", "valid", "test"})
        if unknown or not isinstance(spec.get("valid"), str) or not isinstance(spec.get("test") or "", str):
            raise bad(f'data {json.dumps(entry)}: an object has a "train" path (or list), a "valid" path '
                      'and optionally a "test" path')
        train = _names(spec.get("train"), "data.train", bad)
        for path in [*train, spec["valid"], *([spec["test"]] if spec.get("test") else [])]:
            if not Path(path).is_file():
                raise bad(f"data {path!r}: file not found (relative paths start at the working directory)")
        return train, spec["valid"], spec.get("test") or None
    raise bad(f'"data" entries are folders or {{"train": ..., "valid": ..., "test": ...}} objects, got {json.dumps(entry)}')


def _has_key(cfg: dict, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``cfg`` (anything under a free-form ``{}`` counts)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict):
            return False
        if node == {}:
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def raw_value(value) -> str:
    """A JSON value as ``--set`` takes it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def grid_tasks(spec, source: str = "grid") -> list[Task]:
    """The tasks of a grid: every family x data entry x point of the ``set`` lists (a grid file's content).

    ``{"family": ["fasttext", "lstm"], "data": ["data/a", {"train": "b/tr.csv", "valid": "b/va.csv"}],
    "set": {"model.dropout": [0.1, 0.3], "seed": 7}, "config": "c.json", "code": "plugin.py"}``:
    a list value in ``set`` is a grid axis, anything else a fixed value (write ``[[1, 2]]`` to set a
    list). A ``set`` key applies to the families whose config has it (fastText has no
    ``model.dropout``: its tasks do not multiply over that axis); a key no family has is an error.
    ``config`` is one file or ``{family: file}``; ``metric`` and ``force`` as in ``queue add``.
    Relative paths start at the working directory. Errors are one :class:`ConfigError` line
    starting with ``source`` (the grid file's path).
    """
    from textclf.core.config import load_config
    from textclf.core.registry import load_code

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{source}: {problem}")

    if not isinstance(spec, dict):
        raise bad('a grid is a JSON object: {"family": [...], "data": [...], "set": {"key": [values]}}')
    unknown = [k for k in spec if k not in GRID_KEYS]
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}; a grid has the keys {', '.join(GRID_KEYS)}")
    for key in ("family", "data"):
        if key not in spec:
            raise bad(f'no "{key}"')
    families = _names(spec["family"], "family", bad)
    code = _names(spec["code"], "code", bad) if spec.get("code") is not None else []
    data_entries = spec["data"] if isinstance(spec["data"], list) else [spec["data"]]
    if not data_entries:
        raise bad('"data" is empty')
    data = [_data_entry(entry, bad) for entry in data_entries]
    sets = spec.get("set") or {}
    if not isinstance(sets, dict):
        raise bad(f'"set" must be an object {{"key": [values] or value}}, got {json.dumps(sets)}')
    for key, values in sets.items():
        if isinstance(values, list) and not values:
            raise bad(f"set {key!r}: empty list of values")
    configs = spec.get("config")
    if not (configs is None or isinstance(configs, str)
            or isinstance(configs, dict) and all(isinstance(v, str) for v in configs.values())):
        raise bad(f'"config" must be a file or {{"family": file}}, got {json.dumps(configs)}')
    metric, force, reuse = spec.get("metric", "macro_f1"), spec.get("force", False), spec.get("reuse", False)
    if not isinstance(metric, str) or not isinstance(force, bool) or not isinstance(reuse, bool):
        raise bad('"metric" must be a string and "force" and "reuse" true or false')
    try:
        for path in code:
            load_code(path)
        tasks, used = [], set()
        for family in families:
            config = configs.get(family) if isinstance(configs, dict) else configs
            base = load_config(family, config)
            keys = [k for k in sets if _has_key(base, k)]
            used.update(keys)
            fixed = [f"{k}={raw_value(sets[k])}" for k in keys if not isinstance(sets[k], list)]
            axes = {k: [raw_value(v) for v in sets[k]] for k in keys if isinstance(sets[k], list)}
            files = _code_files(family, code)
            for train, valid, test in data:
                tasks += _family_tasks(family, train, valid, test, expand_grid(fixed, axes), config, files, metric, force, reuse)
        missing = [k for k in sets if k not in used]
        if missing:
            raise bad(f"set {missing[0]!r}: no family of the grid ({', '.join(families)}) has this config key")
    except ConfigError as exc:
        if exc.message.startswith(f"{source}: "):
            raise
        raise bad(exc.message) from None
    return tasks


def load_grid(path: str | Path) -> list[Task]:
    """The tasks of a grid file (see :func:`grid_tasks`); every error is one line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: grid file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid file ({exc})") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return grid_tasks(spec, str(path))


def add_tasks(study: optuna.Study, tasks: list[Task]) -> list[int]:
    """Enqueue each task as a WAITING trial; returns their trial numbers."""
    before = len(study.get_trials(deepcopy=False))
    for task in tasks:
        study.enqueue_trial({}, user_attrs={TASK_ATTR: asdict(task)})
    numbers = [t.number for t in study.get_trials(deepcopy=False)[before:]
               if t.state == TrialState.WAITING and TASK_ATTR in t.user_attrs]
    return numbers[-len(tasks):] if tasks else []


# --------------------------------------------------------------------------- working
def pop_task(study: optuna.Study) -> optuna.Trial | None:
    """Take the oldest WAITING task atomically (the storage's WAITING -> RUNNING compare-and-set), or None."""
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Record the storage's heartbeat of a running trial every interval (RDB storages with a heartbeat)."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        # the study wraps an RDBStorage in optuna's cache, which forwards the heartbeat calls
        beats = callable(getattr(storage, "record_heartbeat", None)) and callable(getattr(storage, "get_heartbeat_interval", None))
        interval = storage.get_heartbeat_interval() if beats else None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True) if interval else None

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()


@_quiet
def fail_stale(study: optuna.Study) -> None:
    """Fail tasks whose heartbeat stopped and re-enqueue them (RDB storages; a no-op on journals)."""
    optuna.storages.fail_stale_trials(study)


@_quiet
def retry(study: optuna.Study, frozen: FrozenTrial) -> None:
    """Enqueue a failed task again, as Optuna's heartbeat does (``retried_trial_number`` names the first attempt)."""
    RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)


@_quiet
def original_number(trial: FrozenTrial | optuna.Trial) -> int:
    """The number of the first attempt of a (retried) task."""
    frozen = trial if isinstance(trial, FrozenTrial) else trial.study._storage.get_trial(trial._trial_id)
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return trial.number if first is None else first


def _record_worker(trial: optuna.Trial) -> None:
    """Record this worker's owner record (:func:`textclf.core.claims.owner_record`) and start time on the task.

    A retried task carries its failed attempt's attributes: SLURM ids this worker lacks are cleared.
    """
    record = owner_record()
    for key, value in record.items():
        trial.set_user_attr(key, value)
    for key in (v.lower() for v in SLURM_VARS):
        if key not in record and trial.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)
    trial.set_user_attr("started", _dt.datetime.now().isoformat(timespec="seconds"))
    if trial.user_attrs.get("error"):  # copied from a failed attempt
        trial.set_user_attr("error", None)


def _end_previous_attempt(trial: optuna.Trial, tracking) -> None:
    """A retried task's dead attempt left its MLflow run RUNNING: end it KILLED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id or original_number(trial) == trial.number or tracking is None or not tracking.enabled_now():
        return
    from textclf.services.tracking import open_store

    try:
        if open_store(tracking.uri).end_if_running(run_id, "KILLED", f"worker died; task retried as trial {trial.number}"):
            log.info("marked MLflow run %s of the dead attempt KILLED", run_id)
    except Exception as exc:  # noqa: BLE001 - the store is best effort here
        log.warning("could not end the dead attempt's run %s: %s", run_id, exc)


@dataclass
class Tracking:
    """The worker's tracking flags (``--track/--no-track``, ``--tracking_uri``)."""

    enabled: bool | None = None
    uri: str | None = None

    def enabled_now(self) -> bool:
        """Whether runs are tracked (flag, else ``$TEXTCLF_TRACK``)."""
        from textclf.services.tracking import tracking_enabled

        return tracking_enabled(self.enabled)


def train_task(task: Task, trial: optuna.Trial, output_dir: Path, tracking: Tracking, queue: str):
    """Train one task in this process as ``textclf train`` would (the run service); returns its :class:`RunResult`."""
    from textclf.services import runs

    spec = runs.RunSpec(family=task.family, train_path=task.train_path, valid_path=task.valid_path,
                        test_path=task.test_path, output_dir=output_dir, config=task.config,
                        overrides=tuple(task.overrides), code=tuple(task.code), track=tracking.enabled,
                        tracking_uri=tracking.uri, force=task.force, reuse=task.reuse, command="queue",
                        tags={"textclf.queue": queue, "textclf.queue_task": str(trial.number)},
                        on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
    return runs.train(spec)


def task_metrics(tracked) -> dict[str, float]:
    """The run's flat metrics: from the store, else from the model directory's ``meta.json``."""
    if tracked.metrics:
        return dict(tracked.metrics)
    from textclf.services.tracking import meta_metrics

    meta = Path(tracked.model_dir or "") / "meta.json"
    return meta_metrics(json.loads(meta.read_text(encoding="utf-8"))) if meta.is_file() else {}


def task_type(model_dir) -> str:
    """``multiclass`` or ``multilabel``: the task of the model a run wrote (its ``meta.json``; none or older: multi-class)."""
    try:
        meta = json.loads((Path(model_dir or "") / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "multiclass"
    return str(meta.get("task") or "multiclass") if isinstance(meta, dict) else "multiclass"


def run_task(study: optuna.Study, trial: optuna.Trial, output_root: str | Path, tracking: Tracking) -> TrialState:
    """Run a popped task under the heartbeat; tell its trial COMPLETE (valid metric) or FAIL; returns the state."""
    from textclf.services.tracking import one_line

    _record_worker(trial)
    task = Task.from_trial(trial)
    output_dir = Path(output_root) / study.study_name / f"{original_number(trial):04d}-{task.family}"
    with Heartbeat(study._storage, trial._trial_id):
        _end_previous_attempt(trial, tracking)
        try:
            tracked = train_task(task, trial, output_dir, tracking, study.study_name)
            metrics = task_metrics(tracked)
            value = metrics.get(f"valid.{task.metric}")
            if value is None:
                raise TextclfError(f"no valid.{task.metric} in the run's metrics (meta.json missing?)")
        except KeyboardInterrupt:
            trial.set_user_attr("error", "worker interrupted")
            frozen = study.tell(trial, state=TrialState.FAIL)
            retry(study, frozen)  # an interrupted worker loses no task
            raise
        except Exception as exc:  # noqa: BLE001 - a failing task is recorded, the worker goes on
            log.warning("task %d (%s) failed: %s", trial.number, task.label(), one_line(exc))
            trial.set_user_attr("error", one_line(exc))
            return _tell(study, trial, state=TrialState.FAIL)
        if tracked.run_id:
            trial.set_user_attr("mlflow_run_id", tracked.run_id)
        if tracked.reused:
            trial.set_user_attr("duplicate_of", tracked.run_id)
        trial.set_user_attr("model_dir", str(tracked.model_dir))
        trial.set_user_attr("task_type", task_type(tracked.model_dir))
        for key in ("valid.accuracy", "valid.macro_f1", "valid.micro_f1", "test.accuracy", "test.macro_f1", "test.micro_f1",
                    "train_seconds"):
            if key in metrics:
                trial.set_user_attr(key.replace(".", "_"), metrics[key])
        return _tell(study, trial, value)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
          state: TrialState | None = None) -> TrialState:
    """Finish the trial; one another process already failed (a missed heartbeat, ``queue requeue``) stays as it is."""
    try:
        return study.tell(trial, value, state=state).state
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("task %d was failed by another process meanwhile (missed heartbeat or requeue); "
                    "its retry runs it again", trial.number)
        return TrialState.FAIL


def work(study: optuna.Study, output_root: str | Path = DEFAULT_OUTPUT_ROOT, max_tasks: int | None = None,
         idle_exit: float | None = None, poll: float = 2.0, tracking: Tracking | None = None) -> int:
    """Pop and run tasks until ``max_tasks`` ran or the queue stayed empty ``idle_exit`` seconds; returns tasks run."""
    tracking = tracking or Tracking()
    done = 0
    idle_since = time.monotonic()
    while max_tasks is None or done < max_tasks:
        fail_stale(study)
        trial = pop_task(study)
        if trial is None:
            if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                break
            time.sleep(poll)
            continue
        state = run_task(study, trial, output_root, tracking)
        log.info("task %d: %s", trial.number, state.name)
        done += 1
        idle_since = time.monotonic()
    return done


# --------------------------------------------------------------------------- managing
@_quiet
def _retried(study: optuna.Study) -> set[int]:
    """Trial numbers that already have a retry in the queue."""
    return {n for t in study.get_trials(deepcopy=False)
            for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}


@_quiet
def requeue(study: optuna.Study, older_than: float | None = None, failed: bool = False) -> list[int]:
    """Fail RUNNING tasks whose worker is gone or that started ``older_than`` seconds ago, and enqueue each
    again (``failed``: FAIL tasks not retried yet too); returns the requeued task numbers.

    Gone is :func:`textclf.core.claims.owner_gone` of the task's owner record, ``squeue`` asked: its
    process on this host is dead (or the pid reused), or its SLURM job ended. For journal-file queues,
    which have no heartbeat; on RDB queues workers do this themselves.
    """
    now = _dt.datetime.now()
    requeued = []
    slurm = SlurmJobs()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        gone = isinstance(t.user_attrs.get("pid"), int) and owner_gone(t.user_attrs, slurm)
        if gone or (older_than is not None and age > older_than):
            try:  # a trial that finished meanwhile raises: its worker was alive after all
                study._storage.set_trial_user_attr(t._trial_id, "error", f"requeued: worker gone after {age:.0f}s")
                if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            retry(study, study._storage.get_trial(t._trial_id))
            requeued.append(t.number)
    if failed:
        done = _retried(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number not in done and t.number not in requeued and TASK_ATTR in t.user_attrs:
                retry(study, t)
                requeued.append(t.number)
    return requeued


def cancel(study: optuna.Study, numbers: list[int] | None = None) -> list[int]:
    """Cancel WAITING tasks (all, or those numbered): they become PRUNED with ``cancelled`` set; returns them.

    Each is first taken like a worker takes it (WAITING -> RUNNING), so a task a worker popped
    meanwhile is left to that worker.
    """
    storage = study._storage
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if numbers and t.number not in numbers:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                storage.set_trial_user_attr(t._trial_id, "cancelled", True)
                storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
                out.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return out


@_quiet
def status_rows(study: optuna.Study) -> list[dict]:
    """One dict per task: number, state, task label, dataset, task type (once run), host/pid and age while running, value, run id, error."""
    from textclf.services.tracking import dataset_name

    now = _dt.datetime.now()
    rows = []
    for t in study.get_trials(deepcopy=False):
        if TASK_ATTR not in t.user_attrs:
            continue
        task = Task.from_trial(t)
        row = {"number": t.number, "state": STATE_NAMES.get(t.state, t.state.name.lower()), "task": task.label(),
               "dataset": dataset_name({"train": task.train_path}), "task_type": t.user_attrs.get("task_type"),
               "retry_of": RetryHeartbeatStaleTrialCallback.retried_trial_number(t), "value": t.value,
               "mlflow_run_id": t.user_attrs.get("mlflow_run_id") if t.state != TrialState.WAITING else None,
               "host": None, "pid": None, "age_s": None, "error": None}
        if t.state == TrialState.RUNNING:
            row.update(host=t.user_attrs.get("host"), pid=t.user_attrs.get("pid"),
                       age_s=round((now - t.datetime_start).total_seconds()) if t.datetime_start else None)
        if t.state == TrialState.FAIL:
            row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return rows


def state_counts(rows: list[dict]) -> dict[str, int]:
    """Tasks per state, in the order waiting, running, done, failed, cancelled."""
    return {name: sum(1 for r in rows if r["state"] == name) for name in STATE_NAMES.values()}

"""Experiment store: every ``train``/``tune`` run of every family recorded as an MLflow run.

:func:`run_tracked` wraps a family's training (the run service, :mod:`textclf.services.runs`, calls
it): it opens the store, with ``reuse`` (``--reuse``) returns a finished run whose config and data
are the same instead of training, else starts an MLflow run with the effective config as params (and ``config.json`` as an artifact),
the data hashes, host, git commit and library versions as tags, trains, then logs the metrics,
learning curves and the model directory's ``meta.json`` and ends the run FINISHED, FAILED or
KILLED (KeyboardInterrupt). A store that cannot be reached is a one-line warning: the model is
trained and written all the same.

The store is ``--tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///runs/mlflow.db``
(relative to the working directory). ``--no-track`` or ``TEXTCLF_TRACK=0`` turns tracking off.
Runs go to the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``textclf``). MLflow is imported
only when tracking is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from textclf.core.errors import TextclfError
from textclf.core.tuning import wants_search

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///runs/mlflow.db"
DEFAULT_EXPERIMENT = "textclf"
TRACK_ENV = "TEXTCLF_TRACK"
TAG = "textclf."
CONFIG_ARTIFACT = "config.json"
#: model-directory files copied into the run's artifacts when present
MODEL_ARTIFACTS = ("meta.json", "metrics.txt", "trials.csv", "history.json", "MODEL_CARD.md")
BEST_PARAM = "best_params."


class StoreUnavailable(TextclfError):
    """The experiment store cannot be opened (bad URI, server down, MLflow not installed)."""

    def __init__(self, uri: str, reason: str, missing_mlflow: bool = False):
        self.uri = uri
        self.missing_mlflow = missing_mlflow
        super().__init__(f"experiment store {uri} unreachable: {reason}")


@dataclass
class TrackSettings:
    """How one run is tracked: ``enabled`` None means ``$TEXTCLF_TRACK`` (default on).

    ``command`` (train, tune, rerun, queue) and ``tags`` end up as tags; ``parent_run_id`` and
    ``overrides`` link a rerun to its parent; ``on_start(run_id)`` is called once the run exists.
    """

    enabled: bool | None = None
    uri: str | None = None
    force: bool = False
    #: reuse a FINISHED run with the same config hash instead of training (``--reuse``; the run service copies its model)
    reuse: bool = False
    command: str = "train"
    parent_run_id: str | None = None
    overrides: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    on_start: Callable[[str], None] | None = None


@dataclass
class TrackedRun:
    """What :func:`run_tracked` did: the model dir, the MLflow run (None: untracked), skipped as a duplicate."""

    model_dir: Path | None
    run_id: str | None = None
    skipped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- settings
def tracking_enabled(flag: bool | None = None) -> bool:
    """``--track/--no-track`` when given, else ``$TEXTCLF_TRACK`` (0/false/no/off: off), else on."""
    if flag is not None:
        return flag
    return os.environ.get(TRACK_ENV, "1").strip().lower() not in ("0", "false", "no", "off", "")


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the local ``sqlite:///runs/mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name() -> str:
    """The MLflow experiment runs go to: ``$MLFLOW_EXPERIMENT_NAME`` or ``textclf``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    click.echo(f"warning: {message}", err=True)


# --------------------------------------------------------------------------- hashes and flattening
def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested config with JSON values (strings stay plain): ``{"model.lr": "0.1"}``."""
    out: dict[str, str] = {}
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix.rstrip(".")] = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True)
    return out


def config_hash(family, cfg: dict, data_sha256: str) -> str:
    """SHA-256 of the family name, its effective config, the data hash and the plug-in file's bytes."""
    code = hashlib.sha256(Path(family.code_file).read_bytes()).hexdigest() if family.code_file else None
    blob = json.dumps({"family": family.name, "config": cfg, "data": data_sha256, "code": code},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def split_hashes(splits, data_cfg: dict) -> dict[str, str]:
    """SHA-256 of each split (files' bytes, or the texts and labels a registered reader returned)."""
    from textclf.core.data import sha256_datasets, sha256_files

    out = {}
    for name in ("train", "valid", "test"):
        paths = splits.paths.get(name)
        if paths is None:
            continue
        if data_cfg.get("reader"):
            out[name] = sha256_datasets([getattr(splits, name)])
        else:
            out[name] = sha256_files([paths] if isinstance(paths, str) else paths)
    return out


def lineage_tags(train) -> dict[str, str]:
    """Tags naming the parent data version of a training file written by ``textclf audit apply`` (its lineage sidecar)."""
    from textclf.core.lineage import lineage_summary, read_lineage

    for path in ([train] if isinstance(train, str) else train or []):
        record = read_lineage(path)
        if record:
            return {f"{TAG}data_lineage": lineage_summary(record), f"{TAG}data_parent_sha256": record["parent_sha256"],
                    f"{TAG}data_rows_changed": str(int(record.get("relabelled", 0)) + int(record.get("dropped", 0)))}
    return {}


def absolute_paths(paths: dict) -> dict:
    """Splits' paths made absolute (a rerun may start elsewhere)."""
    def fix(p):
        if p is None:
            return None
        return [str(Path(x).resolve()) for x in p] if isinstance(p, list) else str(Path(p).resolve())

    return {k: fix(v) for k, v in paths.items()}


def dataset_name(paths: dict) -> str:
    """The dataset's name: the folder holding the (first) training file, else the file's stem."""
    train = paths["train"][0] if isinstance(paths["train"], list) else paths["train"]
    parent = Path(train).resolve().parent.name
    return parent or Path(train).stem


def metric_key(*parts: str) -> str:
    """A metric or param name MLflow accepts (letters, digits and ``_-. :/``; anything else becomes ``_``)."""
    return re.sub(r"[^\w\-. :/]", "_", ".".join(parts))


# --------------------------------------------------------------------------- the store
@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a local SQLite store: MLflow's migrations race between processes."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _probe_http(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's client retries for minutes)."""
    import urllib.request

    with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
        response.read()


def _quiet_mlflow() -> None:
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


class Store:
    """An MLflow tracking store and the experiment textclf's runs go to."""

    def __init__(self, uri: str, client, experiment_id: str | None):
        self.uri = uri
        self.client = client
        self.experiment_id = experiment_id

    # ---------------------------------------------------------------- queries
    def search(self, filter_string: str = "", max_results: int = 5000) -> list:
        """Runs of the experiment matching an MLflow filter, newest first."""
        if self.experiment_id is None:
            return []
        return list(self.client.search_runs([self.experiment_id], filter_string, max_results=max_results))

    def find_duplicate(self, digest: str):
        """A FINISHED run with this config hash whose model directory still holds ``meta.json``, or None."""
        for run in self.search(f"tags.`{TAG}config_hash` = '{digest}' and attributes.status = 'FINISHED'"):
            model_dir = run.data.tags.get(f"{TAG}model_dir")
            if model_dir and (Path(model_dir) / "meta.json").is_file():
                return run
        return None

    def get_run(self, run_id: str):
        """The run with this id, or the only one whose id starts with it; a one-line error otherwise."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            pass
        matches = [r for r in self.search() if r.info.run_id.startswith(run_id)] if len(run_id) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        what = "matches several runs" if matches else "not found"
        raise TextclfError(f"run {run_id!r} {what} in {self.uri} (experiment {experiment_name()!r})")

    # ---------------------------------------------------------------- writing
    def start(self, family, cfg: dict, splits, output_dir: str | Path, digest: str, settings: TrackSettings) -> str:
        """Create the run with its config params, tags, dataset inputs and ``config.json``; returns its id."""
        from mlflow.entities import Param, RunTag

        from textclf.core.meta import git_commit, library_versions

        paths = absolute_paths(splits.paths)
        commit = git_commit() or ""
        tags = {f"{TAG}family": family.name, f"{TAG}dataset": dataset_name(splits.paths),
                f"{TAG}task": getattr(splits, "task", None) or "multiclass",  # the task type the data was read as
                f"{TAG}data_sha256": splits.data_sha256, f"{TAG}config_hash": digest,
                f"{TAG}command": settings.command, f"{TAG}model_dir": str(Path(output_dir).resolve()),
                f"{TAG}paths": json.dumps(paths), f"{TAG}host": os.uname().nodename,
                f"{TAG}git_commit": commit.removesuffix("-dirty"), f"{TAG}git_dirty": str(commit.endswith("-dirty")).lower(),
                f"{TAG}versions": json.dumps(library_versions()), "mlflow.source.git.commit": commit.removesuffix("-dirty")}
        hashes = split_hashes(splits, cfg.get("data", {}))
        tags.update({f"{TAG}sha256.{name}": digest_ for name, digest_ in hashes.items()})
        tags.update(lineage_tags(splits.paths.get("train")))
        if family.code_file:
            tags[f"{TAG}code"] = family.code_file
        if settings.parent_run_id:
            tags[f"{TAG}parent_run"] = settings.parent_run_id
            tags[f"{TAG}overrides"] = json.dumps(list(settings.overrides))
        tags.update(settings.tags)
        run = self.client.create_run(self.experiment_id, run_name=f"{family.name}:{tags[f'{TAG}dataset']}")
        run_id = run.info.run_id
        params = [Param(metric_key(k)[:250], v[:6000]) for k, v in flatten(cfg).items()]
        run_tags = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, max(len(params), len(run_tags)), 100):
            self.client.log_batch(run_id, params=params[i:i + 100], tags=run_tags[i:i + 100])
        self.client.log_dict(run_id, cfg, CONFIG_ARTIFACT)
        if family.code_file:
            self.client.log_artifact(run_id, family.code_file, "code")
        self._log_inputs(run_id, tags[f"{TAG}dataset"], paths, hashes)
        return run_id

    def _log_inputs(self, run_id: str, name: str, paths: dict, hashes: dict) -> None:
        """The splits as MLflow dataset inputs (the UI's Datasets column), context train/valid/test."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for split, digest in hashes.items():
            source = json.dumps({"paths": paths[split]})
            dataset = Dataset(f"{name}/{split}", digest[:16], "local", source)
            inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", split)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def finish(self, run_id: str, model_dir: Path, seconds: float, cfg: dict) -> dict[str, float]:
        """Log metrics, curves, the search block and the model files from ``meta.json``; end FINISHED."""
        from mlflow.entities import Metric, Param, RunTag

        meta_path = model_dir / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        now = int(time.time() * 1000)
        flat = meta_metrics(meta)
        flat["train_seconds"] = round(seconds, 3)
        metrics = [Metric(k, v, now, 0) for k, v in flat.items()]
        metrics += [Metric(k, v, now, step) for k, v, step in curve_metrics(model_dir, meta)]
        device = (meta.get("training") or {}).get("device") or cfg.get("device") or "cpu"
        tags = [RunTag(f"{TAG}device", str(device))]
        if meta.get("task"):  # what the model is (meta.json), over what the start tag guessed
            tags.append(RunTag(f"{TAG}task", str(meta["task"])))
        if meta.get("versions"):  # with the family's own packages (fasttext-community, torch, ...)
            tags.append(RunTag(f"{TAG}versions", json.dumps(meta["versions"])[:8000]))
        if not meta:
            tags.append(RunTag(f"{TAG}note", "no meta.json: a search share without refit"))
        params = []
        if meta.get("search"):
            s = meta["search"]
            tags += [RunTag(f"{TAG}study_name", str(s.get("study_name"))), RunTag(f"{TAG}storage", str(s.get("storage")))]
            params = [Param(f"{BEST_PARAM}{k}"[:250], json.dumps(v)[:6000]) for k, v in (s.get("best_params") or {}).items()]
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else [],
                                  tags=tags if i == 0 else [])
        for name in MODEL_ARTIFACTS:
            if (model_dir / name).is_file():
                self.client.log_artifact(run_id, str(model_dir / name), "model")
        self.client.set_terminated(run_id, "FINISHED")
        return flat

    def end(self, run_id: str, status: str, error: str | None = None) -> None:
        """End a run FAILED or KILLED, with the error as a tag."""
        if error:
            self.client.set_tag(run_id, f"{TAG}error", error[:8000])
        self.client.set_terminated(run_id, status)

    def end_if_running(self, run_id: str, status: str, note: str) -> bool:
        """End a run left RUNNING by a killed process (its task was retried); True when it was."""
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING":
            return False
        self.end(run_id, status, note)
        return True


def open_store(uri: str | None = None, create: bool = True) -> Store:
    """Open the store (creating the experiment when ``create``); any failure is :class:`StoreUnavailable`."""
    uri = resolve_uri(uri)
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise StoreUnavailable(uri, "mlflow is not installed (pip install 'textclf[tracking]')", missing_mlflow=True) from None
    _quiet_mlflow()
    try:
        if uri.startswith(("http://", "https://")):
            _probe_http(uri)
        with _init_lock(uri):
            client = MlflowClient(uri)
            name = experiment_name()
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            elif create:
                db = sqlite_path(uri)
                location = (db.resolve().parent / "artifacts").as_uri() if db else None
                experiment_id = client.create_experiment(name, artifact_location=location)
            else:
                experiment_id = None
    except Exception as exc:  # noqa: BLE001 - any store failure is one line, never a lost model
        raise StoreUnavailable(uri, one_line(exc)) from None
    return Store(uri, client, experiment_id)


# --------------------------------------------------------------------------- meta.json -> metrics
def model_mb(meta: dict) -> float | None:
    """The model's size in MiB: meta.json's ``model_mb``, else the sum of the files it records (``files``), else None."""
    if isinstance(meta.get("model_mb"), int | float):
        return float(meta["model_mb"])
    sizes = [r.get("bytes") for r in (meta.get("files") or {}).values() if isinstance(r, dict)]
    if sizes and all(isinstance(b, int) for b in sizes):
        return round(sum(sizes) / 2**20, 3)
    return None


def meta_metrics(meta: dict) -> dict[str, float]:
    """Flat metrics of a ``meta.json``: ``valid.macro_f1``, ``test.class.<label>.f1``, ``search.best_value``, ``model_mb``."""
    out: dict[str, float] = {}
    for split, m in (meta.get("metrics") or {}).items():
        for key, value in m.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[metric_key(split, key)] = float(value)
        for label, entry in (m.get("per_class") or {}).items():
            for key, value in entry.items():
                out[metric_key(split, "class", str(label), key)] = float(value)
    size = model_mb(meta)
    if size is not None:
        out["model_mb"] = size
    search = meta.get("search") or {}
    for key in ("best_value", "best_trial", "n_trials"):
        if isinstance(search.get(key), int | float):
            out[f"search.{key}"] = float(search[key])
    return out


def _numbers(row: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in row.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
            yield f"{prefix}{key}", float(value)


def curve_metrics(model_dir: Path, meta: dict) -> list[tuple[str, float, int]]:
    """Per-epoch ``(curve.<name>, value, epoch)``: lstm's ``history.json``, BERT's per-stage history in meta."""
    rows: list[tuple[str, dict]] = []
    history = model_dir / "history.json"
    if history.is_file():
        with contextlib.suppress(ValueError):
            rows += [("", row) for row in json.loads(history.read_text(encoding="utf-8")) if isinstance(row, dict)]
    for stage in (meta.get("training") or {}).get("stages") or []:
        rows += [(f"{stage.get('name', 'stage')}.", row) for row in stage.get("history") or [] if isinstance(row, dict)]
    out = []
    for prefix, row in rows:
        step = int(row.get("epoch", 0))
        out += [(metric_key("curve", f"{prefix}{name}"), value, step) for name, value in _numbers(row)]
    return out


# --------------------------------------------------------------------------- the hook
def _inside_ddp_worker() -> bool:
    """A torchrun worker of a multi-process run: the launching process tracks the run."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _open_or_warn(settings: TrackSettings) -> Store | None:
    try:
        return open_store(settings.uri)
    except StoreUnavailable as exc:
        if exc.missing_mlflow and settings.enabled is None and TRACK_ENV not in os.environ:
            log.info("%s; run not tracked", exc.message)
        else:
            warn(f"{exc.message}; training without tracking (--no-track silences this)")
        return None


def search_share(cfg: dict) -> bool:
    """Whether the run is one worker's share of a search without refit (SLURM array tasks): no model directory."""
    s = cfg.get("search") or {}
    return wants_search(s) and s.get("refit") is False


def _describe(run) -> str:
    m = run.data.metrics
    score = " ".join(f"{k} {m[k]:.4f}" for k in ("valid.macro_f1", "test.macro_f1") if k in m)
    return f"run {run.info.run_id} (model {run.data.tags.get(TAG + 'model_dir')}{', ' + score if score else ''})"


def run_tracked(train: Callable[[], Path | str | None], family, cfg: dict, splits, output_dir: str | Path,
                settings: TrackSettings | None = None) -> TrackedRun:
    """Run ``train()`` (the family's training) recorded as an MLflow run; see the module docstring.

    Returns the model directory and run id; with ``reuse`` (and not ``force``) a FINISHED run with
    the same config hash (family, effective config, data, plug-in code) whose model directory still
    exists is returned instead, ``skipped`` and nothing trained: the caller
    (:func:`textclf.services.runs.execute`) copies that model where it was asked for.
    Search shares without refit (SLURM workers) are never reused.
    """
    settings = settings or TrackSettings()
    if not tracking_enabled(settings.enabled) or _inside_ddp_worker():
        return TrackedRun(_as_path(train()))
    store = _open_or_warn(settings)
    if store is None:
        return TrackedRun(_as_path(train()))
    digest = config_hash(family, cfg, splits.data_sha256)
    try:
        duplicate = None if settings.force or not settings.reuse or search_share(cfg) else store.find_duplicate(digest)
    except Exception as exc:  # noqa: BLE001
        warn(f"experiment store {store.uri}: duplicate check failed ({one_line(exc)})")
        duplicate = None
    if duplicate is not None and not (Path(duplicate.data.tags.get(f"{TAG}model_dir", "")) / "meta.json").is_file():
        warn(f"{_describe(duplicate)} has this config and data, but its model directory is gone: training again")
        duplicate = None
    if duplicate is not None:
        click.echo(f"reused: {family.name} with this config and data already ran: {_describe(duplicate)}")
        return TrackedRun(Path(duplicate.data.tags[f"{TAG}model_dir"]), duplicate.info.run_id, True,
                          dict(duplicate.data.metrics))
    try:
        run_id = store.start(family, cfg, splits, output_dir, digest, settings)
    except Exception as exc:  # noqa: BLE001
        warn(f"experiment store {store.uri}: could not start a run ({one_line(exc)}); training without tracking")
        return TrackedRun(_as_path(train()))
    if settings.on_start:
        settings.on_start(run_id)
    started = time.perf_counter()
    try:
        model_dir = _as_path(train()) or Path(output_dir)
    except KeyboardInterrupt:
        _safe(store.end, run_id, "KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        _safe(store.end, run_id, "FAILED", one_line(exc))
        raise
    metrics = _safe(store.finish, run_id, model_dir, time.perf_counter() - started, cfg)
    if metrics is not None:
        click.echo(f"recorded: run {run_id} in {store.uri}")
    return TrackedRun(model_dir, run_id, False, metrics or {})


def _as_path(value) -> Path | None:
    return Path(value) if value is not None else None


def _safe(fn: Callable, run_id: str, *args):
    """Call a store method; a failure is a warning (the model directory is already written)."""
    try:
        return fn(run_id, *args)
    except Exception as exc:  # noqa: BLE001
        warn(f"could not record run {run_id}: {one_line(exc)}")
        return None

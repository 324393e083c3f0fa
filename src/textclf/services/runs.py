"""The one run service: every way of training a model builds a :class:`RunSpec` and calls :func:`train` or :func:`tune`.

``textclf train|tune <family>``, the run-queue workers, ``textclf runs rerun``, the notebook API
(:mod:`textclf.services.experiments`) and the container entry point (through the CLI) all end
here, so the flow is written once (the BERT DDP workers only train, inside the launching run's ``fit``):

1. import the plug-in files (``code``), look the family up, check its dependencies;
2. build the effective config (defaults < ``--config`` < ``--set`` < explicit flags) and read
   and check the splits;
3. with ``tune``, require a search budget (``search.n_trials`` or ``search.timeout``);
4. train inside the experiment store's run (:func:`textclf.services.tracking.run_tracked`),
   with a plug-in family's code file copied into the model directory;
5. make sure the model is where it was asked for.

**A run asked to write ``output_dir`` leaves a model there, or fails.** Reusing an identical
earlier run (same family, effective config, data and plug-in code in the store) is opt-in:
``reuse=True`` (``--reuse``/``--skip-existing``) copies that run's model directory to
``output_dir`` instead of training. It is never a silent success that leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from textclf.core.config import apply_override, load_config
from textclf.core.errors import ConfigError, TextclfError
from textclf.core.fit_flow import checked_config
from textclf.core.meta import META_FILE
from textclf.core.options import flag_overrides
from textclf.core.registry import Family, get_family, load_code
from textclf.core.training import Splits, ddp_rank, load_splits, plugin_context
from textclf.core.tuning import wants_search
from textclf.services.tracking import (
    CONFIG_ARTIFACT,
    TAG,
    TrackedRun,
    TrackSettings,
    open_store,
    run_tracked,
    search_share,
    warn,
)


@dataclass
class RunSpec:
    """Everything one run needs: the family, the data, the config and how it is recorded.

    ``config`` is a JSON file merged over the family's defaults; ``overrides`` are ``key=value``
    strings (``--set``); ``flags`` maps config keys to values of explicitly given flags (None: not
    given). ``cfg`` (an already effective config, as ``runs rerun`` reads it from the store)
    replaces config/overrides/flags. ``code`` are plug-in files to import first.
    """

    family: str
    train_path: str | Sequence[str]
    valid_path: str
    output_dir: str | Path
    test_path: str | None = None
    config: str | None = None
    overrides: Sequence[str] = ()
    flags: dict[str, Any] = field(default_factory=dict)
    cfg: dict | None = None
    resume: bool = False
    code: Sequence[str] = ()
    track: bool | None = None
    tracking_uri: str | None = None
    reuse: bool = False
    force: bool = False
    command: str = "train"
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    on_start: Callable[[str], None] | None = None
    #: extra meta.json entries of the trained model (a v2 family only; ``textclf distill``'s teacher block)
    meta_extra: dict | None = None

    def settings(self) -> TrackSettings:
        """The tracking settings of this run."""
        return TrackSettings(enabled=self.track, uri=self.tracking_uri, force=self.force, reuse=self.reuse,
                             command=self.command, parent_run_id=self.parent_run_id,
                             overrides=tuple(self.overrides) if self.parent_run_id else (), tags=dict(self.tags),
                             on_start=self.on_start)


@dataclass
class RunResult:
    """What a run left: the model directory (always ``spec.output_dir``, except a search share), the store's run."""

    model_dir: Path
    run_id: str | None = None
    reused: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def prepare(spec: RunSpec) -> tuple[Family, dict, Splits]:
    """The family (plug-ins imported, dependencies checked), the effective config and the checked splits."""
    from textclf.core.progress import setup_logging

    setup_logging()
    for path in spec.code:
        load_code(path)
    family = get_family(spec.family)
    family.check_installed()
    if spec.cfg is not None:
        cfg = spec.cfg
        for assignment in spec.overrides:
            cfg = apply_override(cfg, assignment)
    else:
        flags = dict(spec.flags)
        if family.flag_hook:
            flags = family.flag_hook(flags)
        cfg = load_config(family.name, spec.config, [*spec.overrides, *flag_overrides(flags)])
    splits = load_splits(spec.train_path, spec.valid_path, spec.test_path, cfg["data"])
    family.check_task(splits.task)
    return family, checked_config(family, cfg, splits.task), splits


def train(spec: RunSpec) -> RunResult:
    """Train (searching first when the config asks for it) as ``textclf train`` does; see the module docstring."""
    family, cfg, splits = prepare(spec)
    return execute(family, cfg, splits, spec)


def tune(spec: RunSpec) -> RunResult:
    """Search hyper-parameters, then refit the best, as ``textclf tune`` does: a search budget is required."""
    family, cfg, splits = prepare(spec)
    s = cfg.get("search", {})
    if not wants_search(s):
        raise click.UsageError(f"textclf tune {family.name}: set --n_trials N or --timeout S "
                               f"(search.n_trials is {s.get('n_trials')!r})")
    return execute(family, cfg, splits, spec)


def fit_family(family: Family, cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False,
               meta_extra: dict | None = None):
    """The family's training with its plug-in file (if any) recorded in the model directory; returns what it returns.

    ``meta_extra`` (entries for meta.json) needs a family on contract v2 (the core writes its meta.json).
    """
    if meta_extra and family.fit is None:
        raise ConfigError(f"family {family.name!r} trains with its own flow (contract v1): it cannot record "
                          f"{', '.join(sorted(meta_extra))} in meta.json; use a family with fit (contract v2)")
    with plugin_context(family, output_dir):
        kw = {"meta_extra": meta_extra} if meta_extra else {}
        return family.train_fn()(cfg, splits, str(output_dir), resume=resume, **kw)


def execute(family: Family, cfg: dict, splits: Splits, spec: RunSpec) -> RunResult:
    """Run ``family`` on ``splits`` with ``cfg`` inside the experiment store; the model ends up in ``spec.output_dir``."""
    output_dir = Path(spec.output_dir)
    tracked: TrackedRun = run_tracked(lambda: fit_family(family, cfg, splits, output_dir, spec.resume, spec.meta_extra),
                                      family, cfg, splits, output_dir, spec.settings())
    if tracked.skipped:
        copy_model(Path(tracked.model_dir or ""), output_dir)
        click.echo(f"reused: copied {tracked.model_dir} to {output_dir}")
        return RunResult(output_dir, tracked.run_id, True, tracked.metrics)
    # a DDP worker other than rank 0 writes no files: the launching process checks the directory
    worker = ddp_rank() > 0
    if not search_share(cfg) and not worker and not (output_dir / META_FILE).is_file():
        raise TextclfError(f"{output_dir}: the {family.name} run finished but wrote no {META_FILE}; "
                           "the family broke the contract (train must leave a model directory)")
    return RunResult(output_dir, tracked.run_id, False, tracked.metrics)


def copy_model(source: Path, target: Path) -> None:
    """Copy the model directory ``source`` to ``target`` atomically (a temp sibling renamed into place).

    ``target`` may not exist yet or be empty; a non-empty ``target`` (another model) is refused.
    """
    if source.resolve() == target.resolve():
        return
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--reuse: {target} exists and is not empty; choose a new --output_dir, or train without --reuse")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.reuse-", dir=target.parent))
    try:
        shutil.copytree(source, tmp / "model", symlinks=True)
        if target.exists():
            target.rmdir()
        os.replace(tmp / "model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the store's runs
def started(run) -> str:
    """The run's start time, local, to the minute."""
    return _dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")


def run_summary(run) -> dict:
    """A JSON-ready row: id, status, family, task type, dataset, command, start, model dir, parent, metrics.

    ``task`` is ``multiclass`` or ``multilabel`` (runs recorded before the tag existed: multi-class).
    """
    tags = run.data.tags
    return {"run_id": run.info.run_id, "status": run.info.status, "family": tags.get(f"{TAG}family"),
            "task": tags.get(f"{TAG}task", "multiclass"),
            "dataset": tags.get(f"{TAG}dataset"), "command": tags.get(f"{TAG}command"), "started": started(run),
            "data_sha256": tags.get(f"{TAG}data_sha256"), "model_dir": tags.get(f"{TAG}model_dir"),
            "parent_run": tags.get(f"{TAG}parent_run"), "metrics": dict(sorted(run.data.metrics.items()))}


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr for one small file; not here."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def rerun(run_id: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None, force: bool = False,
          tracking_uri: str | None = None, reuse: bool = False) -> RunResult:
    """Train the family of run ``run_id`` again: its config (``config.json``) with ``overrides``, its data paths.

    The new run is tagged ``textclf.parent_run`` and ``textclf.overrides``. The default model
    directory is the parent's, suffixed with ``-rerun-<hash of the change>``.
    """
    store = open_store(tracking_uri, create=False)
    parent = store.get_run(run_id)
    tags = parent.data.tags
    parent_dir = tags.get(f"{TAG}model_dir", "models/rerun")
    code = tags.get(f"{TAG}code")
    files = []
    if code:  # the plug-in file, else the copy its model directory carries
        files.append(code if Path(code).is_file() else str(Path(parent_dir) / "plugin" / Path(code).name))
    with tempfile.TemporaryDirectory(prefix="textclf-rerun-") as tmp, _no_progress_bar():
        cfg = json.loads(Path(store.client.download_artifacts(parent.info.run_id, CONFIG_ARTIFACT, tmp)).read_text())
    paths = json.loads(tags[f"{TAG}paths"])
    if output_dir is None:
        change = hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:8]
        output_dir = f"{parent_dir}-rerun-{change}"
    spec = RunSpec(family=tags[f"{TAG}family"], train_path=paths["train"], valid_path=paths["valid"],
                   test_path=paths.get("test"), output_dir=output_dir, cfg=cfg, overrides=tuple(overrides), code=files,
                   track=True, tracking_uri=store.uri, force=force, reuse=reuse, command="rerun",
                   parent_run_id=parent.info.run_id)
    family, cfg, splits = prepare(spec)
    if splits.data_sha256 != tags.get(f"{TAG}data_sha256"):
        warn(f"the data at the paths of run {parent.info.run_id[:8]} changed since it ran (sha256 differs)")
    return execute(family, cfg, splits, spec)

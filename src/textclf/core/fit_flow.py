"""Family contract v2: a family gives ``fit`` (+ a search space); the core owns search -> refit -> evaluate -> meta.json.

A family written against this contract (``Family(fit=..., space=...)``) provides only the model:

* ``fit(cfg, splits, context) -> Predictor``: train on ``splits.train`` with the effective config
  ``cfg``, write whatever the Predictor's ``load`` needs into ``context.output_dir``, and return the
  fitted Predictor. A neural family may call ``context.report(value, step)`` after each epoch, which
  prunes a search trial the pruner gives up on (the family's ``Family.pruner(cfg)``, else Optuna's default).
* optionally ``space(cfg, trial) -> {dotted config key: value}``: one point of the search space
  (``trial.suggest_*``). Without it, ``search.space`` in the config (the JSON form of
  :func:`textclf.core.tuning.suggest`) is the space; its keys name ``model.<key>`` unless they
  hold a dot.
* optionally ``prepare(cfg, splits) -> cfg``: the config completed from the data before anything
  fits (a search-space entry or a start point that depends on the training files); meta.json
  records the prepared config.

Everything else happens here, once for every family:

* the budget rules: a search runs when ``search.n_trials`` or ``search.timeout`` ask for one
  (:func:`textclf.core.tuning.wants_search`); the study resumes from ``search.storage`` (default
  ``OUTPUT_DIR/study.journal``) and is shared by workers; each worker draws its own points
  (:class:`textclf.core.tuning.TrialSeededTPESampler`); ``search.start_params`` are tried first;
  ``search.refit: false`` runs only this worker's share (SLURM arrays);
* every trial fits into a temporary directory (swept if the process is killed) with the seed
  ``seed + trial number`` and is scored on valid with ``search.metric``; the point is kept on the
  trial, so the refit uses exactly it. With ``search.timeout``, a family whose training cannot be
  interrupted from Python (``Family.fork_trials``: fastText) runs each trial after the first
  complete one in a forked child killed at the deadline (:mod:`textclf.core.deadline`): PRUNED;
* the refit fits the best point into the model directory; when the config's ``calibration`` asks
  for one, a calibrator is fitted on valid (:mod:`textclf.core.calibration`) and written beside the
  model; then the core evaluates it (calibrated) on valid and
  test, records every file ``fit`` wrote in meta.json's ``files`` block (checked before each load)
  and writes ``metrics.txt`` and ``meta.json`` (:func:`textclf.core.training.finish_run`). In a
  torchrun-style job whose every process runs this flow, ``fit`` returns None on ranks > 0 and only
  rank 0 finishes the run;
* every fit of one run (the trials and the refit) gets the same ``context.shared`` dict, where a
  family keeps what is costly to rebuild and the same for every trial (the embeddings family's
  encoded vectors). :func:`fit_family` is the whole flow for callers that run several studies in
  one process (``textclf sweep``): they pass their own ``shared`` dict, put the study beside the
  model directory (``search_dir``) and get the predictor and meta back.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textclf.core.calibration import CONFIG_KEY as CALIBRATION_KEY
from textclf.core.calibration import FILE_PREFIX as CALIBRATION_FILE_PREFIX
from textclf.core.calibration import calibrate_predictor
from textclf.core.card import CARD_FILE
from textclf.core.deadline import call_before_deadline
from textclf.core.errors import ConfigError
from textclf.core.integrity import FILES_KEY, files_block
from textclf.core.meta import META_FILE
from textclf.core.metrics import direction, metric_value
from textclf.core.onnx_runtime import remove_export
from textclf.core.predictor import Predictor, evaluate_predictor
from textclf.core.resume_check import RESUME_FILE, check_and_record
from textclf.core.tempfiles import owned_temp_dir
from textclf.core.training import PLUGIN_DIR, Splits, ddp_rank, finish_run
from textclf.core.tuning import (
    JOURNAL_FILE,
    best_trial,
    export_trials,
    make_storage,
    open_study,
    record_worker,
    run_search,
    save_plots,
    search_summary,
    start_points,
    suggest,
    wants_search,
)

log = logging.getLogger(__name__)

#: files the core writes into a model directory (never part of the family's recorded files)
CORE_FILES = {META_FILE, CARD_FILE, "metrics.txt", JOURNAL_FILE, "trials.csv", RESUME_FILE}
TRIAL_PREFIX = "textclf-trial-"


@dataclass
class FitContext:
    """What ``fit`` gets besides the config and the data.

    ``output_dir``: the directory to write the model into (a temporary one during a search trial);
    ``seed``: the run's seed (``seed + trial number`` during a search);
    ``trial``: the Optuna trial being scored (None for the final fit); ``resume``: ``--resume``;
    ``shared``: one dict for every fit of the run (all trials and the refit, in this process), for
    per-run state a family rebuilds nowhere else (keys of the family's own, e.g. ``"embeddings.features"``).
    """

    output_dir: Path
    seed: int
    trial: Any = None
    resume: bool = False
    shared: dict = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """True for the fit whose model is kept (the refit, or a run without search)."""
        return self.trial is None

    def report(self, value: float, step: int) -> None:
        """Report an intermediate valid score (after epoch ``step``); raises ``optuna.TrialPruned`` when the pruner says so."""
        if self.trial is None:
            return
        import optuna

        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")


def config_space(cfg: dict, trial) -> dict:
    """The default search space: ``search.space`` sampled with :func:`textclf.core.tuning.suggest`, keys as config keys."""
    space = (cfg.get("search") or {}).get("space") or {}
    return {(name if "." in name else f"model.{name}"): value for name, value in suggest(trial, space).items()}


def apply_params(cfg: dict, params: dict) -> dict:
    """``cfg`` with every ``dotted.key: value`` of a search point set (a key the config lacks is a ConfigError)."""
    out = copy.deepcopy(cfg)
    for key, value in params.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"search point {key!r}: the config has no section {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"search point {key!r}: not a key of the config ({', '.join(sorted(node)) or 'empty section'})")
        node[parts[-1]] = value
    return out


def metric_betas(metric: str) -> tuple[float, ...]:
    """The F-betas to compute so that ``metric`` (``macro_f0.3``, ``weighted_f2``, ...) is among the valid metrics."""
    import re

    found = re.fullmatch(r"(?:macro|micro|weighted|samples)_f(\d+(?:\.\d+)?)", metric)
    return (1.0, 0.5) if not found or float(found.group(1)) in (1.0, 0.5) else (1.0, 0.5, float(found.group(1)))


def check_metric(metric: str, labels: list[str], task: str = "multiclass") -> None:
    """A one-line ConfigError for a ``search.metric`` that textclf does not compute for ``task`` (before any trial runs)."""
    from textclf.core.metrics import classification_metrics, multilabel_metrics

    try:
        if task == "multilabel":
            sets = [(label,) for label in labels[:2]]
            metrics = multilabel_metrics(sets, sets, labels, betas=metric_betas(metric))
        else:
            metrics = classification_metrics(labels[:2], labels[:2], labels, betas=metric_betas(metric))
        metric_value(metrics, metric)
    except KeyError as exc:
        raise ConfigError(f"search.metric: {exc.args[0]}") from None


def with_task_metric(cfg: dict, task: str) -> dict:
    """``cfg`` with ``search.metric: null`` set to the task's default: macro_f1 (multi-class), micro_f1 (multi-label)."""
    from textclf.core.registry import DEFAULT_METRICS

    s = cfg.get("search")
    if not isinstance(s, dict) or s.get("metric"):
        return cfg
    return {**cfg, "search": {**s, "metric": DEFAULT_METRICS.get(task, DEFAULT_METRICS["multiclass"])}}


def checked_config(family, cfg: dict, task: str) -> dict:
    """``cfg`` checked by the family's ``check`` hook (which may fill derived settings) with ``search.metric`` resolved.

    The run service calls it before the store records the config, and :func:`fit_family` again
    (both steps are idempotent), so the recorded config is the one that trains.
    """
    from textclf.core.calibration import CONFIG_KEY, check_method

    check = family.check_fn() if family.fit is not None else None
    if check:
        check(cfg)
    check_method(cfg.get(CONFIG_KEY))
    return with_task_metric(cfg, task)


#: the study's user attribute holding :func:`search_fingerprint`
FINGERPRINT_KEY = "textclf.search_fingerprint"
#: a search replaced in its model directory keeps its journal under this suffix
PREVIOUS_SUFFIX = ".previous"


def search_fingerprint(family: str, metric: str, splits: Splits) -> str:
    """SHA-256 of what makes two searches' trial values comparable: the family, the metric, the label set and
    task, and the training and validation rows (texts, labels, weights).

    A study resumes only when this matches (:func:`search`). The test split, the budget and the search
    space may change: a trial records its own parameters, and Optuna's samplers take a space that
    grows or shrinks between runs.
    """
    import hashlib
    import json

    from textclf.core.data import sha256_datasets

    weights = [d.weights for d in (splits.train, splits.valid)]
    text = json.dumps([family, metric, splits.task, list(splits.labels), sha256_datasets([splits.train, splits.valid]),
                       weights if any(w is not None for w in weights) else None])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def search(family, cfg: dict, splits: Splits, output_dir: Path, fit: Callable, space: Callable, shared: dict | None = None):
    """Run (or resume) the family's Optuna study on valid (journal, progress.log in ``output_dir``); returns it.

    A study resumes only for the same search (:func:`search_fingerprint`). A study in the model
    directory that holds another search's trials (other data, labels or metric) is moved to
    ``study.journal.previous`` and a new one starts; in a storage named by ``search.storage`` that is
    a one-line ConfigError instead (other workers may own it). Studies older than the fingerprint resume.
    """
    import optuna
    from optuna.trial import TrialState

    s = cfg["search"]
    check_metric(s["metric"], splits.labels, splits.task)
    make_pruner = family.pruner_fn()

    def study_here():
        return open_study(s["study_name"] or family.name, make_storage(s["storage"], output_dir), seed=cfg["seed"],
                          direction=direction(s["metric"]), pruner=make_pruner(cfg) if make_pruner else None)

    study = study_here()
    fingerprint = search_fingerprint(family.name, s["metric"], splits)
    held = study.user_attrs.get(FINGERPRINT_KEY)
    n_held = len(study.get_trials(deepcopy=False))
    if held not in (None, fingerprint) and n_held:
        if s["storage"]:
            raise ConfigError(f"study {study.study_name!r} in {s['storage']} holds {n_held} trials of another search "
                              "(other training or validation data, labels or metric); name a new study "
                              "with --set search.study_name=NAME")
        previous = output_dir / f"{JOURNAL_FILE}{PREVIOUS_SUFFIX}"
        (output_dir / JOURNAL_FILE).replace(previous)
        log.warning("%s held a search of %d trials on other data, labels or metric: kept as %s; "
                    "starting a new study", output_dir, n_held, previous.name)
        study = study_here()
    if held != fingerprint:
        study.set_user_attr(FINGERPRINT_KEY, fingerprint)
    if not study.get_trials(deepcopy=False) and s.get("start_params"):
        points = start_points(s.get("space") or {}, s["start_params"])
        for point in points[: s["n_trials"] or None]:
            study.enqueue_trial(point, skip_if_exists=True)

    deadline = time.monotonic() + s["timeout"] if s.get("timeout") else None

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        params = space(cfg, trial)
        trial.set_user_attr("params", params)
        trial_cfg = apply_params(cfg, params)

        def fit_and_score() -> dict:
            with owned_temp_dir(TRIAL_PREFIX) as tmp:
                context = FitContext(Path(tmp), cfg["seed"] + trial.number, trial=trial, shared=shared if shared is not None else {})
                predictor = fit(trial_cfg, splits, context)
                return evaluate_predictor(predictor, splits.valid.texts, splits.valid.labels, betas=metric_betas(s["metric"]),
                                          probabilities=False)

        try:
            if family.fork_trials and deadline is not None and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                metrics = call_before_deadline(fit_and_score, deadline)
            else:
                metrics = fit_and_score()
        except (RuntimeError, ValueError) as exc:
            log.warning("trial %d failed: %s (params %s)", trial.number, exc, params)
            raise
        trial.set_user_attr("valid_accuracy", metrics["accuracy"])
        return metric_value(metrics, s["metric"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_search(study, objective, s["n_trials"] or None, s["timeout"], s.get("n_jobs") or 1, output_dir)
    return study


@dataclass
class FitResult:
    """What :func:`fit_family` did: the model directory, the evaluated predictor and its meta (both None
    when ``search.refit`` is false), and the seconds spent searching (0 without a search)."""

    output_dir: Path
    predictor: Predictor | None = None
    meta: dict | None = None
    search_seconds: float = 0.0


def train_family(family, cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False,
                 meta_extra: dict | None = None) -> Path:
    """Search (when asked), refit the best point, evaluate and write meta.json for a v2 ``family``; returns the model dir.

    ``meta_extra`` goes into meta.json (``textclf distill`` records its teacher there).
    """
    return fit_family(family, cfg, splits, output_dir, resume, meta_extra=meta_extra).output_dir


def file_times(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` with its modification time (ns): what a step wrote is what changed across it."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def fit_family(family, cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False, *,
               search_dir: str | Path | None = None, shared: dict | None = None, echo: bool = True, plots: bool = True,
               meta_extra: dict | None = None) -> FitResult:
    """The core's flow for a v2 ``family``: check, prepare, search (when asked), refit the best point, evaluate, meta.json.

    ``search_dir`` holds the study's journal, ``progress.log``, ``trials.csv`` (and the plots unless
    ``plots`` is false); default ``output_dir``. ``shared`` is the ``context.shared`` of every fit
    (a caller running several studies passes one dict to all of them). ``echo`` prints the metrics;
    ``meta_extra`` goes into meta.json.
    """
    cfg = checked_config(family, cfg, splits.task)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    search_dir = output_dir if search_dir is None else Path(search_dir)
    search_dir.mkdir(parents=True, exist_ok=True)
    shared = {} if shared is None else shared
    fit = family.fit_fn()
    prepare = family.prepare_fn()
    if prepare:
        cfg = prepare(cfg, splits)
    s = cfg.get("search") or {}
    final_cfg, extra, point = cfg, dict(meta_extra or {}), {}
    searched: set[str] = set()
    search_seconds = 0.0
    if wants_search(s):
        start = time.monotonic()
        earlier = file_times(output_dir)  # a model directory trained before holds the last run's files
        space = family.space_fn() or config_space
        study = search(family, cfg, splits, search_dir, fit, space, shared)
        export_trials(study, search_dir)
        if plots:
            save_plots(study, search_dir)
        search_seconds = time.monotonic() - start
        if s.get("refit") is False:
            return FitResult(output_dir, search_seconds=search_seconds)
        best = best_trial(study)
        point = best.user_attrs.get("params") or {}
        final_cfg = apply_params(cfg, point)
        # what the search wrote (trials.csv, the plots): not the model's files; the last run's model.bin is
        searched = {p.name for p, t in file_times(output_dir).items() if p.parent == output_dir and earlier.get(p) != t}
        extra["search"] = search_summary(study, s["storage"], search_dir, s["metric"])
        log.info("best point on valid: %s", point)
    check_and_record(output_dir, splits, resume)  # --resume continues only a run on the same data
    before = file_times(output_dir)
    fit_start = time.monotonic()
    predictor = fit(final_cfg, splits, FitContext(output_dir, final_cfg["seed"], resume=resume, shared=shared))
    extra["training_cost"] = {"fit_seconds": round(time.monotonic() - fit_start, 3), "search_seconds": round(search_seconds, 3)}
    if predictor is None and ddp_rank() > 0:
        return output_dir  # a DDP process other than rank 0 (torchrun started by hand): rank 0 finishes the run
    if not isinstance(predictor, Predictor):
        raise ConfigError(f"family {family.name!r} does not implement the contract: fit must return a Predictor, "
                          f"got {type(predictor).__name__}")
    stale = remove_export(output_dir)  # an ONNX export of the model this one replaces
    if stale:
        log.info("removed the earlier model's ONNX export from %s: %s", output_dir, ", ".join(stale))
    info = {**({"params": final_cfg["model"]} if "model" in final_cfg else {}),  # families without a model block: none
            **(getattr(predictor, "fit_info", None) or {})}
    # the files loading needs: what fit names in fit_info["files"] (a family that also writes logs or
    # checkpoints), else every file it wrote (new or rewritten); and the plug-in code the directory carries
    named = info.pop(FILES_KEY, None)
    written = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*")
                     if p.is_file() and p.name not in CORE_FILES and p.name not in searched
                     and ((named is None and before.get(p) != p.stat().st_mtime_ns) or p.parent.name == PLUGIN_DIR))
    calibration = calibrate_predictor(predictor, splits.valid.texts, splits.valid.labels, final_cfg.get(CALIBRATION_KEY),
                                      output_dir, seed=final_cfg.get("seed", 13))
    if calibration is not None:
        extra[CALIBRATION_KEY] = calibration
    written = [name for name in written if not name.startswith(CALIBRATION_FILE_PREFIX)]  # a stale one from an earlier run
    cal_file = [calibration["file"]] if calibration and calibration.get("file") else []
    extra[FILES_KEY] = files_block(output_dir, sorted({*written, *(named or ()), *cal_file}))
    meta = finish_run(output_dir, predictor, splits, cfg, tuple(family.packages), echo=echo, best_point=point or None,
                      **info, **extra)
    return FitResult(output_dir, predictor, meta, search_seconds)

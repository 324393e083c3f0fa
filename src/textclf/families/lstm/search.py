"""Optuna over the BiLSTM: sampled values go into their config sections, epochs feed a pruner, the best is refitted."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L  # noqa: N812
import optuna

from textclf.core.config import merge
from textclf.core.errors import ConfigError
from textclf.core.metrics import direction
from textclf.core.training import Splits
from textclf.core.tuning import (
    best_trial,
    finish_search,
    make_storage,
    open_study,
    record_worker,
    run_search,
    search_summary,
    suggest,
    wants_search,
)
from textclf.families.lstm.train import fit, train_once

log = logging.getLogger(__name__)

SEARCH_SECTIONS = ("model", "train", "text")


class Pruning(L.Callback):
    """Report the selection metric to an Optuna trial every epoch; stop training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.trial.report(pl_module.val_metrics[self.metric], trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


def param_section(cfg: dict, name: str) -> str:
    """The config section (model, train or text) that holds a search-space name such as ``hidden_size``."""
    for section in SEARCH_SECTIONS:
        if name in cfg[section]:
            return section
    keys = [k for section in SEARCH_SECTIONS for k in cfg[section]]
    raise ConfigError(f"search.space {name!r} is not a model/train/text setting; valid names: {', '.join(keys)}")


def apply_params(cfg: dict, params: dict) -> dict:
    """A config with sampled values (search-space names like ``lr``, ``hidden_size``) put in their sections."""
    update: dict = {}
    for name, value in params.items():
        update.setdefault(param_section(cfg, name), {})[name] = value
    return merge(cfg, update, source="search.space")


def make_pruner(s: dict, max_epochs: int) -> optuna.pruners.BasePruner:
    """``search.pruner``: ``median`` (MedianPruner), ``hyperband`` (HyperbandPruner) or ``none``."""
    kind = (s["pruner"] or "none").lower()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s["pruner_startup_trials"], n_warmup_steps=s["pruner_warmup_epochs"])
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s["pruner_warmup_epochs"]), max_resource=max_epochs)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"search.pruner {s['pruner']!r}: choose median, hyperband or none")


def search(cfg: dict, splits: Splits, output_dir: str | Path) -> optuna.Study:
    """Run (or resume) the study; every trial trains into ``trials/trial_NNNN`` and reports each epoch to the pruner."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    s = cfg["search"]
    metric = s["metric"] or cfg["train"]["metric"]
    cfg = merge(cfg, {"train": {"metric": metric}})
    for name in s["space"]:
        param_section(cfg, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(s["study_name"], make_storage(s["storage"], output_dir), seed=cfg["seed"], direction=direction(metric),
                       pruner=make_pruner(s, cfg["train"]["epochs"]))

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        tcfg = merge(apply_params(cfg, suggest(trial, s["space"])), {"seed": cfg["seed"] + trial.number})
        pruning = Pruning(trial, metric)
        result = fit(tcfg, splits, output_dir / "trials" / f"trial_{trial.number:04d}", checkpoints=False,
                     callbacks=[pruning], progress=False)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("valid_accuracy", result.history[-1]["valid_accuracy"])
        trial.set_user_attr("train_time_per_epoch_s", sum(h["train_time_s"] for h in result.history) / len(result.history))
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        return result.best_score

    run_search(study, objective, s["n_trials"], s["timeout"], output_dir=output_dir)
    return study


def tune(cfg: dict, splits: Splits, output_dir: str | Path, refit: bool = True) -> dict | None:
    """Search, export ``trials.csv`` and plots, then refit the best params into ``output_dir``; return meta (None without refit)."""
    output_dir = Path(output_dir)
    study = search(cfg, splits, output_dir)
    finish_search(study, output_dir)
    if not refit:
        return None
    s = cfg["search"]
    summary = search_summary(study, s["storage"], output_dir, s["metric"] or cfg["train"]["metric"])
    return train_once(apply_params(cfg, best_trial(study).params), splits, output_dir, extra={"search": summary})


def train(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False) -> Path:
    """The family's entry: an Optuna search + refit when ``search.n_trials``/``timeout`` ask for one, else one run."""
    s = cfg["search"]
    if wants_search(s):
        if resume:
            log.info("a study always resumes from its storage; --resume is not needed for a search")
        tune(cfg, splits, output_dir, refit=s["refit"])
    else:
        train_once(cfg, splits, output_dir, resume)
    return Path(output_dir)

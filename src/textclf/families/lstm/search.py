"""The BiLSTM's search hooks for the core's Optuna flow (:mod:`textclf.core.fit_flow`).

``space`` puts each sampled ``search.space`` name (``lr``, ``hidden_size``) in its config section,
``pruner`` builds the per-epoch pruner from ``search.pruner``, ``check`` validates the settings before
anything trains, and :class:`~textclf.families.lstm.train.Pruning` reports every epoch's validation score through
``context.report``; the core runs the study, refits the best point and writes meta.json.
"""

from __future__ import annotations

import optuna

from textclf.core.config import merge
from textclf.core.errors import ConfigError
from textclf.core.tuning import suggest

SEARCH_SECTIONS = ("model", "train", "text")


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


def space(cfg: dict, trial: optuna.Trial) -> dict:
    """One point of the JSON ``search.space`` as dotted config keys (``train.lr``, ``model.hidden_size``)."""
    return {f"{param_section(cfg, name)}.{name}": value for name, value in suggest(trial, cfg["search"]["space"]).items()}


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


def pruner(cfg: dict) -> optuna.pruners.BasePruner:
    """The family's pruner for the core's study (``Family.pruner``): epochs are its steps."""
    return make_pruner(cfg["search"], cfg["train"]["epochs"])


def check(cfg: dict) -> None:
    """Validate the settings before anything trains (``Family.check``).

    ``search.metric: null`` means the selection metric ``train.metric``; it is filled in here, so the
    core's study scores trials on it.
    """
    from textclf.families.lstm.train import selection_metric

    selection_metric(cfg)
    selection_metric(cfg, multilabel=True, key="train.metric_multilabel")
    s = cfg["search"]
    if not s.get("metric"):
        s["metric"] = cfg["train"]["metric"]
    for name in s.get("space") or {}:
        param_section(cfg, name)
    make_pruner(s, cfg["train"]["epochs"])


def prepare(cfg: dict, splits) -> dict:
    """On multi-label data (``Family.prepare``, after :func:`check`): select epochs on ``train.metric_multilabel`` (micro_f1).

    ``train.metric`` becomes it, and so does ``search.metric`` when :func:`check` had copied
    ``train.metric`` there. ``train.class_weights`` (weights of exclusive classes) is refused: a
    multi-label BCE takes ``train.pos_weight``. Multi-class data: ``cfg`` unchanged.
    """
    from textclf.families.lstm.train import DEFAULT_MULTILABEL_METRIC

    if not splits.multilabel:
        return cfg
    t, s = cfg["train"], cfg["search"]
    if t.get("class_weights"):
        raise ConfigError("train.class_weights weighs exclusive classes; on multi-label data set train.pos_weight "
                          "(\"balanced\": negatives/positives of each label) instead")
    metric = t.get("metric_multilabel") or DEFAULT_MULTILABEL_METRIC
    search_metric = metric if s.get("metric") in (None, t["metric"]) else s["metric"]
    return {**cfg, "train": {**t, "metric": metric}, "search": {**s, "metric": search_metric}}

"""The embeddings family's search hooks for the core's Optuna flow (:mod:`textclf.core.fit_flow`).

``search.space`` names without a dot (``encoder``, ``classifier``, ``balance``, ``train_files``) are
sampled every trial; ``<classifier>.<param>`` names only when that classifier is chosen (a
conditional space); any other dotted name is a config key sampled every trial
(``tfidf_svd.n_components``). :func:`space` returns them as config keys (``encoder.name``,
``classifiers.logreg.C``, ...), which the core applies to the trial's config.

:func:`prepare` completes the space from the data: with several ``--train_path`` files (and
``search.train_files`` true) ``train_files`` picks which of them to fit on
(:func:`~textclf.families.embeddings.train.train_file_choices`; a pick with fewer than two
classes is pruned by ``fit``), and the configured choice becomes the first point of a new study
(put before ``search.start_params``). :func:`check` rejects a space the config cannot take before
anything is encoded.
"""

from __future__ import annotations

import copy

import optuna

from textclf.core.errors import ConfigError
from textclf.core.training import Splits
from textclf.core.tuning import suggest, wants_search
from textclf.families.embeddings.train import train_file_choices

#: search-space names without a dot -> the config key they set
TOP_KEYS = {"encoder": "encoder.name", "classifier": "classifier", "balance": "balance", "train_files": "train_files"}


def config_key(cfg: dict, name: str) -> str:
    """The config key a ``search.space`` name sets (``logreg.C`` -> ``classifiers.logreg.C``)."""
    if name in TOP_KEYS:
        return TOP_KEYS[name]
    head, _, rest = name.partition(".")
    if not rest:
        raise ConfigError(f"search.space {name!r}: not a setting the embeddings search can pick; names without a dot: "
                          f"{', '.join(TOP_KEYS)}; <classifier>.<param> for a classifier's own ({', '.join(cfg['classifiers'])})")
    return f"classifiers.{name}" if head in cfg["classifiers"] else name


def space(cfg: dict, trial: optuna.Trial) -> dict:
    """One point of ``search.space`` as config keys: the shared names first, then the chosen classifier's own."""
    entries = cfg["search"]["space"]
    shared = {k: v for k, v in entries.items() if k.partition(".")[0] not in cfg["classifiers"]}
    params = suggest(trial, shared)
    clf = params.get("classifier", cfg["classifier"])
    params.update(suggest(trial, {k: v for k, v in entries.items() if k.startswith(clf + ".")}))
    return {config_key(cfg, name): value for name, value in params.items()}


def _has_key(cfg: dict, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check(cfg: dict) -> None:
    """Reject (one line) a configured classifier without a block, or a space name the config has no key for."""
    from textclf.families.common.chunking import ChunkSettings

    ChunkSettings.from_config(cfg["encoder"])
    clf = cfg["classifier"]
    if clf not in cfg["classifiers"]:
        raise ConfigError(f"classifier {clf!r}: no classifiers.{clf} block in the config; known: {', '.join(cfg['classifiers'])}")
    entries = cfg["search"].get("space") or {}
    for name in entries:
        key = config_key(cfg, name)
        if not _has_key(cfg, key):
            raise ConfigError(f"search.space {name!r}: the config has no {key} to set (add it to the config first)")
    for name in (entries.get("classifier") or {}).get("choices") or ():
        if name not in cfg["classifiers"]:
            raise ConfigError(f"search.space classifier choice {name!r}: no classifiers.{name} block in the config; "
                              f"known: {', '.join(cfg['classifiers'])}")


def configured_point(cfg: dict, files: list[str]) -> dict:
    """The configured choice as search-space names (the first trial of a new study)."""
    clf = cfg["classifier"]
    return {"encoder": cfg["encoder"]["name"], "classifier": clf, "balance": cfg["balance"],
            **({"train_files": files[0] if cfg.get("train_files") is None else str(cfg["train_files"])} if files else {}),
            **{f"{clf}.{name}": value for name, value in cfg["classifiers"].get(clf, {}).items()}}


def prepare(cfg: dict, splits: Splits) -> dict:
    """``cfg`` with ``train_files`` in the space (several training files) and the configured choice first in ``search.start_params``."""
    if not wants_search(cfg.get("search") or {}):
        return cfg
    cfg = copy.deepcopy(cfg)
    s = cfg["search"]
    s["space"] = s.get("space") or {}
    files = train_file_choices(len(splits.train_sources)) if s.get("train_files", True) else []
    if files and "train_files" not in s["space"]:
        s["space"]["train_files"] = {"type": "categorical", "choices": files}
    s["start_params"] = [configured_point(cfg, files), *(s.get("start_params") or [])]
    return cfg

"""The setfit family's hooks for the core's flow (:mod:`textclf.core.fit_flow`): ``check`` and ``space``.

``search.space`` names a setting as ``<section>_<key>`` (``head_hidden`` -> ``head.hidden``,
``pairs_per_text`` -> ``pairs.per_text``, ``train_lr`` -> ``train.lr``), a top-level setting by its
name (``loss``) or any of them by its dotted key. The section prefix is needed because SetFit's
sections share key names (``train.lr`` and ``head.lr``), and a name without dots can still be
changed with ``--set search.space.head_hidden.choices=[0,64]``.

``check`` rejects a bad config in one line before any encoder loads: it runs the rules of the
modules that use each setting (:func:`~textclf.families.setfit.contrastive.loss_name`,
:func:`~textclf.families.setfit.head.make_head`, the samplers, the device and encoder resolution)
on the config and on every end of the search space.
"""

from __future__ import annotations

from textclf.core.errors import ConfigError, TextclfError
from textclf.core.fit_flow import apply_params
from textclf.core.tuning import suggest

#: the config sections a search point may change (``data``, ``seed``, ``device`` and ``search`` are the run's)
SEARCH_SECTIONS = ("encoder", "pairs", "train", "head")
#: top-level settings a search point may change
SEARCH_SCALARS = ("loss",)


def space_names(cfg: dict) -> list[str]:
    """Every ``search.space`` name that :func:`space_key` accepts (dotted keys work as well)."""
    return [*SEARCH_SCALARS, *(f"{section}_{key}" for section in SEARCH_SECTIONS for key in cfg[section])]


def space_key(cfg: dict, name: str) -> str:
    """The dotted config key of search-space name ``name`` (``head_hidden`` -> ``head.hidden``); unknown: ConfigError."""
    if "." in name:
        section, _, key = name.partition(".")
        if section in SEARCH_SECTIONS and key in cfg[section]:
            return name
    elif name in SEARCH_SCALARS:
        return name
    else:
        section, _, key = name.partition("_")
        if section in SEARCH_SECTIONS and key in cfg[section]:
            return f"{section}.{key}"
    raise ConfigError(f"search.space {name!r} is not a setfit setting; valid names: {', '.join(space_names(cfg))}")


def space(cfg: dict, trial) -> dict:
    """One point of the JSON ``search.space`` as dotted config keys (``head.hidden``, ``train.lr``)."""
    return {space_key(cfg, name): value for name, value in suggest(trial, cfg["search"]["space"]).items()}


def _at_least(key: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: expected an integer of at least {low}, got {value!r}")


def check_settings(cfg: dict) -> None:
    """A one-line ConfigError for a setting no fit could run with (loss, head, pairs, few-shot size, device, encoder)."""
    import numpy as np

    from textclf.core.torch_common import resolve_device
    from textclf.families.common.chunking import ChunkSettings
    from textclf.families.common.encoders import resolve_model_dir
    from textclf.families.setfit.contrastive import loss_name
    from textclf.families.setfit.head import make_head
    from textclf.families.setfit.sampling import few_shot_indices, sample_texts

    ChunkSettings.from_config(cfg["encoder"], auto=True)
    loss_name(cfg["loss"])
    h = cfg["head"]
    if h.get("type", "torch") == "torch":
        _at_least("head.epochs", h["epochs"], 1)
        if not 0.0 <= float(h["label_smoothing"]) < 1.0:
            raise ConfigError(f"head.label_smoothing: expected a value in [0, 1), got {h['label_smoothing']!r}")
    make_head(cfg, 2, 2, seed=0)  # head.type, hidden, dropout
    few_shot_indices([], cfg["data"].get("per_class"))  # data.per_class
    sample_texts(np.arange(2), cfg["pairs"]["per_text"], seed=0)  # pairs.per_text
    _at_least("train.epochs", cfg["train"]["epochs"], 0)
    _at_least("train.batch_size", cfg["train"]["batch_size"], 1)
    resolve_device(cfg.get("device"))
    resolve_model_dir(cfg["encoder"]["name"])


def check(cfg: dict) -> None:
    """Validate the config and every end of the search space before anything trains (``Family.check``).

    Each name of ``search.space`` must be a setfit setting, and each choice (categorical) or bound
    (int, float) must be a value the fit accepts, so a search never fails on its tenth trial.
    """
    check_settings(cfg)
    for name, spec in ((cfg.get("search") or {}).get("space") or {}).items():
        key = space_key(cfg, name)
        values = spec["choices"] if spec.get("type") == "categorical" else [spec["low"], spec["high"]]
        for value in values:
            try:
                check_settings(apply_params(cfg, {key: value}))
            except TextclfError as exc:
                raise ConfigError(f"search.space {name!r} value {value!r}: {exc}") from None


def prepare(cfg: dict, splits) -> dict:
    """On multi-label data (``Family.prepare``, after :func:`check`): refuse ``loss: batch_all_triplet`` (in the
    config or the search space), which needs one class a text. ``head.pos_weight`` applies to label sets only."""
    from textclf.families.setfit.contrastive import MULTILABEL_LOSS_ERROR, loss_name

    if not splits.multilabel:
        if cfg["head"].get("pos_weight") is not None:
            raise ConfigError("head.pos_weight weighs the positives of each label; it applies to multi-label data only")
        return cfg
    losses = [cfg["loss"]]
    for name, spec in ((cfg.get("search") or {}).get("space") or {}).items():
        if space_key(cfg, name) == "loss" and spec.get("type") == "categorical":
            losses += list(spec["choices"])
    if any(loss_name(loss) == "batch_all_triplet" for loss in losses):
        raise ConfigError(MULTILABEL_LOSS_ERROR)
    return cfg

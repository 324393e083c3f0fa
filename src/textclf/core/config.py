"""JSON configs: a family's default, the user's ``config/<family>.json``, ``--config PATH`` and ``--set key.sub=value``.

A family's default config (``families/<family>/config.json`` for the built-in ones) is the schema:
every key a user sets must exist there (an unknown key is an error listing the valid keys) and keep
its type. A dict whose default is empty (``{}``) is free-form. The layers, each merged over the one
before with that same rule: the default, the user's ``config/<family>.json`` (found by
:func:`textclf.core.jsonfiles.user_config`), the ``--config`` file, the ``--set`` overrides.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textclf.core.errors import ConfigError
from textclf.core.jsonfiles import PACKAGE_DIR, REPO_ROOT, config_dirs, read_json, user_config  # noqa: F401  (re-exported)


def default_config(family: str) -> dict:
    """The config a run of ``family`` starts from: its default with the user's ``config/<family>.json`` merged over it."""
    from textclf.core.registry import get_family

    fam = get_family(family)
    cfg = fam.default_config()
    override = fam.override_path()
    if override is not None:
        cfg = merge(cfg, read_json(override), source=str(override))
    return cfg


def leaf_keys(cfg: dict, prefix: str = "") -> list[str]:
    """All dotted keys of a nested dict (free-form empty dicts count as one key)."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            keys += leaf_keys(v, full + ".")
        else:
            keys.append(full)
    return keys


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        return value if isinstance(value, str) else json.dumps(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")


def merge(base: dict, update: dict, source: str = "config", prefix: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; unknown keys and wrong types raise a ConfigError naming ``source``."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        full = f"{prefix}{k}"
        if k not in out:
            if base == {} and prefix:
                out[k] = v
                continue
            valid = leaf_keys(base, prefix)
            raise ConfigError(f"{source}: unknown key {full!r}; valid keys: {', '.join(valid)}")
        if isinstance(out[k], dict) and out[k] and isinstance(v, dict):
            out[k] = merge(out[k], v, source, full + ".")
        else:
            try:
                out[k] = _check_type(full, out[k], v)
            except ConfigError as exc:  # name the file (or dict) the value came from; --set already names the key
                if source in (full, f"--set {full}"):
                    raise
                raise ConfigError(f"{source}: {exc}") from None
    return out


def parse_value(raw: str) -> Any:
    """Parse an override value as JSON, falling back to the plain string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


AUTO_BOOL_ALIASES = {"1": "true", "on": "true", "yes": "true", "0": "false", "off": "false", "no": "false",
                     "none": "false"}


def auto_bool(key: str, value: Any) -> str:
    """A three-way ``auto | true | false`` setting normalised (``None`` is ``auto``; booleans and on/off/yes/no/1/0 allowed).

    Settings whose default is ``"auto"`` arrive as strings after ``--set key=true`` (see :func:`merge`), so
    every such key is read through this one rule.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value if value is not None else "auto").strip().lower()
    text = AUTO_BOOL_ALIASES.get(text, text)
    if text not in ("auto", "true", "false"):
        raise ConfigError(f"{key} {value!r}: choose auto, true or false")
    return text


def apply_override(cfg: dict, assignment: str) -> dict:
    """Apply one ``key.sub=value`` override (value parsed as JSON, else string)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    return set_key(cfg, key, parse_value(raw), source=f"--set {key}")


def key_path(cfg: dict, key: str) -> list[str]:
    """The names along the dotted ``key`` in ``cfg``: at each level the longest run of parts that is a key there.

    So a key that itself holds dots, such as the search-space entry ``stage2.lr`` of
    ``search.space``, is reachable: ``search.space.stage2.lr.low`` -> ``search``, ``space``, ``stage2.lr``, ``low``.
    """
    parts, path, node = key.split("."), [], cfg
    i = 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i + 1, -1) if isinstance(node, dict) and ".".join(parts[i:j]) in node), i + 1)
        name = ".".join(parts[i:j])
        path.append(name)
        node = node.get(name) if isinstance(node, dict) else None
        i = j
    return path


def set_key(cfg: dict, key: str, value: Any, source: str | None = None) -> dict:
    """A copy of ``cfg`` with the dotted ``key`` set to ``value``, checked like every override (known key, same type)."""
    update: Any = value
    for part in reversed(key_path(cfg, key)):
        update = {part: update}
    return merge(cfg, update, source=source or key)


def load_config(family: str, config_path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """The effective config: the family default, the user's ``config/<family>.json``, ``config_path`` (partial or full), ``--set``."""
    cfg = default_config(family)
    if config_path:
        cfg = merge(cfg, read_json(config_path), source=str(config_path))
    for assignment in overrides:
        cfg = apply_override(cfg, assignment)
    check_search_settings(cfg)
    return cfg


#: names of the validation metrics the families compute (any F-beta; the family may still narrow them down)
METRIC_RE = (r"accuracy|loss|(macro|micro|weighted|samples)_f\d+(\.\d+)?|(macro|micro|weighted|samples)_(precision|recall)"
             r"|hamming_loss|subset_accuracy")


def check_metric_name(key: str, name: Any) -> None:
    """A ConfigError unless ``name`` is a metric name: accuracy, loss, macro_f1, weighted_f0.5, macro_recall, ..."""
    import re

    if not isinstance(name, str) or not re.fullmatch(METRIC_RE, name):
        raise ConfigError(f"{key} {name!r}: unknown metric; use accuracy, loss, macro_f1, macro_f0.5, micro_f1, "
                          "weighted_f1 (any F-beta), macro_precision, macro_recall, samples_f1, hamming_loss (multi-label), ...")


def check_space(space: Any, key: str = "search.space") -> None:
    """A ConfigError for a search-space entry that no trial could sample (bad type, low > high, empty choices, ...)."""
    if not isinstance(space, dict):
        raise ConfigError(f"{key}: expected an object of parameter specs")
    for name, spec in space.items():
        where = f"{key}.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected an object such as {{\"type\": \"float\", \"low\": 0.1, \"high\": 1}}")
        kind = spec.get("type")
        if kind == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"{where}: a categorical parameter needs a non-empty 'choices' list")
            continue
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}: type must be float, int or categorical, got {kind!r}")
        low, high = spec.get("low"), spec.get("high")
        number = (int,) if kind == "int" else (int, float)
        for bound, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, number):
                raise ConfigError(f"{where}.{bound}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
        if low > high:
            raise ConfigError(f"{where}: low {low} is above high {high}")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
            raise ConfigError(f"{where}.step: expected a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        if step is not None and spec.get("log"):
            raise ConfigError(f"{where}: step and log cannot be combined")


def check_search_settings(cfg: dict) -> None:
    """Check the metric names and the search space of a config before any training or trial starts."""
    for section in ("search", "train"):
        block = cfg.get(section)
        if isinstance(block, dict) and "metric" in block and block["metric"] is not None:
            check_metric_name(f"{section}.metric", block["metric"])
    search = cfg.get("search")
    if isinstance(search, dict) and "space" in search:
        check_space(search["space"])
    if isinstance(search, dict):
        check_search_budget(search)


#: search key -> (the smallest value allowed, whether it may be a float, what it means)
SEARCH_BUDGET = {"n_trials": (0, False, "finished trials the study should hold; 0: no search"),
                 "n_jobs": (1, False, "parallel trials in this process"),
                 "timeout": (0, True, "seconds")}


def check_search_budget(search: dict) -> None:
    """A ConfigError for ``search.n_trials`` < 0, ``search.n_jobs`` < 1 or ``search.timeout`` <= 0 (null: no limit).

    Checked with the rest of the config, so a bad value stops the run before a study, journal or
    output directory exists.
    """
    for key, (low, real, meaning) in SEARCH_BUDGET.items():
        value = search.get(key)
        if value is None:
            continue
        number = (int, float) if real else (int,)
        ok = isinstance(value, number) and not isinstance(value, bool) and value == value
        if not ok or value < low or (real and value <= low):
            need = "a number above 0" if real else ("an integer >= 0" if low == 0 else "an integer >= 1")
            raise ConfigError(f"search.{key} must be {need} ({meaning}), got {value!r}")

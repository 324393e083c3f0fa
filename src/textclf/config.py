"""JSON configs under ``config/`` with ``--config PATH`` and dotted ``--set key.sub=value`` overrides.

A family's default file (``config/<family>.json``) is the schema: every key a user
sets must exist there (an unknown key is an error listing the valid keys) and keep
its type. A dict whose default is empty (``{}``) is free-form.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textclf.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]


def config_dir() -> Path:
    """Where the default configs live: ``$TEXTCLF_CONFIG_DIR``, the repository's ``config/``, or the copy in the wheel."""
    env = os.environ.get("TEXTCLF_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT / "config", PACKAGE_DIR / "_config"]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError(f"no config directory found (looked in {', '.join(map(str, candidates))})")


def read_json(path: str | Path) -> dict:
    """Read a JSON object from ``path`` with errors that name the file and position."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a config must be a JSON object")
    return obj


def default_config(family: str) -> dict:
    """The default config of a registered model family (``config/<family>.json`` for the built-in ones)."""
    from textclf.registry import get_family

    return get_family(family).default_config()


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
    """Deep-merge ``update`` into a copy of ``base``; unknown keys and wrong types raise ConfigError."""
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
            out[k] = _check_type(full, out[k], v)
    return out


def parse_value(raw: str) -> Any:
    """Parse an override value as JSON, falling back to the plain string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_override(cfg: dict, assignment: str) -> dict:
    """Apply one ``key.sub=value`` override (value parsed as JSON, else string)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    update: Any = parse_value(raw)
    for part in reversed(parts):
        update = {part: update}
    return merge(cfg, update, source=f"--set {key}")


def load_config(family: str, config_path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """The effective config: family defaults, then ``config_path`` (partial or full), then ``--set`` overrides."""
    cfg = default_config(family)
    if config_path:
        cfg = merge(cfg, read_json(config_path), source=str(config_path))
    for assignment in overrides:
        cfg = apply_override(cfg, assignment)
    return cfg

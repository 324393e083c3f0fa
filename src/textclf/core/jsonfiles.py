"""Where textclf's files are (the package, the repository's ``config/``) and reading a JSON config file.

Kept apart from :mod:`textclf.core.config` so the registry can find a family's default config
without importing the config machinery (which looks families up in the registry).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from textclf.core.errors import ConfigError

#: the ``textclf`` package folder (``src/textclf`` in a checkout)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
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

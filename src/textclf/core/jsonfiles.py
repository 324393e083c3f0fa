"""Where textclf's files are (the package, the user's ``config/`` folders) and reading a JSON config file.

Each family's default config ships inside its package (``families/<family>/config.json``); a
``config/<family>.json`` in a *config folder* (:func:`config_dirs`) is the user's override, merged
over that default. Kept apart from :mod:`textclf.core.config` so the registry can find both
without importing the config machinery (which looks families up in the registry).
"""

from __future__ import annotations

import json
import os
from importlib.resources.abc import Traversable
from pathlib import Path

from textclf.core.errors import ConfigError

#: the ``textclf`` package folder (``src/textclf`` in a checkout)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parents[1]
#: the environment variable naming the one folder searched for ``<family>.json`` overrides
CONFIG_DIR_ENV = "TEXTCLF_CONFIG_DIR"


def is_checkout() -> bool:
    """Whether textclf runs from a source checkout (``src/textclf`` under a folder holding ``pyproject.toml``)."""
    return PACKAGE_DIR.parent.name == "src" and (REPO_ROOT / "pyproject.toml").is_file()


def config_dirs() -> list[Path]:
    """The folders searched for a user's ``<family>.json`` override, first match wins.

    ``$TEXTCLF_CONFIG_DIR`` alone when it is set (pointing it at an empty folder turns the overrides
    off); otherwise ``./config/`` of the working directory (a wheel install, a container's
    ``/app/config``), then the repository's ``config/`` in a source checkout.
    """
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return [Path(env)]
    dirs = [Path.cwd() / "config"]
    if is_checkout() and (REPO_ROOT / "config").resolve() != dirs[0].resolve():
        dirs.append(REPO_ROOT / "config")
    return dirs


def user_config(name: str) -> Path | None:
    """The user's override ``<name>.json`` from the first config folder holding one (:func:`config_dirs`), or None."""
    for folder in config_dirs():
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    return None


def read_json(path: str | Path | Traversable) -> dict:
    """Read a JSON object from ``path`` (a file, or a package resource) with errors that name the file and position."""
    path = path if isinstance(path, Traversable) else Path(path)
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

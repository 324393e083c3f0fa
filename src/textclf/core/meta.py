"""The ``meta.json`` that makes a model directory describe itself."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path

from textclf.core.atomic import atomic_write_json
from textclf.core.config import REPO_ROOT
from textclf.core.errors import ModelError

META_FILE = "meta.json"
BASE_PACKAGES = ("textclf", "numpy", "optuna", "click")


def library_versions(packages: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the base packages plus ``packages`` (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for name in BASE_PACKAGES + tuple(packages):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes), or None."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_meta(kind: str, labels: list[str], config: dict, metrics: dict, data_sha256: str,
               packages: tuple[str, ...] = (), **extra) -> dict:
    """Assemble meta.json content: kind, labels, effective config, metrics, data hash, versions, commit, time."""
    meta = {
        "kind": kind,
        "labels": list(labels),
        "config": config,
        "metrics": metrics,
        "data_sha256": data_sha256,
        "versions": library_versions(packages),
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    meta.update(extra)
    return meta


def write_meta(model_dir: str | Path, meta: dict, card: bool = True) -> Path:
    """Write ``meta.json`` atomically into ``model_dir``; written last, it marks the directory complete.

    Then ``MODEL_CARD.md`` is written from it (:mod:`textclf.core.card`; ``card=False`` skips it), so
    every writer of meta.json (training, ensembles, thresholds, calibration) keeps the card in step.
    """
    path = Path(model_dir) / META_FILE
    atomic_write_json(path, meta)
    if card:
        from textclf.core.card import write_card

        write_card(model_dir, meta)
    return path


def read_meta(model_dir: str | Path) -> dict:
    """Read a model directory's ``meta.json``."""
    import json

    path = Path(model_dir) / META_FILE
    if not Path(model_dir).exists():
        raise ModelError(f"{model_dir}: model directory not found")
    if not path.exists():
        raise ModelError(f"{model_dir}: no {META_FILE}; not a textclf model directory (or training did not finish)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None

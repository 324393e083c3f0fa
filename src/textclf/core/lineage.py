"""Data lineage: a file written from another one (``textclf audit apply``) names its parent in a sidecar.

``train.v2.csv`` gets ``train.v2.csv.lineage.json``: the parent file and its SHA-256, this file's
SHA-256, and how many rows were relabelled, dropped and kept. The experiment store records the
sidecar's summary with every run trained on the file (:mod:`textclf.services.tracking`), so
``textclf runs diff`` shows that the data changed, from which parent and by how many rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from textclf.core.atomic import atomic_write_json
from textclf.core.integrity import sha256_file

LINEAGE_SUFFIX = ".lineage.json"


def lineage_path(path: str | Path) -> Path:
    """The sidecar of data file ``path`` (``train.v2.csv`` -> ``train.v2.csv.lineage.json``)."""
    path = Path(path)
    return path.with_name(path.name + LINEAGE_SUFFIX)


def write_lineage(path: str | Path, record: dict) -> None:
    """Write ``record`` (parent, parent_sha256, sha256, rows_*) as the sidecar of ``path``, atomically."""
    atomic_write_json(lineage_path(path), record)


def read_lineage(path: str | Path) -> dict | None:
    """The sidecar of ``path`` when it exists and still describes the file (same SHA-256), else None."""
    side = lineage_path(path)
    if not side.is_file() or not Path(path).is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("sha256") != sha256_file(path):
        return None  # the file was edited after `audit apply`: the sidecar no longer describes it
    return record


def lineage_summary(record: dict) -> str:
    """One line: ``from train.csv (sha 1a2b3c4d): 7 of 200 rows changed (5 relabelled, 2 dropped)``."""
    changed = int(record.get("relabelled", 0)) + int(record.get("dropped", 0))
    return (f"from {Path(record.get('parent', '?')).name} (sha {str(record.get('parent_sha256', ''))[:8]}): "
            f"{changed} of {record.get('rows_before', '?')} rows changed ({record.get('relabelled', 0)} relabelled, "
            f"{record.get('dropped', 0)} dropped)")

"""``textclf audit``: out-of-fold probabilities of each family -> cleanlab's ranking -> issues.csv, relabel.csv, audit.html."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textclf.core.config import load_config
from textclf.core.data import Dataset, read_labelled, sha256_files
from textclf.services.audit.oof import family_oof, family_overrides, fold_indices
from textclf.services.audit.outputs import (
    AUDIT_JSON,
    ISSUES_FILE,
    PAGE_FILE,
    RELABEL_FILE,
    review_rows,
    write_audit_json,
    write_issues,
    write_relabel,
)
from textclf.services.audit.page import write_page
from textclf.services.audit.rank import Issue, find_issues

log = logging.getLogger(__name__)
DEFAULT_FAMILIES = ("fasttext", "embeddings")


@dataclass
class AuditResult:
    """What an audit found: the data, its labels, each family's and the averaged out-of-fold probabilities, the issues."""

    data: Dataset
    labels: list[str]
    family_proba: dict[str, np.ndarray]
    proba: np.ndarray
    issues: list[Issue]
    rows: list[dict]
    weights: dict[str, float]


def read_data(data_path: str | Path, families: Sequence[str], overrides: Sequence[str]) -> Dataset:
    """The data file, read with the first family's ``data`` block (``--set data.text_column=...`` applies)."""
    cfg = load_config(families[0], None, family_overrides(families[0], overrides))
    d = cfg.get("data", {})
    return read_labelled(data_path, d.get("format"), d.get("text_column", "text"), d.get("label_column", "label"),
                         reader=d.get("reader"), task=d.get("task") or "auto", label_separator=d.get("label_separator"))


@dataclass
class QueueSpec:
    """Where an audit's fold fits run as queue tasks (``textclf audit --queue``): storage, queue name, whether to work too."""

    storage: str
    name: str | None = None
    work: bool = True
    timeout: float | None = None

    def queue_name(self, data_sha256: str) -> str:
        """The queue: the given name, else ``audit-<first 12 hex digits of the data's SHA-256>``."""
        return self.name or f"audit-{data_sha256[:12]}"


def audit_data(ds: Dataset, families: Sequence[str], folds: int = 5, seed: int = 13, overrides: Sequence[str] = (),
               data_sha256: str = "", memo_dir: Path | None = None, queue: QueueSpec | None = None) -> AuditResult:
    """Audit dataset ``ds`` in memory (the benchmark calls this directly): probabilities per family, issues, review rows.

    ``queue``: fit the folds as run-queue tasks (:mod:`.queued`) in the folder above ``memo_dir``.
    """
    labels = ds.label_set
    parts = fold_indices(ds, folds, seed)
    if queue is None or memo_dir is None:
        family_proba = {name: family_oof(name, ds, labels, parts, data_sha256, seed, overrides, memo_dir) for name in families}
    else:
        family_proba = queued_family_proba(ds, labels, families, parts, seed, overrides, data_sha256, memo_dir, queue)
    issues, proba, weights = find_issues(ds, labels, family_proba)
    return AuditResult(ds, labels, family_proba, proba, issues, review_rows(ds, issues, list(families)), weights)


def queued_family_proba(ds: Dataset, labels: list[str], families: Sequence[str], parts, seed: int, overrides: Sequence[str],
                        data_sha256: str, memo_dir: Path, queue: QueueSpec) -> dict[str, np.ndarray]:
    """Each family's out-of-fold probabilities: from the memo, else from fold fits run as tasks of ``queue``."""
    from textclf.services.audit.oof import family_config, memo_path, read_memo, write_memo
    from textclf.services.audit.queued import queued_oof

    memos = {name: memo_path(memo_dir, name, family_config(name, seed, overrides), data_sha256, len(parts), seed)
             for name in families}
    out = {name: read_memo(memos[name], (len(ds), len(labels))) for name in families}
    missing = [name for name in families if out[name] is None]
    if missing:
        fitted = queued_oof(missing, ds, labels, parts, seed, overrides, memo_dir.parent, queue.storage,
                            queue.queue_name(data_sha256), queue.work, timeout=queue.timeout)
        for name, proba in fitted.items():
            write_memo(memos[name], proba, np.ones(len(parts), dtype=bool))
            out[name] = proba
    return out


def run_audit(data_path: str | Path, output_dir: str | Path, families: Sequence[str] = DEFAULT_FAMILIES, folds: int = 5,
              seed: int = 13, overrides: Sequence[str] = (), queue: QueueSpec | None = None) -> AuditResult:
    """Audit ``data_path`` and write ``output_dir``/{issues.csv, relabel.csv, audit.json, audit.html}.

    ``relabel.csv`` keeps the decisions of an earlier audit of the same data for rows still suspect.
    """
    from textclf.services.audit.outputs import read_relabel

    families = list(dict.fromkeys(families or DEFAULT_FAMILIES))
    out = Path(output_dir)
    ds = read_data(data_path, families, overrides)
    sha = sha256_files([data_path])
    result = audit_data(ds, families, folds, seed, overrides, sha, (out / "oof").resolve(), queue)
    old = out / AUDIT_JSON
    if (out / RELABEL_FILE).is_file() and old.is_file():
        import json

        if json.loads(old.read_text(encoding="utf-8")).get("data_sha256") == sha:
            earlier = {r["row"]: r for r in read_relabel(out / RELABEL_FILE)}
            for row in result.rows:
                if row["row"] in earlier:
                    row["decision"], row["new_label"] = earlier[row["row"]]["decision"], earlier[row["row"]]["new_label"]
    summary = {"data_path": str(Path(data_path).resolve()), "data_sha256": sha, "task": ds.task, "labels": result.labels,
               "families": families, "weights": result.weights, "folds": folds, "seed": seed, "n_rows": len(ds),
               "queue": None if queue is None else {"storage": queue.storage, "name": queue.queue_name(sha)},
               "n_issues": len(result.issues),
               "n_suspect_rows": len(result.rows),
               "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    write_issues(out / ISSUES_FILE, ds, result.issues, families)
    write_relabel(out / RELABEL_FILE, result.rows)
    write_audit_json(out / AUDIT_JSON, summary, result.rows)
    write_page(out / PAGE_FILE, summary, result.rows)
    return result

"""``textclf audit apply``: a new version of the data with the reviewed decisions, and its lineage sidecar.

The old file is never touched. Every decided row of ``relabel.csv`` is checked against the data
first (the row exists, its text is the one reviewed, a new label is a known one) and any problem
is one line naming ``relabel.csv:LINE``; only then is the new file written (atomically), followed
by ``<output>.lineage.json`` (:mod:`textclf.core.lineage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textclf.core.data import Dataset, write_labelled
from textclf.core.errors import ConfigError, DataError
from textclf.core.integrity import sha256_file
from textclf.core.lineage import write_lineage
from textclf.services.audit.outputs import read_relabel


@dataclass
class Applied:
    """What apply did: rows before/after, how many relabelled, dropped."""

    rows_before: int
    rows_after: int
    relabelled: int
    dropped: int


def new_label(ds: Dataset, value: str, path: Path, line: int, separator: str = "|"):
    """The checked new label of a row (a label set for multi-label data); unknown labels are a DataError."""
    known = set(ds.label_set)
    wanted = [v.strip() for v in value.split(separator)] if ds.multilabel else [value]
    wanted = [v for v in wanted if v] if ds.multilabel else wanted
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise DataError(path, f"new_label {unknown[0]!r} is not a label of the data ({', '.join(sorted(known))})", line)
    return tuple(sorted(set(wanted))) if ds.multilabel else wanted[0]


def apply_decisions(ds: Dataset, relabel_path: str | Path) -> tuple[Dataset, Applied]:
    """``ds`` with the decisions of ``relabel_path`` applied (drop, relabel; keep and undecided rows unchanged)."""
    path = Path(relabel_path)
    labels, drop = list(ds.labels), set()
    relabelled = 0
    for r in read_relabel(path):
        line, i = r["_line"], r["row"] - 1
        if i >= len(ds):
            raise DataError(path, f"row {r['row']} is past the end of the data ({len(ds)} rows)", line)
        if "text" in r and r["text"] is not None and r["text"] != ds.texts[i]:
            raise DataError(path, f"row {r['row']}: the text differs from the data's row {r['row']} "
                            "(was the relabel file made from another file?)", line)
        if r["decision"] == "drop":
            drop.add(i)
        elif r["decision"] == "relabel":
            value = r["new_label"] or (r.get("suggested") or "").strip()
            if not value and not ds.multilabel:
                raise DataError(path, f"row {r['row']}: decision relabel needs a new_label (or a suggested label)", line)
            label = new_label(ds, value, path, line)
            if label != labels[i]:
                labels[i] = label
                relabelled += 1
    keep = [i for i in range(len(ds)) if i not in drop]
    out = Dataset([ds.texts[i] for i in keep], [labels[i] for i in keep], ds.path,
                  [ds.line_numbers[i] for i in keep] if ds.line_numbers else [], ds.task)
    return out, Applied(len(ds), len(out), relabelled, len(drop))


def apply_file(relabel_path: str | Path, data_path: str | Path, output_path: str | Path, ds: Dataset) -> Applied:
    """Write ``output_path`` (``ds`` = ``data_path`` read, decisions applied) and its lineage sidecar; never touch ``data_path``."""
    if Path(output_path).resolve() == Path(data_path).resolve():
        raise ConfigError(f"--output_path {output_path} is the data file itself; audit apply writes a new version beside it")
    new, applied = apply_decisions(ds, relabel_path)
    if len({*(label for labels in new.labels for label in (labels if new.multilabel else (labels,)))}) < 2:
        raise DataError(relabel_path, "after these decisions the data would hold fewer than 2 classes")
    write_labelled(output_path, new)
    write_lineage(output_path, {
        "parent": str(Path(data_path).resolve()), "parent_sha256": sha256_file(data_path),
        "path": str(Path(output_path).resolve()), "sha256": sha256_file(output_path),
        "relabel_file": str(Path(relabel_path).resolve()), "relabel_sha256": sha256_file(relabel_path),
        "rows_before": applied.rows_before, "rows_after": applied.rows_after,
        "relabelled": applied.relabelled, "dropped": applied.dropped})
    return applied

"""The audit directory's files: ``issues.csv``, ``relabel.csv``, ``audit.json`` (all written atomically).

``relabel.csv`` has one row per suspect row of the data, to edit by hand, on the review page or
through ``textclf serve-audit``: ``row`` (1-based data row), ``text``, ``given``, ``suggested``,
``decision`` (``keep``, ``relabel``, ``drop``; empty: not decided, kept) and ``new_label``
(for ``relabel``; empty: the suggestion). Multi-label sets are written joined with ``|``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from textclf.core.atomic import atomic_open, atomic_write_json
from textclf.core.data import Dataset
from textclf.core.errors import DataError
from textclf.services.audit.rank import Issue

ISSUES_FILE, RELABEL_FILE, AUDIT_JSON, PAGE_FILE = "issues.csv", "relabel.csv", "audit.json", "audit.html"
RELABEL_COLUMNS = ("row", "text", "given", "suggested", "decision", "new_label")
DECISIONS = ("keep", "relabel", "drop")


def write_issues(path: Path, ds: Dataset, issues: Sequence[Issue], families: Sequence[str]) -> None:
    """``issues.csv``: one line per issue, most suspect first; each family's out-of-fold vote in ``vote_<family>``."""
    with atomic_open(path, "w") as fh:
        out = csv.writer(fh)
        out.writerow(["rank", "row", "line", "issue", "label", "text", "given", "suggested", "self_confidence",
                      *[f"vote_{name}" for name in families], "duplicate_rows"])
        for rank, issue in enumerate(issues, 1):
            line = ds.line_numbers[issue.row] if ds.line_numbers else ""
            out.writerow([rank, issue.row + 1, line, issue.kind, issue.label, ds.texts[issue.row], issue.given,
                          issue.suggested, f"{issue.self_confidence:.6f}", *[issue.votes.get(n, "") for n in families],
                          " ".join(str(j + 1) for j in issue.duplicates)])


def review_rows(ds: Dataset, issues: Sequence[Issue], families: Sequence[str]) -> list[dict]:
    """One entry per suspect row (its most suspect issue first; multi-label: every flagged label toggled)."""
    rows: dict[int, dict] = {}
    for issue in issues:
        entry = rows.get(issue.row)
        if entry is None:
            entry = rows[issue.row] = {
                "row": issue.row + 1, "line": ds.line_numbers[issue.row] if ds.line_numbers else None,
                "text": ds.texts[issue.row], "given": issue.given, "suggested": issue.suggested,
                "self_confidence": round(issue.self_confidence, 6), "issues": [], "labels": [],
                "votes": {n: issue.votes.get(n, "") for n in families}, "decision": "", "new_label": ""}
        elif issue.label:  # another label of the same multi-label row: toggle it too
            now = set(filter(None, entry["suggested"].split("|")))
            now ^= {issue.label}
            entry["suggested"] = "|".join(sorted(now))
        if issue.kind not in entry["issues"]:
            entry["issues"].append(issue.kind)
        if issue.label:
            entry["labels"].append(issue.label)
    for entry in rows.values():
        entry["agree"] = sum(vote == entry["suggested"] for vote in entry["votes"].values())
    return list(rows.values())


def write_relabel(path: Path, rows: Iterable[dict]) -> None:
    """``relabel.csv`` from review rows (their ``decision``/``new_label`` as they stand)."""
    with atomic_open(path, "w") as fh:
        out = csv.writer(fh)
        out.writerow(RELABEL_COLUMNS)
        for r in rows:
            out.writerow([r["row"], r["text"], r["given"], r["suggested"], r.get("decision") or "", r.get("new_label") or ""])


def parse_relabel(text: str, path: str | Path) -> list[dict]:
    """The rows of a relabel.csv's ``text``; a missing column or a bad row is a DataError naming ``path`` and line.

    Checked here: the columns, ``row`` a positive integer (each at most once), ``decision`` one of
    keep/relabel/drop/empty. The apply step checks the rest against the data.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in ("row", "decision", "new_label") if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; a relabel file has columns {','.join(RELABEL_COLUMNS)}", 1)
    rows, seen = [], {}
    for record in reader:
        line = reader.line_num
        raw = (record.get("row") or "").strip()
        if not raw.isdigit() or int(raw) < 1:
            raise DataError(path, f"row must be a positive integer (a data row number), found {raw!r}", line)
        decision = (record.get("decision") or "").strip().lower()
        if decision not in ("", *DECISIONS):
            raise DataError(path, f"decision must be one of keep, relabel, drop (or empty), found {record.get('decision')!r}", line)
        if int(raw) in seen:
            raise DataError(path, f"row {raw} appears twice (first on line {seen[int(raw)]})", line)
        seen[int(raw)] = line
        rows.append({**record, "row": int(raw), "decision": decision, "new_label": (record.get("new_label") or "").strip(),
                     "_line": line})
    return rows


def read_relabel(path: str | Path) -> list[dict]:
    """:func:`parse_relabel` of a file (a missing or undecodable file: DataError)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    return parse_relabel(text, path)


def write_audit_json(path: Path, summary: dict, rows: list[dict]) -> None:
    """``audit.json``: the audit's settings and summary plus the review rows (what the review page shows)."""
    atomic_write_json(path, {**summary, "rows": rows})

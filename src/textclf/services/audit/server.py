"""``textclf serve-audit AUDIT_DIR``: the review page on a small local server that saves decisions to relabel.csv.

Routes: ``GET /`` (the page, with the decisions in ``relabel.csv`` now), ``POST /api/decisions``
(a JSON list of ``{"row", "decision", "new_label"}``; each saved at once, the file replaced
atomically under a lock), ``GET /api/relabel.csv``. It binds to loopback by default.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pydantic import BaseModel

from textclf.core.errors import ConfigError
from textclf.services.audit.outputs import AUDIT_JSON, DECISIONS, RELABEL_FILE, read_relabel, write_relabel
from textclf.services.audit.page import render_page


class Decision(BaseModel):
    """One decision sent by the page: the data row, keep/relabel/drop (empty: undecided) and the new label."""

    row: int
    decision: str = ""
    new_label: str = ""


def load_audit(audit_dir: str | Path) -> tuple[dict, list[dict]]:
    """``audit.json``'s summary and review rows with the decisions of ``relabel.csv`` (one-line error when not an audit dir)."""
    root = Path(audit_dir)
    if not (root / AUDIT_JSON).is_file():
        raise ConfigError(f"{root}: not an audit directory (no {AUDIT_JSON}; run textclf audit --output_dir {root})")
    stored = json.loads((root / AUDIT_JSON).read_text(encoding="utf-8"))
    rows = stored.pop("rows")
    if (root / RELABEL_FILE).is_file():
        decided = {r["row"]: r for r in read_relabel(root / RELABEL_FILE)}
        for row in rows:
            if row["row"] in decided:
                row["decision"], row["new_label"] = decided[row["row"]]["decision"], decided[row["row"]]["new_label"]
    return stored, rows


def make_app(audit_dir: str | Path):
    """The FastAPI app serving ``audit_dir``."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    root = Path(audit_dir)
    load_audit(root)  # fail now, not on the first request
    lock = threading.Lock()
    app = FastAPI(title="textclf label audit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    @app.get("/audit.html", response_class=HTMLResponse)
    def page() -> str:
        summary, rows = load_audit(root)
        return render_page(summary, rows, server=True)

    @app.post("/api/decisions")
    def decisions(items: list[Decision]) -> dict:
        with lock:
            summary, rows = load_audit(root)
            by_row = {r["row"]: r for r in rows}
            for item in items:
                if item.row not in by_row:
                    raise HTTPException(422, f"row {item.row} is not a suspect of this audit")
                if item.decision not in ("", *DECISIONS):
                    raise HTTPException(422, f"decision must be one of keep, relabel, drop (or empty), got {item.decision!r}")
                if item.new_label and summary.get("task") != "multilabel" and item.new_label not in summary.get("labels", []):
                    raise HTTPException(422, f"new_label {item.new_label!r} is not a label of the data")
                by_row[item.row]["decision"], by_row[item.row]["new_label"] = item.decision, item.new_label.strip()
            write_relabel(root / RELABEL_FILE, rows)
        return {"saved": len(items), "decided": sum(bool(r["decision"]) for r in rows)}

    @app.get("/api/relabel.csv")
    def relabel() -> FileResponse:
        return FileResponse(root / RELABEL_FILE, media_type="text/csv", filename=RELABEL_FILE)

    return app

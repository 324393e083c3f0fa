"""``audit.html``: the review page, one self-contained file (inline CSS and JS, the data inline, no CDN).

Opened from disk it works with no server: sort and filter the suspects (self-confidence, class,
family vote), mark each keep / relabel / drop, then download ``relabel.csv`` or copy it. Served by
``textclf serve-audit`` (``server=True``) it also saves every decision straight to the audit
directory's ``relabel.csv`` (``POST api/decisions``).
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from textclf.core.atomic import atomic_write_text


def asset(name: str) -> str:
    """A file of the page's own CSS/JS (``assets/``, shipped in the package), inlined into the page."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_page(summary: dict, rows: list[dict], server: bool = False) -> str:
    """The review page's HTML for ``rows`` (review rows, see :func:`textclf.services.audit.outputs.review_rows`)."""
    data = {"rows": rows, "labels": summary.get("labels", []), "families": summary.get("families", []),
            "task": summary.get("task", "multiclass"), "server": server}
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    labels = summary.get("labels", [])
    options = "".join(f'<option value="{html.escape(label)}">{html.escape(label)}</option>' for label in labels)
    datalist = "".join(f'<option value="{html.escape(label)}">' for label in labels)
    head = (f"{html.escape(Path(str(summary.get('data_path', ''))).name)}: {summary.get('n_rows', '?')} rows, "
            f"{len(rows)} suspect rows; families {html.escape(', '.join(summary.get('families', [])))}, "
            f"{summary.get('folds', '?')}-fold out-of-fold probabilities, ranked by cleanlab (self-confidence)")
    save_note = "decisions are saved to relabel.csv as you mark them" if server else "export relabel.csv when done"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>textclf label audit</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{asset("audit.css")}</style></head>
<body><h1>Label audit</h1><div class="meta">{head}. <span id="mode">{save_note}</span></div>
<div class="bar">
 <label>self-confidence &le; <input id="max-conf" type="number" min="0" max="1" step="0.05" value="1" style="width:5em"></label>
 <label>class <select id="class"><option value="">any</option>{options}</select></label>
 <label>family vote <select id="vote"><option value="">any</option><option value="all">all agree with the suggestion</option>
  <option value="some">split</option><option value="none">none agree</option>
  <option value="undecided">not decided yet</option></select></label>
 <label>text <input id="search" type="search" placeholder="contains..."></label>
 <button id="download" type="button">Download relabel.csv</button><button id="copy" type="button">Copy CSV</button>
 <span id="count"></span> <span id="status"></span>
</div>
<textarea id="csv-out" hidden rows="6" style="width:100%"></textarea>
<datalist id="label-list">{datalist}</datalist>
<table id="suspects"><thead><tr><th data-key="row">row</th><th data-key="text">text</th><th data-key="given">given</th>
<th data-key="suggested">suggested</th><th data-key="self_confidence">self-confidence</th><th data-key="agree">family votes</th>
<th data-key="issues">issue</th><th>decision</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="audit-data">{blob}</script>
<script>{asset("audit.js")}</script>
</body></html>
"""


def write_page(path: str | Path, summary: dict, rows: list[dict]) -> None:
    """Write ``audit.html`` (the offline page) atomically."""
    atomic_write_text(path, render_page(summary, rows))

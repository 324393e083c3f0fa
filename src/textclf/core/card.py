"""``MODEL_CARD.md``: a model directory described for people, rendered from its ``meta.json``.

Written next to ``meta.json`` every time meta.json is written (:func:`textclf.core.meta.write_meta`:
the end of every training of every family, ensembles, tuned thresholds, calibration), and again by
``textclf card M``. Everything in it comes from meta.json and the directory's files, so it never
disagrees with them:

* what and when: kind, task, labels, creation time, commit, the search;
* data: the split files, their SHA-256 and the label distribution (train counts from meta.json's
  ``data_stats``, valid/test from the per-class supports);
* metrics on valid and test with 95 % percentile bootstrap intervals
  (:mod:`textclf.core.bootstrap`, the leaderboard's; multi-class rows are rebuilt from the
  confusion matrix, multi-label models show the point scores);
* weak spots: the lowest-F1 classes and the most-confused pairs;
* calibration (meta.json's ``calibration`` block, when there is one), decision thresholds,
  training cost (fit and search time, model size) and library versions;
* two sections the user writes, *Intended use* and *Limitations*: the text between their
  ``<!-- textclf:begin NAME -->`` / ``<!-- textclf:end NAME -->`` markers is kept when the card
  is written again.

The card is not in meta.json's ``files`` block (it is regenerated and edited by hand; loading never
reads it), so editing it never breaks the integrity check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from textclf.core.atomic import atomic_write_text
from textclf.core.bootstrap import N_BOOT, SCIPY_MAX_ROWS, SEED, confusion_ci

CARD_FILE = "MODEL_CARD.md"
#: the sections the user fills in: marker name -> (heading, placeholder)
USER_SECTIONS = {
    "intended-use": ("Intended use", "_To fill in: what this model is for, who uses it, on which texts; "
                                     "what it must not be used for._"),
    "limitations": ("Limitations", "_To fill in: known failure modes, data it has not seen (languages, domains, "
                                   "periods), biases, and what a reviewer should check._"),
}
WEAK_CLASSES = 3
CONFUSED_PAIRS = 5
_MARKED = re.compile(r"<!-- textclf:begin ([\w-]+) -->\n?(.*?)\n?<!-- textclf:end \1 -->", re.S)


def user_sections(text: str) -> dict[str, str]:
    """The text between each ``<!-- textclf:begin NAME -->`` / ``<!-- textclf:end NAME -->`` pair of a card."""
    return {name: body.strip("\n") for name, body in _MARKED.findall(text)}


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _ci(interval: tuple[float, float]) -> str:
    low, high = interval
    return "" if low != low else f" [{low:.3f}, {high:.3f}]"  # nan: no interval


def metrics_section(meta: dict) -> list[str]:
    """The metrics table of every split in meta.json, with bootstrap CIs (multi-class)."""
    metrics = meta.get("metrics") or {}
    data = meta.get("data") or {}
    if not metrics:
        return ["No metrics recorded."]
    if meta.get("task") == "multilabel":
        keys = ["micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"]
        rows = [[split, m.get("n"), *(m.get(k) for k in keys)] for split, m in metrics.items() if isinstance(m, dict)]
        return [*_table(["split", "texts", *keys], rows), "",
                "Point scores (a multi-label card has no interval: meta.json keeps no per-text counts; "
                "`textclf leaderboard` gives micro-F1 with its bootstrap CI)."]
    rows = []
    for split, m in metrics.items():
        if not isinstance(m, dict):
            continue
        matrix, labels = m.get("confusion_matrix"), m.get("labels") or list(m.get("per_class") or {})
        ci = confusion_ci(matrix, labels) if matrix and labels else {}
        acc, f1 = (_ci(ci[key]) if key in ci else "" for key in ("accuracy", "macro_f1"))
        where = data.get(split)
        rows.append([f"{split}" + (f" (`{Path(where).name}`)" if isinstance(where, str) else ""), m.get("n"),
                     f"{_fmt(m.get('accuracy'))}{acc}", f"{_fmt(m.get('macro_f1'))}{f1}",
                     m.get("macro_precision"), m.get("macro_recall"), m.get("weighted_f1")])
    return [*_table(["split", "texts", "accuracy [95 % CI]", "macro-F1 [95 % CI]", "macro precision", "macro recall",
                     "weighted F1"], rows), "",
            f"95 % CI: percentile bootstrap over the rows ({N_BOOT} resamples, seed {SEED}), rows rebuilt from the "
            f"split's confusion matrix: the leaderboard's `scipy.stats.bootstrap` up to {SCIPY_MAX_ROWS:,} rows, "
            "multinomial draws over the matrix's cells above."]


def weak_spots(meta: dict) -> list[str]:
    """The lowest-F1 classes and the most-confused (true, predicted) pairs on test, else valid."""
    metrics = meta.get("metrics") or {}
    split = "test" if isinstance(metrics.get("test"), dict) else "valid"
    m = metrics.get(split)
    if not isinstance(m, dict) or not m.get("per_class"):
        return ["No per-class metrics recorded."]
    per_class = m["per_class"]
    worst = sorted(per_class.items(), key=lambda kv: (kv[1].get("f1", 0.0), kv[0]))[:WEAK_CLASSES]
    out = [f"On **{split}**. Lowest F1:", "",
           *_table(["class", "F1", "precision", "recall", "support"],
                   [[c, s.get("f1"), s.get("precision"), s.get("recall"), s.get("support")] for c, s in worst])]
    matrix, labels = m.get("confusion_matrix"), m.get("labels")
    if matrix and labels:
        pairs = [(int(n), labels[i], labels[j], sum(matrix[i])) for i, row in enumerate(matrix)
                 for j, n in enumerate(row) if i != j and n]
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        out += ["", "Most confused (true -> predicted):", ""]
        out += (_table(["true", "predicted", "texts", "share of the true class"],
                       [[t, p, n, f"{n / total:.1%}"] for n, t, p, total in pairs[:CONFUSED_PAIRS]])
                if pairs else ["No confusions."])
    return out


def _block(value, indent: str = "") -> list[str]:
    """A meta.json block whose shape this module does not own (calibration, thresholds) as a nested list."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(v, dict | list) and v and not (isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)
                                                       and len(v) <= 12):
                out += [f"{indent}- {k}:", *_block(v, indent + "  ")]
            else:
                out.append(f"{indent}- {k}: {_fmt(v) if not isinstance(v, list) else ', '.join(_fmt(x) for x in v)}")
        return out
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in
                ([f"{indent}- {_fmt(v)}"] if not isinstance(v, dict | list) else [f"{indent}- [{i}]", *_block(v, indent + "  ")])]
    return [f"{indent}- {_fmt(value)}"]


def calibration_section(meta: dict) -> list[str]:
    """ECE before/after and the method, from meta.json's ``calibration`` block (when the model was calibrated)."""
    cal = meta.get("calibration")
    if not cal:
        return ["Not calibrated: the probabilities are the model's own (no `calibration` block in meta.json)."]
    return _block(cal)


def thresholds_section(meta: dict) -> list[str]:
    """The tuned decision thresholds (meta.json's ``thresholds``), or the plain argmax."""
    th = meta.get("thresholds")
    if not th:
        return ["None tuned: `predict` takes the most probable class"
                + (" (each label above 0.5)." if meta.get("task") == "multilabel" else ".")]
    after = th.get("valid_after")
    note = ("The metrics above are meta.json's, measured at training without these thresholds"
            + (f"; with them the valid {th.get('metric') or 'score'} is {_fmt(after)} (before: {_fmt(th.get('valid_before'))})."
               if after is not None else "."))
    return [*_block(th), "", note]


def _size(model_dir: Path, meta: dict) -> tuple[int, int]:
    files = meta.get("files") or {}
    recorded = sum(int(r.get("bytes") or 0) for r in files.values() if isinstance(r, dict))
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name != CARD_FILE) \
        if model_dir.is_dir() else 0
    return recorded, total


def cost_section(meta: dict, model_dir: Path) -> list[str]:
    """Training time (fit, search) and model size."""
    cost = meta.get("training_cost") or {}
    search = meta.get("search") or {}
    out = []
    if cost.get("fit_seconds") is not None:
        out.append(f"- final fit: {cost['fit_seconds']:.1f} s")
    if cost.get("search_seconds"):
        out.append(f"- search: {cost['search_seconds']:.1f} s over {search.get('n_trials', '?')} trials")
    if not out:
        out.append("- training time: not recorded (a model written before textclf recorded it, or an ensemble)")
    recorded, total = _size(model_dir, meta)
    if recorded:
        out.append(f"- model files: {recorded / 1e6:.2f} MB (the {len(meta.get('files') or {})} file(s) meta.json records)")
    out.append(f"- model directory: {total / 1e6:.2f} MB")
    return out


def data_section(meta: dict) -> list[str]:
    """The split files, their hashes and the label distribution."""
    data = meta.get("data") or {}
    stats = meta.get("data_stats") or {}
    metrics = meta.get("metrics") or {}
    out = [f"- data SHA-256 (all splits): `{meta.get('data_sha256')}`"]
    for split in ("train", "valid", "test"):
        where = data.get(split)
        if not where:
            continue
        digest = (stats.get(split) or {}).get("sha256")
        shown = ", ".join(where) if isinstance(where, list) else where
        out.append(f"- {split}: `{shown}`" + (f" (SHA-256 `{digest}`)" if digest else ""))
    counts = {split: (stats.get(split) or {}).get("labels") for split in ("train", "valid", "test")}
    for split in ("valid", "test"):
        if not counts[split] and isinstance(metrics.get(split), dict) and metrics[split].get("per_class"):
            counts[split] = {c: s.get("support") for c, s in metrics[split]["per_class"].items()}
    splits = [s for s in ("train", "valid", "test") if counts[s]]
    if splits:
        labels = list(meta.get("labels") or [])
        labels += sorted({c for s in splits for c in counts[s]} - set(labels))
        totals = {s: sum(int(v or 0) for v in counts[s].values()) for s in splits}
        rows = [[label, *(f"{int(counts[s].get(label) or 0)} ({int(counts[s].get(label) or 0) / max(totals[s], 1):.1%})"
                          for s in splits)] for label in labels]
        what = "texts carrying each label" if meta.get("task") == "multilabel" else "texts of each class"
        out += ["", f"Label distribution ({what}):", "", *_table(["label", *splits], rows)]
    return out


def cascade_lines(meta: dict) -> list[str]:
    """A cascade's members, its threshold and the share of texts its teacher answers (``textclf cascade``)."""
    roles = {m.get("role"): m for m in meta.get("members") or []}
    student, teacher = roles.get("student") or {}, roles.get("teacher") or {}
    info = meta.get("cascade") or {}
    valid = info.get("valid") or {}
    target = ", ".join(f"{k} {v}" for k, v in (info.get("target") or {}).items()) or "?"
    share = f"{valid['share_to_teacher']:.1%}" if isinstance(valid.get("share_to_teacher"), int | float) else "?"
    return [f"- cascade: the student `{student.get('kind')}` (`{student.get('path')}`) answers a text when its "
            f"confidence is >= tau {_fmt(meta.get('tau'))}, the teacher `{teacher.get('kind')}` (`{teacher.get('path')}`) "
            f"answers the rest",
            f"- tau chosen on valid for the target {target}: {share} of the valid texts go to the teacher; "
            f"valid macro-F1 {_fmt(valid.get('macro_f1'))} (student alone "
            f"{_fmt(valid.get('student_macro_f1'))}, teacher alone {_fmt(valid.get('teacher_macro_f1'))})"]


def distill_lines(record: dict) -> list[str]:
    """Where a distilled student's extra training rows came from (``textclf distill``'s meta.json block)."""
    teacher = record.get("teacher") or {}
    data = record.get("data") or {}
    sources = [f"{data.get('gold_rows', '?')} gold rows", f"{data.get('teacher_texts', '?')} texts labelled by the teacher"]
    if data.get("unlabeled"):
        sources.append(f"unlabelled text from `{data['unlabeled']}`")
    if data.get("augmented_texts"):
        sources.append(f"{data['augmented_texts']} synthetic variants of the train texts")
    return [f"- distilled from the teacher `{teacher.get('path')}` ({teacher.get('kind')}, meta.json SHA-256 "
            f"`{teacher.get('meta_sha256')}`), temperature {record.get('temperature')}: {record.get('method')}",
            f"- student training set: {', '.join(sources)}; {data.get('teacher_rows', '?')} teacher rows"]


def render_card(meta: dict, model_dir: str | Path, previous: str = "") -> str:
    """The Markdown of ``MODEL_CARD.md`` for a model directory's meta.json; ``previous`` (the old card) gives the user sections."""
    model_dir = Path(model_dir)
    kept = user_sections(previous)
    labels = list(meta.get("labels") or [])
    search = meta.get("search") or {}
    kind = meta.get("kind", "?")
    lines = [f"# Model card: {model_dir.resolve().name} ({kind})", "",
             "<!-- Written by textclf from meta.json; `textclf card MODEL_DIR` writes it again. Edit only between the "
             "textclf:begin/end markers: that text is kept. -->", "",
             "## Model", "",
             f"- family: `{kind}`, task: {meta.get('task') or 'multiclass'}",
             f"- labels ({len(labels)}): {', '.join(f'`{label}`' for label in labels)}",
             f"- trained: {meta.get('created', '?')}, textclf {(meta.get('versions') or {}).get('textclf', '?')}, "
             f"commit `{meta.get('git_commit')}`"]
    if search:
        lines.append(f"- search: {search.get('n_trials', '?')} trials of study `{search.get('study_name')}`, best "
                     f"{search.get('metric')} on valid {_fmt(search.get('best_value'))} (trial {search.get('best_trial')})")
    if meta.get("kind") == "cascade":
        lines += cascade_lines(meta)
    elif meta.get("members"):
        lines.append(f"- ensemble ({meta.get('method')}) of: "
                     + ", ".join(f"`{m.get('name')}` ({m.get('kind')}"
                               + (f", weight {_fmt(m['weight'], 3)}" if m.get("weight") is not None else "") + ")"
                               for m in meta["members"]))
    if meta.get("distill"):
        lines += distill_lines(meta["distill"])
    if meta.get("params"):
        lines.append(f"- parameters: `{json.dumps(meta['params'], sort_keys=True, default=str)}`")
    lines += ["", "## Data", "", *data_section(meta),
              "", "## Metrics", "", *metrics_section(meta),
              "", "## Weak spots", "", *weak_spots(meta),
              "", "## Calibration", "", *calibration_section(meta),
              "", "## Decision thresholds", "", *thresholds_section(meta),
              "", "## Training cost", "", *cost_section(meta, model_dir),
              "", "## Library versions", "",
              *_table(["library", "version"], [[k, v] for k, v in (meta.get("versions") or {}).items()])]
    for name, (heading, placeholder) in USER_SECTIONS.items():
        lines += ["", f"## {heading}", "", f"<!-- textclf:begin {name} -->", kept.get(name, placeholder),
                  f"<!-- textclf:end {name} -->"]
    return "\n".join(lines) + "\n"


def write_card(model_dir: str | Path, meta: dict) -> Path:
    """Write ``model_dir/MODEL_CARD.md`` from ``meta`` atomically, keeping the user sections of the card already there."""
    path = Path(model_dir) / CARD_FILE
    previous = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    atomic_write_text(path, render_card(meta, model_dir, previous))
    return path

"""``textclf report`` for a multi-label model: the gold label co-occurrence heat map, the worst texts, the page.

:func:`textclf.services.compare.report.write_report` writes into ``out_dir`` (the multi-class report's layout,
:mod:`.report`):

* ``per_class_metrics.png``: precision, recall and F-beta of every label (texts carrying it under
  each name), the multi-class report's bars;
* ``label_cooccurrence.png``: how many gold texts carry each pair of labels (the diagonal: each
  label's count), counts and normalised by the row label's count (the share of texts with the
  row label that also carry the column label);
* ``reliability.png``: the reliability diagram of every (text, label) probability, before and after
  the stored calibrator when there is one (the ECE of ``calibration_metrics`` for label sets);
* ``learning_curves.png`` and ``optuna_history.png`` as for multi-class models;
* ``report.html`` (micro/macro/samples F1 and F-beta, subset accuracy, Hamming loss, label
  cardinality, the per-label table with average precision, the figures, and the texts with the
  most wrong labels, where gold and predicted sets differ most) and ``report.json``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.services.compare.plots import (
    CSS,
    TEXT_CHARS,
    _num,
    _shorten,
    _tick_labels,
    figure,
    figure_sections,
    heatmap_panel,
    probability_text,
    save_figure,
)

FIGURES = ("per_class_metrics", "label_cooccurrence", "reliability", "learning_curves", "optuna_history")


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """``(L, L)`` counts of texts carrying both labels of a pair (diagonal: texts carrying the label) of an indicator matrix."""
    y = np.asarray(y, dtype=np.int64)
    return y.T @ y


def plot_cooccurrence(counts: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Label co-occurrence as counts and normalised by the row label's count, side by side."""
    k = len(labels)
    names, rotation = _tick_labels(labels)
    side = max(3.6, 0.62 * k + 1.8)
    fig, axes = figure(1, 2, figsize=(2 * side + 1.6, side + 0.9))
    diag = np.diag(counts).astype(float)[:, None]
    norm = np.divide(counts, diag, out=np.zeros_like(counts, dtype=float), where=diag > 0)
    for ax, values, sub, fmt in ((axes[0], counts, "texts carrying both", "d"),
                                 (axes[1], norm, "share of the row label's texts", ".2f")):
        heatmap_panel(fig, ax, values, names, rotation, fmt, "Purples", annotate=k <= 20)
        ax.set_title(sub)
    fig.suptitle(title or "Gold label co-occurrence", fontsize=13)
    return save_figure(fig, path)


def average_precisions(y: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Per-label average precision of ``proba`` (``sklearn.metrics.average_precision_score``); NaN for a label no text carries."""
    from sklearn.metrics import average_precision_score

    out = {}
    for j, label in enumerate(labels):
        out[label] = float(average_precision_score(y[:, j], proba[:, j])) if y[:, j].any() else float("nan")
    return out


def worst_texts(texts: Sequence[str], y: np.ndarray, pred: np.ndarray, proba: np.ndarray, labels: Sequence[str],
                line_numbers: Sequence[int], top: int) -> list[dict]:
    """The texts whose predicted set differs from the gold one, most wrong labels first (then the larger probability error)."""
    wrong = (y != pred).sum(axis=1)
    distance = np.abs(proba - y).sum(axis=1)
    rows = np.flatnonzero(wrong > 0)
    order = rows[np.lexsort((-distance[rows], -wrong[rows]))][:top]
    out = []
    for i in order:
        gold = [labels[j] for j in np.flatnonzero(y[i])]
        got = [labels[j] for j in np.flatnonzero(pred[i])]
        out.append({"row": int(i), "line": int(line_numbers[i]) if len(line_numbers) > i else None, "text": texts[i],
                    "true": sorted(gold), "predicted": sorted(got), "wrong_labels": int(wrong[i]),
                    "probabilities": {labels[j]: float(proba[i, j]) for j in np.argsort(-proba[i])[:4]}})
    return out


def page(summary: dict, metrics: dict, beta: float, figures: dict, skipped: dict, errors: list[dict], meta: dict,
          top: int, calibration_item: str = "") -> str:
    """The multi-label ``report.html``; ``calibration_item``: the ``<li>`` on calibration (``report.calibration_line``)."""
    from textclf.core.metrics import beta_name

    esc = html.escape
    fname = beta_name(beta)
    rows = []
    for label in metrics["labels"]:
        c = metrics["per_class"][label]
        ap = summary["average_precision"].get(label, float("nan"))
        rows.append(f"<tr><td>{esc(str(label))}</td>" + _num(c["precision"]) + _num(c["recall"]) + _num(c["f1"])
                    + _num(c[fname]) + f'<td class="num">{c["support"]}</td>'
                    + _num(summary["thresholds"][label], ".3f") + (_num(ap) if np.isfinite(ap) else "<td>-</td>") + "</tr>")
    per_label = ("<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>"
                 f"<th>F{beta:g}</th><th>texts</th><th>threshold</th><th>average precision</th></tr>" + "".join(rows)
                 + "</table>")
    titles = {"per_class_metrics": "Per-label metrics", "label_cooccurrence": "Label co-occurrence (gold)",
              "reliability": "Reliability diagram (per label)", "learning_curves": "Learning curves",
              "optuna_history": "Optuna search"}
    captions = {
        "per_class_metrics": f"Precision, recall and F{beta:g} of every label; the texts carrying it are under each name.",
        "label_cooccurrence": "Gold texts carrying both labels (diagonal: the label's texts), and that count divided by "
                              "the row label's texts.",
        "reliability": "Every (text, label) probability binned into 15 equal-width bins: the share of pairs in the bin "
                       "whose text carries the label against their mean probability (before and after the stored "
                       "calibrator, when there is one). The diagonal is perfect calibration.",
        "learning_curves": "Loss and validation metrics per epoch of the training run.",
        "optuna_history": "Valid score of every complete Optuna trial and the best so far.",
    }
    sections = figure_sections(FIGURES, titles, captions, figures, skipped)
    err_rows = []
    for i, e in enumerate(errors, 1):
        probs = probability_text(e["probabilities"])
        err_rows.append(f'<tr><td class="num">{i}</td><td class="num">{"" if e["line"] is None else e["line"]}</td>'
                        f"<td>{esc(', '.join(e['true']) or '(none)')}</td><td>{esc(', '.join(e['predicted']) or '(none)')}</td>"
                        f'<td class="num">{e["wrong_labels"]}</td><td>{probs}</td>'
                        f'<td class="text">{esc(_shorten(e["text"]))}</td></tr>')
    errors_html = ("<table><tr><th>#</th><th>line</th><th>true labels</th><th>predicted labels</th><th>wrong labels</th>"
                   "<th>top probabilities</th><th>text</th></tr>" + "".join(err_rows) + "</table>") if err_rows \
        else '<p class="note">Every text got exactly its labels.</p>'
    tuned = "tuned per label (textclf tune-thresholds)" if meta.get("thresholds") else "the global decision.threshold"
    keys = ("micro_f1", f"micro_{fname}", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss",
            "label_cardinality_gold", "label_cardinality_predicted")
    heads = ("micro-F1", f"micro-F{beta:g}", "macro-F1", "samples-F1", "subset accuracy", "Hamming loss",
             "labels/text (gold)", "labels/text (predicted)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>textclf report: {esc(summary['model_dir'])}</title><style>{CSS}</style></head>
<body>
<h1>Model report (multi-label)</h1>
<ul>
<li>Model: <code>{esc(summary['model_dir'])}</code> (kind {esc(summary['kind'])}, created {esc(str(meta.get('created', '?')))})</li>
<li>Data: <code>{esc(summary['data_path'])}</code>, {summary['n']} texts, {summary['errors']} with a wrong label set</li>
<li>Decision thresholds: {tuned}{'; at least one label a text' if summary['at_least_one'] else ''}</li>
{calibration_item}
</ul>
<table><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr>
<tr>{''.join(_num(metrics[k]) for k in keys)}</tr></table>
{per_label}
{''.join(sections)}
<h2>Texts with the most wrong labels</h2>
<p>Most wrong labels first (at most {top} shown); texts shortened to {TEXT_CHARS} characters.</p>
{errors_html}
</body></html>
"""

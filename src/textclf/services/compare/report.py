"""``textclf report``: one model on one labelled file as a self-contained HTML page with PNG figures.

:func:`write_report` writes into ``out_dir``:

* ``confusion_matrix.png``: counts and row-normalised (recall per true class) side by side;
* ``per_class_metrics.png``: precision, recall and F-beta per class (support under each name);
* ``pr_curves.png``: one-vs-rest precision-recall curve of every class from ``predict_proba``, its
  average precision, and the point where the model's ``predict`` operates;
* ``reliability.png``: the reliability diagram (top-label accuracy against confidence in 15 bins,
  with the ECE, and how many texts fall in each bin) of ``predict_proba``; for a calibrated model
  (:mod:`textclf.core.calibration`) before and after calibration side by side;
* ``learning_curves.png``: the run's per-epoch history when the model directory has one (lstm:
  ``history.json``; bert: ``meta.json`` ``training.stages[].history``; setfit: ``head.history``);
* ``optuna_history.png``: every trial's valid score and the best so far, when the run searched
  (``trials.csv``, else ``study.journal``);
* ``frontier.png``: the speed/quality frontier (predict docs/s on a log axis against macro-F1) of
  this model, its student and teacher when it is a cascade, and every ``frontier`` model directory,
  all on this file (:mod:`.frontier`);
* ``report.html`` referencing them (relative paths, inline CSS, no scripts or network), with the
  metrics, the per-class table and the worst misclassified examples (lowest probability of the
  true label first; texts HTML-escaped and shortened), and ``report.json`` with the numbers.

A multi-label model (``meta.json`` ``"task": "multilabel"``) gets its own page
(:mod:`.report_multilabel`): per-label precision/recall/F-beta bars, the gold label
co-occurrence heat map, the learning curves and search history, and the texts with the most
wrong labels.

A figure that does not apply (no history, no search) is skipped with a note on the page.
Figures are drawn with matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.services.compare.plots import (  # noqa: F401 - figure helpers, also used from here by the leaderboard
    CSS,
    DPI,
    TEXT_CHARS,
    _num,
    _shorten,
    _tick_labels,
    figure,
    figure_sections,
    heatmap_panel,
    probability_text,
    save_figure,
    short_label,
)

FIGURES = ("confusion_matrix", "per_class_metrics", "pr_curves", "reliability", "learning_curves", "optuna_history",
           "frontier")
TOP_ERRORS = 25


# --------------------------------------------------------------------------- figures
def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix as counts and row-normalised, side by side."""
    k = len(labels)
    names, rotation = _tick_labels(labels)
    side = max(3.6, 0.62 * k + 1.8)
    fig, axes = figure(1, 2, figsize=(2 * side + 1.6, side + 0.9))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    for ax, values, sub, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "row-normalised (recall per true class)", ".2f")):
        heatmap_panel(fig, ax, values, names, rotation, fmt, "Blues")
        ax.set_xlabel("predicted label")
        if ax is axes[0]:
            ax.set_ylabel("true label")
        ax.set_title(sub)
    fig.suptitle(title or "Confusion matrix", fontsize=13)
    return save_figure(fig, path)


def plot_per_class(metrics: dict, beta: float, path: str | Path, title: str = "") -> Path:
    """Grouped bars: precision, recall and F-beta of every class."""
    from textclf.core.metrics import beta_name

    labels = metrics["labels"]
    names, rotation = _tick_labels(labels)
    fname = beta_name(beta)
    per = metrics["per_class"]
    names = [f"{n}\n(n={per[label]['support']})" for n, label in zip(names, labels, strict=True)]
    k = len(labels)
    fig, ax = figure(figsize=(max(6.0, 1.3 * k + 2.5), 4.8))
    x = np.arange(k)
    width = 0.26
    series = (("precision", "precision", "#4C72B0"), ("recall", "recall", "#DD8452"), (fname, f"F{beta:g}", "#55A868"))
    for i, (key, name, color) in enumerate(series):
        values = [per[label][key] for label in labels]
        bars = ax.bar(x + (i - 1) * width, values, width, label=name, color=color)
        if k <= 8:
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x, names, rotation=rotation, ha="right" if rotation else "center")
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.set_xlabel("class (support)")
    ax.legend(loc="upper center", ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"Per-class precision, recall and F{beta:g}")
    return save_figure(fig, path)


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision, recall (thresholds from high to low score) and average precision, by ``sklearn.metrics``.

    ``precision_recall_curve``'s arrays reversed, so they start at (recall 0, precision 1), and
    ``average_precision_score``. No positive example: ``([1.], [0.], nan)`` (scikit-learn has no
    curve to draw then).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y_true = np.asarray(y_true, dtype=bool)
    if not y_true.any():
        return np.array([1.0]), np.array([0.0]), float("nan")
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return precision[::-1], recall[::-1], float(average_precision_score(y_true, scores))


def plot_pr_curves(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, labels: Sequence[str], path: str | Path,
                   title: str = "") -> tuple[Path, dict]:
    """One-vs-rest precision-recall curve per class with its average precision and the model's operating point."""
    k = len(labels)
    fig, ax = figure(figsize=(7.5, 5.6) if k <= 4 else (11.0, 5.6))
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    aps = {}
    for c in range(k):
        precision, recall, ap = pr_curve(y == c, proba[:, c])
        aps[labels[c]] = ap
        color = cmap(c % cmap.N)
        ax.step(recall, precision, where="post", color=color, lw=1.6,
                label=f"{short_label(labels[c])} (AP {ap:.3f})" if np.isfinite(ap) else f"{short_label(labels[c])} (no positives)")
        tp = np.sum((pred == c) & (y == c))
        if (y == c).any() and (pred == c).any():
            ax.plot([tp / (y == c).sum()], [tp / (pred == c).sum()], "o", color=color, markersize=7, markeredgecolor="black")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    legend = {"loc": "lower left"} if k <= 4 else {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)}
    ax.legend(fontsize=9, title="class (dot: the model's predict)", title_fontsize=9, **legend)
    ax.set_title(title or "Precision-recall curves (one vs rest)")
    return save_figure(fig, path), aps


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, accuracy (NaN where empty) and the number of rows (the ECE's bins)."""
    bins = np.minimum((np.asarray(confidence) * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, confidence, n_bins) / count
        acc = np.bincount(bins, np.asarray(correct, dtype=np.float64), n_bins) / count
    return conf, acc, count


def plot_reliability(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "",
                     multilabel: bool = False) -> Path:
    """Reliability diagrams side by side, one per ``name: (confidence, correct)``: accuracy against confidence, counts below.

    ``multilabel``: every (text, label) probability is one point, ``correct`` says whether the text
    carries the label (the ECE of :func:`textclf.core.metrics.calibration_metrics` for label sets).
    """
    from textclf.core.metrics import ECE_BINS, expected_calibration_error

    fig, axes = figure(2, len(panels), figsize=(5.2 * len(panels) + 0.6, 6.4), height_ratios=(3, 1))
    axes = np.asarray(axes).reshape(2, len(panels))
    edges = np.linspace(0, 1, ECE_BINS + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / ECE_BINS
    for col, (name, (confidence, correct)) in enumerate(panels.items()):
        top, bottom = axes[0, col], axes[1, col]
        conf, acc, count = reliability_bins(confidence, correct, ECE_BINS)
        filled = count > 0
        top.bar(centers[filled], acc[filled], width=width, color="#4C72B0", edgecolor="white",
                label="share with the label in bin" if multilabel else "accuracy in bin")
        top.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width, color="#DD8452", alpha=0.45,
                edgecolor="#DD8452", label="gap to mean confidence")
        top.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ece = expected_calibration_error(confidence, correct)
        adaptive = expected_calibration_error(confidence, correct, strategy="quantile")
        top.set_title(f"{name}: ECE {ece:.3f} (adaptive {adaptive:.3f})")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1.02)
        top.set_ylabel("share carrying the label" if multilabel else "accuracy")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers, count, width=width, color="#55A868", edgecolor="white")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("predicted probability of each (text, label) pair" if multilabel
                          else "confidence (predicted probability of the top label)")
        bottom.set_ylabel("(text, label) pairs" if multilabel else "texts")
        bottom.grid(alpha=0.3)
    fig.suptitle(title or "Reliability diagram", fontsize=12)
    return save_figure(fig, path)


def _flatten(row: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            out[name] = float(value)
    return out


def history_rows(model_dir: Path, meta: dict) -> tuple[list[dict[str, float]], list[tuple[int, str]], str]:
    """The run's per-epoch rows (flattened), stage boundaries ``(first row index, name)`` and where they came from."""
    history = model_dir / "history.json"
    if history.is_file():
        try:
            rows = json.loads(history.read_text(encoding="utf-8"))
            rows = [_flatten(r) for r in rows if isinstance(r, dict)]
            if rows:
                return rows, [], "history.json"
        except ValueError:
            pass
    rows, stages = [], []
    for stage in (meta.get("training") or {}).get("stages") or []:
        part = [_flatten(r) for r in stage.get("history") or [] if isinstance(r, dict)]
        if part:
            stages.append((len(rows), str(stage.get("name", f"stage {len(stages) + 1}"))))
            rows += part
    if rows:
        return rows, stages, "meta.json training.stages[].history"
    head = meta.get("head") or {}
    rows = [_flatten(r) for r in head.get("history") or [] if isinstance(r, dict)]
    if rows:
        return rows, [], "meta.json head.history"
    return [], [], ""


_METRIC_WORDS = ("f1", "f0", "f2", "acc", "precision", "recall", "auc", "score")


def plot_learning_curves(rows: list[dict[str, float]], stages: list[tuple[int, str]], path: str | Path,
                         title: str = "") -> Path | None:
    """Losses (left) and [0, 1] metrics (right) per epoch; None when the rows hold neither."""
    keys = sorted({k for r in rows for k in r})
    losses = [k for k in keys if "loss" in k.lower()]
    metrics = [k for k in keys if k not in losses and any(w in k.lower() for w in _METRIC_WORDS)
               and not any(w in k.lower() for w in ("micro", "weighted"))  # accuracy and macro averages only
               and all(0.0 <= r[k] <= 1.0 for r in rows if k in r)]
    if not losses and not metrics:
        return None
    x = np.arange(1, len(rows) + 1)
    fig, axes = figure(1, 2, figsize=(12, 4.6))
    for ax, names, ylabel in ((axes[0], losses, "loss"), (axes[1], metrics, "score")):
        for name in names:
            xs = [xi for xi, r in zip(x, rows, strict=True) if name in r]
            ax.plot(xs, [r[name] for r in rows if name in r], marker="o", markersize=3, label=name.replace("_", " "))
        for start, stage in stages:
            ax.axvline(start + 0.5, color="grey", ls="--", lw=1)
            ax.text(start + 0.6, 1.0, stage, transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch" + (" (all stages in order)" if stages else ""))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {ylabel} recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
        if len(x) <= 20:
            ax.set_xticks(x)
    axes[0].set_title("Loss")
    axes[1].set_title("Validation metrics")
    fig.suptitle(title or "Learning curves", fontsize=13)
    return save_figure(fig, path)


def search_trials(model_dir: Path, meta: dict) -> tuple[list[dict], str]:
    """``[{"number", "state", "value"}]`` of the run's Optuna search (trials.csv, else study.journal) and the source."""
    path = model_dir / "trials.csv"
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            trials = []
            for row in csv.DictReader(fh):
                try:
                    value = float(row["value"]) if row.get("value") not in (None, "") else None
                    trials.append({"number": int(row["number"]), "state": row.get("state", ""), "value": value})
                except (KeyError, ValueError):
                    continue
        return trials, "trials.csv"
    journal = model_dir / "study.journal"
    if journal.is_file():
        try:
            import optuna
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = JournalStorage(JournalFileBackend(str(journal)))
            name = (meta.get("search") or {}).get("study_name") or optuna.get_all_study_names(storage)[0]
            study = optuna.load_study(study_name=name, storage=storage)
            return [{"number": t.number, "state": t.state.name, "value": t.value} for t in study.trials], "study.journal"
        except Exception:  # noqa: BLE001 - a journal that cannot be read only loses this figure
            return [], ""
    return [], ""


def plot_optuna_history(trials: list[dict], metric: str, path: str | Path, title: str = "") -> Path | None:
    """Every complete trial's valid score and the best so far; None without complete trials."""
    from textclf.core.metrics import is_minimized

    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    if not done:
        return None
    numbers = np.array([t["number"] for t in done])
    values = np.array([t["value"] for t in done])
    best = np.minimum.accumulate(values) if is_minimized(metric) else np.maximum.accumulate(values)
    fig, ax = figure(figsize=(8, 4.6))
    ax.scatter(numbers, values, s=22, color="#4C72B0", label="trial", zorder=3)
    ax.step(numbers, best, where="post", color="#C44E52", lw=1.8, label="best so far")
    i = int(np.argmin(values) if is_minimized(metric) else np.argmax(values))
    ax.scatter([numbers[i]], [values[i]], s=140, marker="*", color="#C44E52", zorder=4,
               label=f"best: trial {numbers[i]} ({values[i]:.4f})")
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right" if not is_minimized(metric) else "upper right")
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    ax.set_title(title or f"Optuna search: {len(trials)} trials ({counts})")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- the page
def worst_errors(texts: Sequence[str], y: np.ndarray, pred: np.ndarray, proba: np.ndarray, labels: Sequence[str],
                 line_numbers: Sequence[int], top: int = TOP_ERRORS) -> list[dict]:
    """The misclassified rows with the lowest probability of their true label first (at most ``top``)."""
    wrong = np.flatnonzero(pred != y)
    p_true = proba[wrong, y[wrong]] if len(wrong) else np.array([])
    order = wrong[np.argsort(p_true, kind="stable")][:top]
    out = []
    for i in order:
        top_classes = np.argsort(-proba[i])[:3]
        out.append({"row": int(i), "line": int(line_numbers[i]) if len(line_numbers) > i else None, "text": texts[i],
                    "true": labels[y[i]], "predicted": labels[pred[i]], "p_true": float(proba[i, y[i]]),
                    "p_predicted": float(proba[i, pred[i]]),
                    "probabilities": {labels[c]: float(proba[i, c]) for c in top_classes}})
    return out


def run_figures(model_dir: Path, meta: dict, kind: str, name: str, out_dir: Path, figures: dict, skipped: dict) -> None:
    """The run's learning curves and Optuna history into ``out_dir`` (``figures``), or why not (``skipped``)."""
    rows, stages, source = history_rows(model_dir, meta)
    if rows:
        png = plot_learning_curves(rows, stages, out_dir / "learning_curves.png", f"Learning curves: {name} ({source})")
        if png:
            figures["learning_curves"] = png.name
        else:
            skipped["learning_curves"] = f"the run's history ({source}) holds no loss or metric per epoch"
    else:
        skipped["learning_curves"] = (f"no per-epoch history in this model directory ({kind} models record none; "
                                      "lstm writes history.json, bert and setfit keep it in meta.json)")
    trials, trial_source = search_trials(model_dir, meta)
    metric = (meta.get("search") or {}).get("metric") or ((meta.get("config") or {}).get("search") or {}).get("metric") \
        or "macro_f1"
    if trials:
        png = plot_optuna_history(trials, metric, out_dir / "optuna_history.png")
        if png:
            figures["optuna_history"] = png.name
        else:
            skipped["optuna_history"] = f"the search ({trial_source}) has no complete trial"
    else:
        skipped["optuna_history"] = "the run had no Optuna search (no trials.csv or study.journal)"


def remove_stale(out_dir: Path, figures: dict, names: Sequence[str] = ()) -> None:
    """Remove the figures an earlier report left in ``out_dir`` that this one did not draw."""
    for stale in dict.fromkeys((*FIGURES, *names)):
        if stale not in figures and (out_dir / f"{stale}.png").exists():
            (out_dir / f"{stale}.png").unlink()


def write_report(model_path: str | Path, data_path: str | Path, out_dir: str | Path, beta: float = 0.5,
                 data_format: str | None = None, text_column: str = "text", label_column: str = "label",
                 thresholds: bool = True, top_errors: int = TOP_ERRORS, batch_size: int = 1024,
                 frontier: Sequence[str | Path] = (), explain: int = 0) -> dict:
    """Score ``model_path`` on ``data_path`` and write figures, ``report.html`` and ``report.json`` into ``out_dir``.

    ``frontier``: more model directories placed on the speed/quality frontier with this one.
    ``explain`` > 0 adds an "Explanations" section: the token attributions of the first ``explain``
    texts toward their predicted label (:mod:`textclf.services.explain`).

    Returns ``{"html": path, "figures": {name: file}, "skipped": {name: why}, "metrics": ...}``.
    """
    from textclf.core.atomic import atomic_write_json, atomic_write_text
    from textclf.core.data import batched, read_labelled
    from textclf.core.loading import _resolve, load_predictor
    from textclf.core.metrics import beta_name, calibration_metrics, classification_metrics
    from textclf.services.compare.thresholds import label_indices

    model_dir, _ = _resolve(model_path)
    predictor = load_predictor(model_path, thresholds=thresholds)
    out_dir = Path(out_dir)
    if predictor.multilabel:
        return _write_multilabel(predictor, model_dir, data_path, out_dir, beta, data_format, text_column,
                                       label_column, top_errors, batch_size, explain)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = predictor.meta
    labels = list(predictor.labels)
    ds = read_labelled(data_path, data_format, text_column, label_column, min_classes=0)
    y = label_indices(ds.labels, labels, data_path, ds.line_numbers)
    chunks = [predictor.predict_proba(b) for b in batched(ds.texts, batch_size)]
    proba = np.vstack(chunks) if chunks else np.zeros((0, len(labels)))
    pred = predictor.decide(proba) if len(proba) else np.zeros(0, dtype=np.int64)
    betas = tuple(dict.fromkeys((1.0, float(beta))))
    metrics = classification_metrics(ds.labels, [labels[i] for i in pred], labels, betas=betas)
    if len(proba):
        metrics.update(calibration_metrics(proba, y))
    name = f"{model_dir.resolve().name} ({predictor.kind})"
    figures: dict[str, str] = {}
    skipped: dict[str, str] = {}

    cm = np.asarray(metrics["confusion_matrix"])
    figures["confusion_matrix"] = plot_confusion(cm, labels, out_dir / "confusion_matrix.png",
                                                 f"Confusion matrix: {name}, {len(ds)} docs").name
    figures["per_class_metrics"] = plot_per_class(metrics, beta, out_dir / "per_class_metrics.png",
                                                  f"Per-class precision, recall, F{beta:g}: {name}").name
    png, aps = plot_pr_curves(y, proba, pred, labels, out_dir / "pr_curves.png", f"Precision-recall (one vs rest): {name}")
    figures["pr_curves"] = png.name
    if len(proba):
        figures["reliability"] = plot_reliability(calibration_panels(predictor, ds.texts, proba, batch_size, False, y),
                                                  out_dir / "reliability.png", f"Reliability: {name}, {len(ds)} docs").name
    else:
        skipped["reliability"] = "no texts to score"
    run_figures(model_dir, meta, predictor.kind, name, out_dir, figures, skipped)
    frontier_rows = frontier_figure(model_dir, meta, frontier, data_path, out_dir, figures, skipped,
                                    {"data_format": data_format, "text_column": text_column, "label_column": label_column,
                                     "batch_size": batch_size, "thresholds": thresholds})
    remove_stale(out_dir, figures)

    errors = worst_errors(ds.texts, y, pred, proba, labels, ds.line_numbers, top_errors)
    fname = beta_name(beta)
    offsets = predictor.active_offsets()
    summary = {"model_dir": str(model_dir), "kind": predictor.kind, "data_path": str(data_path), "n": len(ds),
               "thresholds": None if offsets is None else dict(zip(labels, map(float, offsets), strict=True)),
               "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], f"macro_{fname}": metrics[f"macro_{fname}"],
               "average_precision": aps, "errors": int((pred != y).sum()),
               **{k: metrics[k] for k in ("ece", "ece_adaptive", "brier", "log_loss") if k in metrics}}
    page = with_explanations(_html(summary, metrics, beta, figures, skipped, errors, meta, top_errors), predictor, ds.texts,
                             explain)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, page)
    atomic_write_json(out_dir / "report.json", {**summary, "metrics": metrics, "figures": figures, "skipped": skipped,
                                                "worst_errors": errors, "frontier": frontier_rows})
    return {"html": str(html_path), "figures": figures, "skipped": skipped, "metrics": metrics}


def calibration_panels(predictor, texts, proba: np.ndarray, batch_size: int, multilabel: bool,
                       y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The reliability diagram's panels: ``{name: (confidence, correct)}``, before and after a stored calibrator.

    Multi-class: the top label's probability and whether it is the gold class (``y``: class indices).
    Multi-label: every (text, label) probability and whether the text carries the label (``y``: 0/1 matrix).
    """
    from textclf.core.data import batched

    probas = {"uncalibrated": proba}
    if predictor.calibration is not None:
        raw = [predictor.uncalibrated_proba(b) for b in batched(texts, batch_size)]
        chosen = (predictor.meta.get("calibration") or {}).get("chosen", predictor.calibration.method)
        probas = {"before calibration": np.vstack(raw) if raw else proba, f"after ({chosen})": proba}
    if multilabel:
        return {k: (p.ravel(), np.asarray(y, dtype=bool).ravel()) for k, p in probas.items()}
    return {k: (p.max(axis=1), p.argmax(axis=1) == y) for k, p in probas.items()}


def with_explanations(page: str, predictor, texts, n: int) -> str:
    """``page`` with an "Explanations" section of the first ``n`` texts before ``</body>`` (unchanged for ``n`` <= 0)."""
    if n <= 0:
        return page
    from textclf.services.explain import explain_texts, html_section

    section = html_section(explain_texts(predictor, list(texts[:n])), f"Explanations (first {min(n, len(texts))} texts)")
    head, _, tail = page.rpartition("</body>")
    return f"{head}{section}\n</body>{tail}"


def frontier_figure(model_dir: Path, meta: dict, others: Sequence[str | Path], data_path, out_dir: Path, figures: dict,
                    skipped: dict, kw: dict) -> list[dict]:
    """``frontier.png`` of this model, a cascade's members and ``others`` on ``data_path`` (their rows), or why not."""
    from textclf.services.compare.frontier import cascade_members, frontier_board, plot_frontier

    dirs = [model_dir, *cascade_members(model_dir, meta, others), *others]
    if len(dirs) < 2:  # one model alone: no frontier section (``--frontier DIR`` adds others)
        return []
    board = frontier_board(dirs, data_path, **kw)
    png = plot_frontier(board["rows"], out_dir / "frontier.png", f"Speed/quality frontier on {Path(data_path).name}, "
                        f"{board['n']} docs")
    if png:
        figures["frontier"] = png.name
    return [{k: r[k] for k in ("name", "kind", "model_dir", "macro_f1", "docs_per_s", "size_mb")} for r in board["rows"]]


def _write_multilabel(predictor, model_dir: Path, data_path: str | Path, out_dir: Path, beta: float = 0.5,
                            data_format: str | None = None, text_column: str = "text", label_column: str = "label",
                            top_errors: int = 25, batch_size: int = 1024, explain: int = 0) -> dict:
    """:func:`textclf.services.compare.report.write_report` for a multi-label ``predictor`` (already loaded)."""
    from textclf.core.atomic import atomic_write_json, atomic_write_text
    from textclf.core.data import batched, read_labelled
    from textclf.core.metrics import calibration_metrics, multilabel_metrics
    from textclf.services.compare import report_multilabel as ml
    from textclf.services.compare.label_thresholds import indicator_matrix

    labels = list(predictor.labels)
    ds = read_labelled(data_path, data_format, text_column, label_column, min_classes=0, task=predictor.task,
                       label_separator=predictor.label_separator)
    y = indicator_matrix(ds.labels, labels, data_path, ds.line_numbers)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = [predictor.predict_proba(b) for b in batched(ds.texts, batch_size)]
    proba = np.vstack(chunks) if chunks else np.zeros((0, len(labels)))
    pred = predictor.decide(proba) if len(proba) else np.zeros((0, len(labels)), dtype=bool)
    betas = tuple(dict.fromkeys((1.0, float(beta))))
    metrics = multilabel_metrics(list(ds.labels), predictor.labels_of(pred), labels, betas=betas)
    name = f"{model_dir.resolve().name} ({predictor.kind})"
    figures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    figures["per_class_metrics"] = plot_per_class(metrics, beta, out_dir / "per_class_metrics.png",
                                                  f"Per-label precision, recall, F{beta:g}: {name}").name
    figures["label_cooccurrence"] = ml.plot_cooccurrence(ml.cooccurrence(y), labels, out_dir / "label_cooccurrence.png",
                                                      f"Gold label co-occurrence: {len(ds)} texts").name
    if len(proba):
        metrics.update(calibration_metrics(proba, y, task="multilabel"))
        figures["reliability"] = plot_reliability(calibration_panels(predictor, ds.texts, proba, batch_size, True, y),
                                                  out_dir / "reliability.png", f"Reliability: {name}, {len(ds)} texts x "
                                                  f"{len(labels)} labels", multilabel=True).name
    else:
        skipped["reliability"] = "no texts to score"
    run_figures(model_dir, predictor.meta, predictor.kind, name, out_dir, figures, skipped)
    remove_stale(out_dir, figures, ml.FIGURES)

    thresholds, at_least_one = predictor.active_thresholds()
    per_label = np.broadcast_to(np.asarray(thresholds, dtype=float), (len(labels),))
    summary = {"model_dir": str(model_dir), "kind": predictor.kind, "task": "multilabel", "data_path": str(data_path),
               "n": len(ds), "thresholds": dict(zip(labels, map(float, per_label), strict=True)),
               "at_least_one": at_least_one, "average_precision": ml.average_precisions(y, proba, labels),
               "errors": int((y != pred).any(axis=1).sum()) if len(y) else 0,
               **{k: metrics[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")},
               **{k: metrics[k] for k in ("ece", "ece_adaptive", "brier", "log_loss") if k in metrics}}
    errors = ml.worst_texts(ds.texts, y, pred, proba, labels, ds.line_numbers, top_errors)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, with_explanations(ml.page(summary, metrics, beta, figures, skipped, errors, predictor.meta,
                                                           top_errors, calibration_line(predictor.meta, metrics)),
                                                   predictor, ds.texts, explain))
    atomic_write_json(out_dir / "report.json", {**summary, "metrics": metrics, "figures": figures, "skipped": skipped,
                                                "worst_errors": errors})
    return {"html": str(html_path), "figures": figures, "skipped": skipped, "metrics": metrics}


def calibration_line(meta: dict, metrics: dict) -> str:
    """The report's list item on calibration: the stored method and the ECE/Brier/log-loss on this file."""
    block = meta.get("calibration") or {}
    how = (f"{html.escape(str(block.get('chosen')))} (asked: {html.escape(str(block.get('method')))}; valid ECE "
           f"{block['valid_before']['ece']:.4f} before, {block['valid_after']['ece']:.4f} after)") if block.get("chosen") \
        else "none (the family's own probabilities)"
    scores = (f"; on this file ECE {metrics['ece']:.4f}, adaptive ECE {metrics['ece_adaptive']:.4f}, Brier {metrics['brier']:.4f}, "
              f"log-loss {metrics['log_loss']:.4f}") if "ece" in metrics else ""
    return f"<li>Calibration: {how}{scores}</li>"


def _html(summary: dict, metrics: dict, beta: float, figures: dict, skipped: dict, errors: list[dict], meta: dict,
          top: int) -> str:
    from textclf.core.metrics import beta_name

    esc = html.escape
    fname = beta_name(beta)
    f_other = [b for b in (1.0, beta) if b != beta]
    heads = ["class", "precision", "recall", *[f"F{b:g}" for b in [*f_other, beta]], "support", "average precision"]
    rows = []
    for label in metrics["labels"]:
        c = metrics["per_class"][label]
        ap = summary["average_precision"].get(label, float("nan"))
        rows.append("<tr>" + f"<td>{esc(str(label))}</td>" + _num(c["precision"]) + _num(c["recall"])
                    + "".join(_num(c[beta_name(b)]) for b in [*f_other, beta]) + f'<td class="num">{c["support"]}</td>'
                    + (_num(ap) if np.isfinite(ap) else "<td>-</td>") + "</tr>")
    per_class = "<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>" + "".join(rows) + "</table>"
    thr = summary["thresholds"]
    thr_text = ("none (plain argmax)" if thr is None else
                "argmax(log p + offset): " + ", ".join(f"{esc(str(k))} {v:+.3f}" for k, v in thr.items()))
    captions = {
        "confusion_matrix": "Confusion matrix: counts (left) and row-normalised, i.e. recall per true class (right).",
        "per_class_metrics": f"Precision, recall and F{beta:g} of every class; the test support is under each name.",
        "pr_curves": "One-vs-rest precision-recall curves from predict_proba; the dot is where the model's predict operates.",
        "learning_curves": "Loss and validation metrics per epoch of the training run.",
        "optuna_history": "Valid score of every complete Optuna trial and the best so far.",
        "frontier": "Predict docs/s (log scale, this machine, in one process) against macro-F1 on this file; the line "
                    "joins the models no other beats on both.",
        "reliability": "Top-label accuracy against confidence in 15 equal-width bins (the ECE's); a calibrated model is "
                       "shown before and after its calibration. Below: how many texts fall in each bin.",
    }
    titles = {"confusion_matrix": "Confusion matrix", "per_class_metrics": "Per-class metrics",
              "pr_curves": "Precision-recall curves",
              "reliability": "Calibration", "learning_curves": "Learning curves", "optuna_history": "Optuna search",
              "frontier": "Speed/quality frontier"}
    keys = [k for k in FIGURES if k != "frontier" or k in figures or k in skipped]
    sections = figure_sections(keys, titles, captions, figures, skipped)
    err_rows = []
    for i, e in enumerate(errors, 1):
        probs = probability_text(e["probabilities"])
        err_rows.append(f'<tr><td class="num">{i}</td><td class="num">{"" if e["line"] is None else e["line"]}</td>'
                        f"<td>{esc(e['true'])}</td><td>{esc(e['predicted'])}</td>{_num(e['p_true'], '.3f')}"
                        f"{_num(e['p_predicted'], '.3f')}<td>{probs}</td><td class=\"text\">{esc(_shorten(e['text']))}</td></tr>")
    errors_html = ("<table><tr><th>#</th><th>line</th><th>true</th><th>predicted</th><th>p(true)</th><th>p(predicted)</th>"
                   "<th>top probabilities</th><th>text</th></tr>" + "".join(err_rows) + "</table>") if err_rows \
        else '<p class="note">No misclassified examples.</p>'
    members = ""
    if meta.get("kind") == "ensemble":
        cells = []
        for r in meta.get("members") or []:
            weight = "-" if r.get("weight") is None else f"{r['weight']:.2f}"
            alone = r.get("valid_score_alone")
            cells.append(f"<tr><td><code>{esc(str(r.get('path')))}</code></td><td>{esc(str(r.get('kind')))}</td>"
                         f'<td class="num">{weight}</td><td class="num">{"-" if alone is None else f"{alone:.4f}"}</td></tr>')
        members = (f"<h2>Ensemble members ({esc(str(meta.get('method')))})</h2><table><tr><th>member</th><th>kind</th>"
                   f"<th>weight</th><th>valid score alone</th></tr>{''.join(cells)}</table>")
    elif meta.get("kind") == "cascade":
        c = meta.get("cascade") or {}
        v = c.get("valid") or {}
        members = (f"<h2>Cascade</h2><p>The student answers when its confidence is at least tau = {meta.get('tau', 0):.4f}; "
                   f"the teacher answers the rest. On valid, {v.get('share_to_teacher', 0):.1%} of the texts reached the "
                   f"teacher (macro-F1 {v.get('macro_f1', 0):.4f}; teacher alone {v.get('teacher_macro_f1', 0):.4f}, "
                   f"student alone {v.get('student_macro_f1', 0):.4f}).</p>")
    search = meta.get("search") or {}
    search_line = (f"<li>Search: {search.get('n_trials')} trials, best valid {esc(str(search.get('metric')))} "
                   f"{search.get('best_value', float('nan')):.4f} (trial {search.get('best_trial')})</li>") if search else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>textclf report: {esc(summary['model_dir'])}</title><style>{CSS}</style></head>
<body>
<h1>Model report</h1>
<ul>
<li>Model: <code>{esc(summary['model_dir'])}</code> (kind {esc(summary['kind'])}, created {esc(str(meta.get('created', '?')))})</li>
<li>Data: <code>{esc(summary['data_path'])}</code>, {summary['n']} documents, {summary['errors']} misclassified</li>
<li>Decision thresholds: {thr_text}</li>
{calibration_line(meta, metrics)}
{search_line}
</ul>
<table><tr><th>accuracy</th><th>macro-F1</th><th>macro-F{beta:g}</th><th>macro precision</th><th>macro recall</th></tr>
<tr>{_num(metrics['accuracy'])}{_num(metrics['macro_f1'])}{_num(metrics[f'macro_{fname}'])}{_num(metrics['macro_precision'])}{_num(metrics['macro_recall'])}</tr></table>
{per_class}
{members}
{''.join(sections)}
<h2>Worst misclassified examples</h2>
<p>Lowest probability of the true label first (at most {top} shown); texts shortened to {TEXT_CHARS} characters.</p>
{errors_html}
</body></html>
"""

"""Classification metrics: accuracy, per-class precision/recall/F-beta, macro/micro/weighted
F-beta for any beta, confusion matrix, a text report and a JSON-ready dict.

Matches scikit-learn's definitions with ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BETAS = (1.0, 0.5)
#: metrics where lower is better; every other metric is maximised
MINIMIZED_METRICS = ("loss",)


def is_minimized(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better."""
    return metric in MINIMIZED_METRICS


def direction(metric: str) -> str:
    """Optuna's study direction for ``metric``: ``minimize`` or ``maximize``."""
    return "minimize" if is_minimized(metric) else "maximize"


def beta_name(beta: float) -> str:
    """The metric-name suffix for a beta: 1 -> ``f1``, 0.5 -> ``f0.5``."""
    return f"f{beta:g}"


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts ``cm[i, j]`` of true label ``labels[i]`` predicted as ``labels[j]``."""
    index = {label: i for i, label in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def _fbeta(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    b2 = beta * beta
    denom = b2 * precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(denom > 0, (1 + b2) * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return f


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def fbeta_score(
    y_true: Sequence[str], y_pred: Sequence[str], beta: float = 1.0, average: str = "macro",
    labels: Sequence[str] | None = None,
) -> float:
    """F-beta averaged ``macro``, ``micro`` or ``weighted`` over ``labels`` (default: labels seen in either)."""
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    cm = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(cm).astype(float)
    pred = cm.sum(axis=0).astype(float)
    true = cm.sum(axis=1).astype(float)
    if average == "micro":
        p = _safe_div(tp.sum(), pred.sum())
        r = _safe_div(tp.sum(), true.sum())
        return float(_fbeta(np.asarray(p), np.asarray(r), beta))
    f = _fbeta(_safe_div(tp, pred), _safe_div(tp, true), beta)
    if average == "macro":
        return float(f.mean()) if len(f) else 0.0
    if average == "weighted":
        return float((f * true).sum() / true.sum()) if true.sum() else 0.0
    raise ValueError(f"unknown average {average!r}; use macro, micro or weighted")


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None,
    betas: Sequence[float] = DEFAULT_BETAS,
) -> dict:
    """All metrics as a JSON-ready dict.

    Keys: ``n``, ``accuracy``, ``{macro,micro,weighted}_f{beta}`` for every beta,
    ``{macro,weighted}_precision``/``_recall``, ``per_class`` (precision, recall, f-betas,
    support), ``labels`` and ``confusion_matrix`` (rows: true, columns: predicted).
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items, y_pred {len(y_pred)}")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    cm = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(cm).astype(float)
    pred = cm.sum(axis=0).astype(float)
    true = cm.sum(axis=1).astype(float)
    precision = _safe_div(tp, pred)
    recall = _safe_div(tp, true)
    n = len(y_true)
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
    out: dict = {"n": n, "accuracy": correct / n if n else 0.0}
    weights = true / true.sum() if true.sum() else np.zeros_like(true)
    micro_p = float(_safe_div(tp.sum(), pred.sum()))
    micro_r = float(_safe_div(tp.sum(), true.sum()))
    for beta in betas:
        name = beta_name(beta)
        f = _fbeta(precision, recall, beta)
        out[f"macro_{name}"] = float(f.mean()) if len(f) else 0.0
        out[f"micro_{name}"] = float(_fbeta(np.asarray(micro_p), np.asarray(micro_r), beta))
        out[f"weighted_{name}"] = float((f * weights).sum())
    out["macro_precision"] = float(precision.mean()) if len(labels) else 0.0
    out["macro_recall"] = float(recall.mean()) if len(labels) else 0.0
    out["weighted_precision"] = float((precision * weights).sum())
    out["weighted_recall"] = float((recall * weights).sum())
    per_class = {}
    for i, label in enumerate(labels):
        entry = {"precision": float(precision[i]), "recall": float(recall[i])}
        for beta in betas:
            entry[beta_name(beta)] = float(_fbeta(precision[i : i + 1], recall[i : i + 1], beta)[0])
        entry["support"] = int(true[i])
        per_class[label] = entry
    out["per_class"] = per_class
    out["labels"] = labels
    out["confusion_matrix"] = cm.tolist()
    return out


def format_report(metrics: dict, title: str = "") -> str:
    """A text report of :func:`classification_metrics` output: per-class table, averages, confusion matrix."""
    labels = metrics["labels"]
    fnames = [k for k in next(iter(metrics["per_class"].values()), {}) if k.startswith("f")]
    width = max([len(str(label)) for label in labels] + [12])
    lines = [title] if title else []
    header = f"{'':<{width}} {'precision':>9} {'recall':>9} " + " ".join(f"{n:>9}" for n in fnames) + f" {'support':>9}"
    lines.append(header)
    for label in labels:
        c = metrics["per_class"][label]
        lines.append(
            f"{label:<{width}} {c['precision']:9.4f} {c['recall']:9.4f} "
            + " ".join(f"{c[n]:9.4f}" for n in fnames) + f" {c['support']:9d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':<{width}} {metrics['accuracy']:9.4f}   (n={metrics['n']})")
    for avg in ("macro", "micro", "weighted"):
        vals = " ".join(f"{n}={metrics[f'{avg}_{n}']:.4f}" for n in fnames)
        lines.append(f"{avg + ' avg':<{width}} {vals}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    cw = max(width, max((len(str(v)) for row in metrics["confusion_matrix"] for v in row), default=1))
    lines.append(f"{'':<{width}} " + " ".join(f"{str(label)[:cw]:>{cw}}" for label in labels))
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(f"{label:<{width}} " + " ".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


def metric_value(metrics: dict, name: str) -> float:
    """Look a metric up by name (``macro_f1``, ``macro_f0.5``, ``accuracy`` ...), with a clear error."""
    if name not in metrics or not isinstance(metrics[name], float | int):
        valid = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise KeyError(f"unknown metric {name!r}; valid: {', '.join(valid)}")
    return float(metrics[name])

"""Classification metrics: accuracy, per-class precision/recall/F-beta, macro/micro/weighted
F-beta for any beta, confusion matrix, a text report and a JSON-ready dict.

Computed by ``sklearn.metrics`` with ``zero_division=0`` (the maintained reference rather than a
copy of its formulas); :func:`fbeta_from_counts` is the one vectorised count formula kept for
searches that score thousands of count vectors at once.

Multi-label data (label sets) is scored by :func:`multilabel_metrics` (micro/macro/weighted/samples
F-beta, Hamming loss, subset accuracy, per-label scores, label cardinality), the same scikit-learn
functions on the binary indicator matrix of ``MultiLabelBinarizer``.

Calibration (:func:`calibration_metrics`): expected calibration error over 15 equal-width bins and
over 15 equal-mass (adaptive) bins (:func:`expected_calibration_error`; scikit-learn has no ECE),
Brier score (``sklearn.metrics.brier_score_loss``) and log-loss (``sklearn.metrics.log_loss``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

DEFAULT_BETAS = (1.0, 0.5)
#: metrics where lower is better; every other metric is maximised
MINIMIZED_METRICS = ("loss", "hamming_loss", "ece", "ece_adaptive", "brier", "log_loss")
#: the averages of F-beta every metrics dict holds
AVERAGES = ("macro", "micro", "weighted")


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
    """Counts ``cm[i, j]`` of true label ``labels[i]`` predicted as ``labels[j]`` (``sklearn.metrics.confusion_matrix``).

    Pairs whose true or predicted label is not in ``labels`` are left out (as scikit-learn does);
    no pair left: all zeros (scikit-learn refuses that input).
    """
    from sklearn import metrics as skm  # imported on use: it costs a second, and the CLI and serving import this module

    labels = list(labels)
    t, p = _known_pairs(y_true, y_pred, labels)
    if not t:
        return np.zeros((len(labels), len(labels)), dtype=np.int64)
    with warnings.catch_warnings():  # one label: scikit-learn warns of a 1x1 matrix, which is the right shape here
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return skm.confusion_matrix(t, p, labels=labels).astype(np.int64)


def _known_pairs(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The (true, predicted) pairs with both labels in ``labels``: the rows every metric here is counted on.

    scikit-learn would count a prediction outside ``labels`` as a miss of its true class (and a true
    label outside them as a false positive); textclf has always scored only the pairs its confusion
    matrix holds, so the per-class and averaged numbers stay those of earlier runs.
    """
    known = set(labels)
    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t in known and p in known]
    return [t for t, _ in pairs], [p for _, p in pairs]


def fbeta_from_counts(tp: np.ndarray, pred: np.ndarray, true: np.ndarray, beta: float) -> np.ndarray:
    """Macro F-beta from per-class counts; the last axis is the class (leading axes broadcast).

    scikit-learn's formula and zero division (``(1 + b2) tp / (b2 true + pred)``, 0 where nothing is
    true or predicted), so it equals ``sklearn.metrics.fbeta_score(average="macro", zero_division=0)``.
    It stays hand-written for the places that score thousands of count vectors at once, which
    scikit-learn (labels in, one score out, ~2 ms of input checks a call) cannot: the threshold
    break-point search (cumulative counts, :mod:`textclf.services.compare.thresholds`), the
    bootstrap resamples of the leaderboard and the ensemble's weight grid. Everything else calls
    scikit-learn.
    """
    tp, pred, true = (np.asarray(a, dtype=np.float64) for a in (tp, pred, true))
    b2 = beta * beta
    denom = b2 * true + pred
    f = (1 + b2) * tp / np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, f, 0.0).mean(axis=-1)


def class_counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(true positives, predicted, true)`` counts of integer labels, for :func:`fbeta_from_counts`.

    The last axis of ``y``/``pred`` is the sample, leading axes (bootstrap resamples) are kept; a
    prediction ``< 0`` (a label the scorer does not know) counts only towards its row's support.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    lead = y.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    offset = (np.arange(rows, dtype=np.int64) * n_classes)[:, None]
    y2, p2 = y.reshape(rows, -1), pred.reshape(rows, -1)
    size = rows * n_classes

    def count(cells: np.ndarray) -> np.ndarray:
        return np.bincount(cells, minlength=size).reshape(*lead, n_classes)

    return count((y2 + offset)[y2 == p2]), count((p2 + offset)[p2 >= 0]), count((y2 + offset).ravel())


def fbeta_score(
    y_true: Sequence[str], y_pred: Sequence[str], beta: float = 1.0, average: str = "macro",
    labels: Sequence[str] | None = None,
) -> float:
    """F-beta averaged ``macro``, ``micro`` or ``weighted`` over ``labels`` (default: labels seen in either).

    ``sklearn.metrics.fbeta_score`` with ``zero_division=0`` on the pairs both of whose labels are
    in ``labels`` (see :func:`_known_pairs`); no such pair: 0.
    """
    from sklearn import metrics as skm

    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; use macro, micro or weighted")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    t, p = _known_pairs(y_true, y_pred, labels)
    if not t:
        return 0.0
    return float(skm.fbeta_score(t, p, beta=beta, average=average, labels=labels, zero_division=0))


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None,
    betas: Sequence[float] = DEFAULT_BETAS,
) -> dict:
    """All metrics as a JSON-ready dict, computed by ``sklearn.metrics`` (``zero_division=0``).

    Keys: ``n``, ``accuracy``, ``{macro,micro,weighted}_f{beta}`` for every beta,
    ``{macro,weighted}_precision``/``_recall``, ``per_class`` (precision, recall, f-betas,
    support), ``labels`` and ``confusion_matrix`` (rows: true, columns: predicted). Accuracy is
    over all ``n`` pairs; the rest over the pairs both of whose labels are in ``labels``
    (see :func:`_known_pairs`), every metric 0 when there is none.
    """
    from sklearn import metrics as skm

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items, y_pred {len(y_pred)}")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    n = len(y_true)
    out: dict = {"n": n, "accuracy": float(skm.accuracy_score(list(y_true), list(y_pred))) if n else 0.0}
    t, p = _known_pairs(y_true, y_pred, labels)
    k = len(labels)

    def prfs(beta: float, average: str | None):
        if not t:
            return (np.zeros(k),) * 4 if average is None else (0.0,) * 4
        return skm.precision_recall_fscore_support(t, p, beta=beta, labels=labels, average=average, zero_division=0)

    for beta in betas:
        name = beta_name(beta)
        for average in AVERAGES:
            out[f"{average}_{name}"] = float(prfs(beta, average)[2])
    for average in ("macro", "weighted"):
        precision, recall, _, _ = prfs(1.0, average)
        out[f"{average}_precision"], out[f"{average}_recall"] = float(precision), float(recall)
    per_beta = {beta_name(beta): prfs(beta, None)[2] for beta in betas}
    precision, recall, _, support = prfs(1.0, None)
    per_class = {}
    for i, label in enumerate(labels):
        entry = {"precision": float(precision[i]), "recall": float(recall[i])}
        entry.update({name: float(f[i]) for name, f in per_beta.items()})
        entry["support"] = int(support[i])
        per_class[label] = entry
    out["per_class"] = per_class
    out["labels"] = labels
    out["confusion_matrix"] = confusion_matrix(t, p, labels).tolist()
    return out


#: the averages of F-beta a multi-label metrics dict holds
MULTILABEL_AVERAGES = ("micro", "macro", "weighted", "samples")


def multilabel_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]],
                       labels: Sequence[str] | None = None, betas: Sequence[float] = DEFAULT_BETAS) -> dict:
    """Metrics of label sets as a JSON-ready dict, by ``sklearn.metrics`` on the binary indicator matrices (``zero_division=0``).

    Keys: ``task`` (``multilabel``), ``n``, ``{micro,macro,weighted,samples}_f{beta}`` for every beta and
    ``_precision``/``_recall``, ``hamming_loss``, ``subset_accuracy`` (the whole set right; also
    ``accuracy``, so every metrics dict has one), ``label_cardinality_gold``/``_predicted`` (mean
    labels a text), ``per_class`` (precision, recall, f-betas, support: texts carrying the label) and
    ``labels``. A label outside ``labels`` (default: every label seen) is left out. The samples
    average counts a text with neither a gold nor a predicted label as right (``zero_division=1``
    there: a correct empty prediction is not an error), every other score ``zero_division=0``.
    """
    from sklearn import metrics as skm
    from sklearn.preprocessing import MultiLabelBinarizer

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items, y_pred {len(y_pred)}")
    labels = list(labels) if labels is not None else sorted({x for row in (*y_true, *y_pred) for x in row})
    known = set(labels)
    binarizer = MultiLabelBinarizer(classes=labels)
    t = binarizer.fit_transform([[x for x in row if x in known] for row in y_true])
    p = binarizer.transform([[x for x in row if x in known] for row in y_pred])
    n, k = t.shape
    out: dict = {"task": "multilabel", "n": n}
    if n == 0:
        t, p = np.zeros((1, k), dtype=int), np.zeros((1, k), dtype=int)  # scikit-learn refuses no rows: all zeros

    def prfs(beta: float, average: str | None):
        # samples: a text with no gold and no predicted label is right (F 1, not 0); elsewhere zero_division=0
        return skm.precision_recall_fscore_support(t, p, beta=beta, average=average,
                                                   zero_division=1 if average == "samples" else 0)

    for beta in betas:
        for average in MULTILABEL_AVERAGES:
            out[f"{average}_{beta_name(beta)}"] = float(prfs(beta, average)[2]) if n else 0.0
    for average in MULTILABEL_AVERAGES:
        precision, recall, _, _ = prfs(1.0, average)
        out[f"{average}_precision"], out[f"{average}_recall"] = (float(precision), float(recall)) if n else (0.0, 0.0)
    out["hamming_loss"] = float(skm.hamming_loss(t, p)) if n else 0.0
    out["subset_accuracy"] = out["accuracy"] = float(skm.accuracy_score(t, p)) if n else 0.0
    out["label_cardinality_gold"] = float(t.sum(axis=1).mean()) if n else 0.0
    out["label_cardinality_predicted"] = float(p.sum(axis=1).mean()) if n else 0.0
    per_beta = {beta_name(beta): prfs(beta, None)[2] for beta in betas}
    precision, recall, _, support = prfs(1.0, None)
    out["per_class"] = {label: {"precision": float(precision[i]) if n else 0.0, "recall": float(recall[i]) if n else 0.0,
                                **{name: float(f[i]) if n else 0.0 for name, f in per_beta.items()},
                                "support": int(support[i]) if n else 0}
                        for i, label in enumerate(labels)}
    out["labels"] = labels
    return out


#: bins of the expected calibration error
ECE_BINS = 15
#: the calibration keys of a metrics dict (:func:`calibration_metrics`), all lower-is-better
CALIBRATION_KEYS = ("ece", "ece_adaptive", "brier", "log_loss")
#: probabilities are clipped to [PROBA_EPS, 1 - PROBA_EPS] for the log-loss
PROBA_EPS = 1e-7


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS,
                               strategy: str = "uniform") -> float:
    """ECE: the mean over bins of ``|accuracy - mean confidence|``, weighted by the share of rows in the bin.

    ``strategy``: ``uniform`` (``n_bins`` equal-width bins on [0, 1], Guo et al. 2017) or ``quantile``
    (equal-mass bins: each holds about the same number of rows, the "adaptive" ECE). No rows: 0.
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    n = len(confidence)
    if n == 0:
        return 0.0
    if strategy == "uniform":
        bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    elif strategy == "quantile":
        order = np.argsort(confidence, kind="stable")
        bins = np.empty(n, dtype=np.int64)
        bins[order] = np.arange(n) * n_bins // n
    else:
        raise ValueError(f"unknown ECE strategy {strategy!r}; use uniform or quantile")
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap[count > 0].sum() / n)


def log_loss_of(proba: np.ndarray, y: np.ndarray, task: str) -> float:
    """Mean log-loss (``sklearn.metrics.log_loss``; multi-label: the mean over labels of the binary one)."""
    from sklearn.metrics import log_loss

    proba = np.clip(np.asarray(proba, dtype=np.float64), PROBA_EPS, 1 - PROBA_EPS)
    if task == "multilabel":
        yy = np.asarray(y, dtype=int)
        return float(np.mean([log_loss(yy[:, j], proba[:, j], labels=[0, 1]) for j in range(yy.shape[1])]))
    return float(log_loss(y, proba / proba.sum(axis=1, keepdims=True), labels=list(range(proba.shape[1]))))


def calibration_metrics(proba: np.ndarray, y: np.ndarray, task: str = "multiclass") -> dict:
    """``ece``, ``ece_adaptive`` (15 bins each), ``brier`` and ``log_loss`` of probabilities against the gold labels.

    Multi-class: ``y`` holds class indices (columns of ``proba``); the ECE is the top-label one
    (confidence: the largest probability; right: it is the gold class), Brier is scikit-learn's
    (halved for two classes, the customary [0, 1] range). Multi-label: ``y`` is an ``(n, L)`` 0/1
    matrix; every (text, label) probability is one binary prediction for the ECE, and Brier and
    log-loss are the means over labels of the binary ones.
    """
    from sklearn import metrics as skm

    proba = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)  # fastText's can exceed 1 by 1e-5
    if len(proba) == 0:
        return dict.fromkeys(CALIBRATION_KEYS, 0.0)
    if task == "multilabel":
        yy = np.asarray(y, dtype=np.float64)
        confidence, correct = proba.ravel(), yy.ravel()
        brier = float(np.mean((proba - yy) ** 2))
    else:
        y = np.asarray(y, dtype=np.int64)
        total = proba.sum(axis=1, keepdims=True)
        proba = np.divide(proba, total, out=np.full_like(proba, 1.0 / max(proba.shape[1], 1)), where=total > 0)
        confidence, correct = proba.max(axis=1), (proba.argmax(axis=1) == y)
        brier = float(skm.brier_score_loss(y, proba, labels=list(range(proba.shape[1]))))
    return {"ece": expected_calibration_error(confidence, correct),
            "ece_adaptive": expected_calibration_error(confidence, correct, strategy="quantile"),
            "brier": brier, "log_loss": log_loss_of(proba, y, task)}


def calibration_line(metrics: dict, width: int = 12) -> str | None:
    """The report line of a metrics dict's calibration keys (None when it has none)."""
    if "ece" not in metrics:
        return None
    return (f"{'calibration':<{width}} ECE={metrics['ece']:.4f} ECE-adaptive={metrics['ece_adaptive']:.4f} "
            f"Brier={metrics['brier']:.4f} log-loss={metrics['log_loss']:.4f}")


def format_report(metrics: dict, title: str = "") -> str:
    """A text report of :func:`classification_metrics` output: per-class table, averages, confusion matrix.

    Multi-label metrics (:func:`multilabel_metrics`): the per-label table, the four averages,
    Hamming loss, subset accuracy and label cardinality (no confusion matrix).
    """
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
    if metrics.get("task") == "multilabel":
        for avg in MULTILABEL_AVERAGES:
            vals = " ".join(f"{n}={metrics[f'{avg}_{n}']:.4f}" for n in ("precision", "recall", *fnames))
            lines.append(f"{avg + ' avg':<{width}} {vals}")
        lines.append(f"{'subset acc.':<{width}} {metrics['subset_accuracy']:9.4f}   (n={metrics['n']}; every label right)")
        lines.append(f"{'hamming loss':<{width}} {metrics['hamming_loss']:9.4f}")
        lines.append(f"{'labels/text':<{width}} gold {metrics['label_cardinality_gold']:.3f}, "
                     f"predicted {metrics['label_cardinality_predicted']:.3f}")
        if calibration_line(metrics, width):
            lines.append(calibration_line(metrics, width))
        return "\n".join(lines)
    lines.append(f"{'accuracy':<{width}} {metrics['accuracy']:9.4f}   (n={metrics['n']})")
    for avg in ("macro", "micro", "weighted"):
        vals = " ".join(f"{n}={metrics[f'{avg}_{n}']:.4f}" for n in fnames)
        lines.append(f"{avg + ' avg':<{width}} {vals}")
    if calibration_line(metrics, width):
        lines.append(calibration_line(metrics, width))
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

"""Probability calibration: temperature scaling or isotonic regression, fitted on valid, stored as JSON.

The config key ``calibration`` (``none`` | ``temperature`` | ``isotonic`` | ``auto``; every family has it,
:data:`textclf.core.registry.CORE_DEFAULTS`) asks the core to fit a calibrator on the valid split after
the refit (:mod:`textclf.core.fit_flow`); ``textclf calibrate`` fits one for an existing model
(:mod:`textclf.services.calibrate`). The calibrator is a JSON file in the model directory (no pickle),
named in meta.json's ``calibration.file`` and recorded in its ``files`` block like every other file.
Loading attaches it to the Predictor (:func:`textclf.core.loading.load_predictor`), and
:class:`textclf.core.predictor.Predictor` applies it to every ``predict_proba`` (every family,
plug-ins, ONNX exports and ensembles alike), so thresholds, reports and ensembles see calibrated
probabilities.

Methods (the fitting is scipy's and scikit-learn's, not hand-made):

* ``temperature``: multi-class probabilities become ``softmax(log p / T)`` with one ``T`` (the argmax,
  hence accuracy and macro-F1, cannot change); multi-label ones ``sigmoid(logit(p_k) / T_k)`` with a
  ``T_k`` per label. ``T`` minimises the valid log-loss (``scipy.optimize.minimize_scalar``, bounded, on ``log T``).
* ``bcts``: bias-corrected temperature scaling (Alexandari et al. 2020), a temperature plus one bias
  per class: ``softmax(log p / T + b)`` (``b`` of the first class fixed at 0; a class absent from
  valid keeps 0); multi-label ``sigmoid(logit(p_k) / T_k + b_k)``, i.e. Platt scaling per label
  (for two classes it is Platt scaling of the log-odds). Fitted by ``scipy.optimize.minimize``
  (L-BFGS-B) on the valid log-loss. The biases can move decisions, where a model's base rates are off.
* ``isotonic``: ``sklearn.isotonic.IsotonicRegression`` (``out_of_bounds="clip"``) maps each class's
  probability one-vs-rest (binary: the second class only, as ``CalibratedClassifierCV`` does), then
  multi-class rows are renormalised; multi-label labels stay independent. The fitted step function
  is stored as its breakpoints (``X_thresholds_``, ``y_thresholds_``) and applied with ``np.interp``,
  which is what ``IsotonicRegression.predict`` computes.
* ``auto``: the method (``none`` included) with the lowest cross-validated log-loss on valid
  (:data:`CV_FOLDS` folds, stratified for multi-class; ``sklearn.model_selection``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textclf.core.errors import ConfigError, ModelError
from textclf.core.metrics import calibration_metrics, log_loss_of

#: the values of the config key ``calibration``
METHODS = ("none", "temperature", "bcts", "isotonic", "auto")
#: what ``auto`` chooses among (ties go to the earlier, simpler one)
CANDIDATES = ("none", "temperature", "bcts", "isotonic")
#: bcts: the biases' bounds (a bias of 10 multiplies a class's odds by e^10)
BIAS_BOUNDS = (-10.0, 10.0)
#: the config key and the meta.json key
CONFIG_KEY = META_KEY = "calibration"
#: the calibration files' names start with it (:func:`file_name`)
FILE_PREFIX = "calibration-"
#: folds of ``auto``'s cross-validation on valid
CV_FOLDS = 5
#: probabilities are clipped to [EPS, 1 - EPS] before a log or logit
EPS = 1e-7
#: log-temperature bounds of the search (T from about 0.02 to 55)
LOG_T_BOUNDS = (-4.0, 4.0)
#: fewest labelled valid rows a calibrator is fitted on
MIN_ROWS = 10
FORMAT_VERSION = 1


def check_method(method, key: str = CONFIG_KEY) -> str:
    """``method`` if it is one of :data:`METHODS` (case-insensitive; null is ``none``), else a one-line ConfigError."""
    name = "none" if method is None or method is False else str(method).strip().lower()
    if name not in METHODS:
        raise ConfigError(f"{key} {method!r}: choose one of {', '.join(METHODS)}")
    return name


# --------------------------------------------------------------------------- the transforms
def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _softmax_t(proba: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.log(np.clip(proba, EPS, None)) / temperature, axis=1)


def _sigmoid_t(p: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    from scipy.special import expit

    return expit(_logit(p) / temperature + bias)


def _softmax_tb(proba: np.ndarray, temperature: float, biases: Sequence[float]) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.log(np.clip(proba, EPS, None)) / temperature + np.asarray(biases, dtype=np.float64), axis=1)


def _normalise(q: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; a row of zeros becomes uniform (as ``CalibratedClassifierCV`` does)."""
    total = q.sum(axis=1, keepdims=True)
    uniform = np.full_like(q, 1.0 / max(q.shape[1], 1))
    return np.where(total > 0, q / np.where(total > 0, total, 1.0), uniform)


@dataclass
class Calibrator:
    """A fitted calibrator: ``method`` (temperature, bcts or isotonic), the ``task`` and its parameters.

    ``temperatures``: one (multi-class) or one per label (multi-label); ``biases`` (bcts): one per
    class or label; ``curves``: per calibrated column the isotonic breakpoints ``(x, y)``; for a
    binary multi-class model only column 1 has one.
    """

    method: str
    task: str
    labels: list[str]
    temperatures: list[float] = field(default_factory=list)
    biases: list[float] = field(default_factory=list)
    curves: list[tuple[list[float], list[float]] | None] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Whether the columns are independent per-label probabilities."""
        return self.task == "multilabel"

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``proba`` (rows: texts, columns: ``labels``)."""
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or proba.shape[1] != len(self.labels):
            raise ModelError(f"calibration: got probabilities of shape {proba.shape}, expected (n, {len(self.labels)})")
        if len(proba) == 0:
            return proba
        if self.method == "temperature":
            if self.multilabel:
                return np.column_stack([_sigmoid_t(proba[:, k], t) for k, t in enumerate(self.temperatures)])
            return _softmax_t(proba, self.temperatures[0])
        if self.method == "bcts":
            if self.multilabel:
                return np.column_stack([_sigmoid_t(proba[:, k], t, b)
                                        for k, (t, b) in enumerate(zip(self.temperatures, self.biases, strict=True))])
            return _softmax_tb(proba, self.temperatures[0], self.biases)
        out = proba.copy()
        for k, curve in enumerate(self.curves):
            if curve is not None:
                out[:, k] = np.interp(proba[:, k], curve[0], curve[1])
        if self.multilabel:
            return out
        if len(self.labels) == 2:
            out[:, 0] = 1.0 - out[:, 1]
            return out
        return _normalise(out)

    def params(self) -> dict:
        """The fitted parameters as JSON (meta.json gets the temperatures; isotonic: the breakpoint counts)."""
        if self.method in ("temperature", "bcts"):
            out = {"temperature": self.temperatures[0]} if not self.multilabel else \
                {"temperatures": dict(zip(self.labels, self.temperatures, strict=True))}
            if self.method == "bcts":
                out["biases"] = dict(zip(self.labels, self.biases, strict=True))
            return out
        return {"breakpoints": {label: (0 if c is None else len(c[0])) for label, c in zip(self.labels, self.curves, strict=True)}}

    def to_json(self) -> dict:
        """The whole calibrator as JSON (the content of the model directory's calibration file)."""
        body = {"format": FORMAT_VERSION, "method": self.method, "task": self.task, "labels": list(self.labels)}
        if self.method in ("temperature", "bcts"):
            body["temperatures"] = [float(t) for t in self.temperatures]
            if self.method == "bcts":
                body["biases"] = [float(b) for b in self.biases]
        else:
            body["curves"] = [None if c is None else {"x": [float(v) for v in c[0]], "y": [float(v) for v in c[1]]}
                              for c in self.curves]
        return body

    @classmethod
    def from_json(cls, data: dict, labels: Sequence[str], where: str | Path) -> Calibrator:
        """A calibrator read back from :meth:`to_json`'s output; anything malformed is a one-line ModelError naming ``where``."""
        def bad(why: str) -> ModelError:
            return ModelError(f"{where}: not a textclf calibration file: {why}")

        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise bad(f"expected an object with \"format\": {FORMAT_VERSION}")
        method, task = data.get("method"), data.get("task")
        if method not in ("temperature", "bcts", "isotonic"):
            raise bad(f"method {method!r} (expected temperature, bcts or isotonic)")
        if task not in ("multiclass", "multilabel"):
            raise bad(f"task {task!r}")
        if list(data.get("labels") or []) != list(labels):
            raise bad("its labels differ from the model's (meta.json labels)")
        k = len(labels)
        try:
            if method in ("temperature", "bcts"):
                temps = [float(t) for t in data["temperatures"]]
                if len(temps) != (k if task == "multilabel" else 1) or not all(np.isfinite(t) and t > 0 for t in temps):
                    raise bad("temperatures must be positive numbers, one (multi-class) or one per label")
                if method == "temperature":
                    return cls(method, task, list(labels), temperatures=temps)
                biases = [float(b) for b in data["biases"]]
                if len(biases) != k or not all(np.isfinite(b) for b in biases):
                    raise bad("bcts biases must be finite numbers, one per label")
                return cls(method, task, list(labels), temperatures=temps, biases=biases)
            curves: list = []
            for c in data["curves"]:
                if c is None:
                    curves.append(None)
                    continue
                x, y = np.asarray(c["x"], dtype=np.float64), np.asarray(c["y"], dtype=np.float64)
                if x.ndim != 1 or len(x) == 0 or x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) \
                        or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                    raise bad("an isotonic curve needs equal-length, finite, non-decreasing x and y")
                curves.append((x.tolist(), y.tolist()))
        except (KeyError, TypeError, ValueError):
            raise bad("missing or non-numeric parameters") from None
        if len(curves) != k:
            raise bad(f"{len(curves)} isotonic curves for {k} labels")
        return cls(method, task, list(labels), curves=curves)


# --------------------------------------------------------------------------- fitting
def _nll_multiclass(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], EPS, None))))


def _nll_binary(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def _best_temperature(loss) -> float:
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: loss(float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def _fit_bcts_multiclass(proba: np.ndarray, y: np.ndarray) -> tuple[float, list[float]]:
    """The temperature and per-class biases minimising the log-loss of ``softmax(log p / T + b)`` (scipy L-BFGS-B).

    The first class's bias is 0 (the softmax is unchanged by a shared shift); a class absent from ``y`` keeps 0.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    logp = np.log(np.clip(proba, EPS, None))
    k = proba.shape[1]
    present = np.bincount(y, minlength=k) > 0
    free = [j for j in range(1, k) if present[j]]
    rows = np.arange(len(y))

    def biases_of(w: np.ndarray) -> np.ndarray:
        b = np.zeros(k)
        b[free] = w[1:]
        return b

    def nll(w: np.ndarray) -> float:
        return float(-np.mean(log_softmax(logp / np.exp(w[0]) + biases_of(w), axis=1)[rows, y]))

    result = minimize(nll, np.zeros(1 + len(free)), method="L-BFGS-B", bounds=[LOG_T_BOUNDS] + [BIAS_BOUNDS] * len(free))
    return float(np.exp(result.x[0])), [float(b) for b in biases_of(result.x)]


def _fit_platt(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Temperature and bias of ``sigmoid(logit(p) / T + b)`` minimising the binary log-loss (one label)."""
    from scipy.optimize import minimize

    result = minimize(lambda w: _nll_binary(_sigmoid_t(p, float(np.exp(w[0])), float(w[1])), y), np.zeros(2),
                      method="L-BFGS-B", bounds=[LOG_T_BOUNDS, BIAS_BOUNDS])
    return float(np.exp(result.x[0])), float(result.x[1])


def _isotonic_curve(scores: np.ndarray, target: np.ndarray) -> tuple[list[float], list[float]] | None:
    """scikit-learn's isotonic fit of ``target`` on ``scores`` as breakpoints; None (identity) when one class is missing."""
    from sklearn.isotonic import IsotonicRegression

    target = np.asarray(target, dtype=np.float64)
    if target.min(initial=1.0) == target.max(initial=0.0):
        return None
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, target)
    return iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()


def _targets(y: np.ndarray, k: int, multilabel: bool) -> np.ndarray:
    """``y`` as an ``(n, k)`` 0/1 matrix (multi-class: the class indices one-hot)."""
    if multilabel:
        return np.asarray(y, dtype=bool)
    out = np.zeros((len(y), k), dtype=bool)
    out[np.arange(len(y)), y] = True
    return out


def fit_method(method: str, proba: np.ndarray, y: np.ndarray, labels: Sequence[str], task: str) -> Calibrator | None:
    """Fit ``temperature``, ``bcts`` or ``isotonic`` on ``proba`` (uncalibrated) and the gold ``y`` (None for ``none``).

    ``y``: class indices (multi-class) or an ``(n, L)`` boolean matrix (multi-label).
    """
    proba = np.asarray(proba, dtype=np.float64)
    k = len(labels)
    multilabel = task == "multilabel"
    if method == "none":
        return None
    yy = np.asarray(y, dtype=bool) if multilabel else None
    # the labels with both outcomes in y; the others keep T=1 and bias 0
    both = [0 < yy[:, j].sum() < len(yy) for j in range(k)] if multilabel else []
    if method == "temperature":
        if multilabel:
            temps = [(_best_temperature(lambda t, j=j: _nll_binary(_sigmoid_t(proba[:, j], t), yy[:, j]))
                      if both[j] else 1.0) for j in range(k)]
        else:
            temps = [_best_temperature(lambda t: _nll_multiclass(_softmax_t(proba, t), y))]
        return Calibrator("temperature", task, list(labels), temperatures=temps)
    if method == "bcts":
        if multilabel:
            fits = [_fit_platt(proba[:, j], yy[:, j]) if both[j] else (1.0, 0.0) for j in range(k)]
            return Calibrator("bcts", task, list(labels), temperatures=[t for t, _ in fits], biases=[b for _, b in fits])
        t, biases = _fit_bcts_multiclass(proba, np.asarray(y, dtype=np.int64))
        return Calibrator("bcts", task, list(labels), temperatures=[t], biases=biases)
    if method == "isotonic":
        target = _targets(y, k, multilabel)
        columns = [1] if (not multilabel and k == 2) else range(k)
        curves: list = [None] * k
        for j in columns:
            curves[j] = _isotonic_curve(proba[:, j], target[:, j])
        return Calibrator("isotonic", task, list(labels), curves=curves)
    raise ConfigError(f"calibration method {method!r}: choose one of {', '.join(CANDIDATES)}")


def cv_log_loss(method: str, proba: np.ndarray, y: np.ndarray, labels: Sequence[str], task: str,
                folds: int = CV_FOLDS, seed: int = 13) -> float:
    """Log-loss of ``method`` fitted on k-1 folds of (``proba``, ``y``) and applied to the held-out one, over all rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(proba)
    if task != "multilabel":
        present = np.bincount(y)
        smallest = present[present > 0].min() if present.any() else 0
        splitter = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed) if smallest >= 2 else \
            KFold(min(folds, n), shuffle=True, random_state=seed)
    else:
        splitter = KFold(min(folds, n), shuffle=True, random_state=seed)
    held = np.zeros_like(proba, dtype=np.float64)
    for train, test in splitter.split(proba, y if task != "multilabel" else None):
        cal = fit_method(method, proba[train], y[train], labels, task)
        held[test] = proba[test] if cal is None else cal.apply(proba[test])
    return log_loss_of(held, y, task)


def fit_calibration(method: str, proba: np.ndarray, y: np.ndarray, labels: Sequence[str], task: str,
                    seed: int = 13) -> tuple[Calibrator | None, dict]:
    """Fit ``method`` (``auto``: the candidate with the lowest cross-validated log-loss) on valid probabilities.

    Returns the calibrator (None when ``none`` is chosen) and the record for meta.json: ``method``
    (as asked), ``chosen``, ``params``, the valid ECE/Brier/log-loss before and after, and for ``auto``
    the cross-validated log-loss of every candidate.
    """
    method = check_method(method)
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) < MIN_ROWS:
        raise ConfigError(f"calibration needs at least {MIN_ROWS} labelled valid rows, got {len(proba)}")
    record: dict = {"method": method}
    chosen = method
    if method == "auto":
        scores = {m: cv_log_loss(m, proba, y, labels, task, seed=seed) for m in CANDIDATES}
        chosen = min(CANDIDATES, key=lambda m: (scores[m], CANDIDATES.index(m)))
        record["cv_log_loss"] = {m: round(v, 6) for m, v in scores.items()}
    cal = fit_method(chosen, proba, y, labels, task)
    after = proba if cal is None else cal.apply(proba)
    record.update({"chosen": chosen, "params": {} if cal is None else cal.params(), "n_valid": int(len(proba)),
                   "valid_before": calibration_metrics(proba, y, task), "valid_after": calibration_metrics(after, y, task)})
    return cal, record


# --------------------------------------------------------------------------- the file
def file_name(cal: Calibrator) -> str:
    """The calibration file's name: ``calibration-<first 12 hex of its SHA-256>.json``.

    A new calibration is a new file, so meta.json (written last) switches from the old to the new one
    at once: a crash in between leaves the model loading with its old calibration.
    """
    return f"{FILE_PREFIX}{hashlib.sha256(_dump(cal).encode()).hexdigest()[:12]}.json"


def _dump(cal: Calibrator) -> str:
    return json.dumps(cal.to_json(), indent=1, sort_keys=True) + "\n"


def write_calibrator(model_dir: str | Path, cal: Calibrator) -> str:
    """Write ``cal`` atomically into ``model_dir``; returns its file name (relative to the directory)."""
    from textclf.core.atomic import atomic_write_text

    name = file_name(cal)
    atomic_write_text(Path(model_dir) / name, _dump(cal))
    return name


def load_calibrator(model_dir: str | Path, meta: dict) -> Calibrator | None:
    """The calibrator meta.json names (``calibration.file``, listed in ``files``), or None when the model has none."""
    from textclf.core.integrity import FILES_KEY, listed_path

    block = meta.get(META_KEY)
    if not isinstance(block, dict) or not block.get("file"):
        return None
    path = listed_path(model_dir, block["file"], f"{META_KEY}.file", meta.get(FILES_KEY))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: the calibration file meta.json names is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the calibration file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    return Calibrator.from_json(data, list(meta["labels"]), path)


# --------------------------------------------------------------------------- one predictor
def calibrate_predictor(predictor, texts: Sequence[str], labels: Sequence, method: str, model_dir: str | Path,
                        seed: int = 13, batch_size: int = 1024) -> dict | None:
    """Fit ``method`` on ``predictor``'s uncalibrated probabilities of labelled ``texts``; write and attach it.

    The calibrator goes into ``model_dir`` (:func:`write_calibrator`) and becomes
    ``predictor.calibration``. Returns the meta.json block (:func:`fit_calibration`'s record plus
    ``file``), or None when ``method`` is ``none`` (the predictor is left uncalibrated). meta.json is
    the caller's to write (with the file in its ``files`` block).
    """
    from textclf.core.data import batched
    from textclf.core.predictor import gold_targets

    method = check_method(method)
    if method == "none":
        predictor.calibration = None
        return None
    chunks = [predictor.uncalibrated_proba(b) for b in batched(texts, batch_size)]
    proba = np.vstack(chunks) if chunks else np.zeros((0, len(predictor.labels)))
    y, rows = gold_targets(predictor, labels)
    cal, record = fit_calibration(method, proba[rows], y, predictor.labels, predictor.task, seed=seed)
    predictor.calibration = cal
    if cal is None:
        return record
    return {"file": write_calibrator(model_dir, cal), **record}

"""Ensembles across model families: a weighted average of the members' probabilities, or stacking.

``textclf ensemble --model_path A --model_path B ... --valid_path V --output_dir E`` builds one
with :func:`build_ensemble`; the result is a model directory of kind ``ensemble`` that
``load_predictor``, ``textclf predict``/``evaluate``/``leaderboard``/``report`` and
``tune-thresholds`` use like any other (the kind is registered in :mod:`textclf.core.registry`).

* ``auto`` (default): which of the three below generalises best is estimated, not assumed. A
  stratified, seeded k-fold split of valid (``--cv``, default 5) gives every candidate the same
  folds: the best single member (picked on the training folds), the weighted average (weights
  searched on the training folds) and stacking (the stacker fitted on the training folds, its own
  CV nested inside). Each predicts its held-out fold; the best single member is kept unless a
  combination beats it clearly on those predictions (:func:`choose_clear_winner`: a paired
  bootstrap of the macro F-beta difference whose one-sided 95 % lower bound must be above 0, a
  bar that rises as valid shrinks); among clear winners the better out-of-fold score wins, ties
  going to the simpler (weighted < stacking). The winner is fitted on all of valid. A single
  member is saved as one-hot weights (method ``weighted``): the ensemble decides exactly like
  it. meta.json keeps every candidate's CV score and the evidence (``ensemble_search.auto``,
  its ``rule``). ``max_model_mb`` bounds the sum of the members' sizes (:func:`fit_budget`).
* ``weighted``: ``P = sum_m w_m P_m`` with ``w`` on the simplex (``w_m >= 0``, sum 1),
  chosen on the validation split to maximise macro F-beta (``--beta``, default 1). With up to
  :data:`GRID_MAX_MEMBERS` members every point of the simplex grid with step ``--step`` (default
  0.05: 21 points for 2 members, 231 for 3, 1771 for 4) is scored; with more, coordinate ascent
  from the best of the uniform weights and each single member moves one weight at a time along
  that grid (the others rescaled) while the score rises. Ties of the (discrete) macro F-beta go
  to the lower valid log-loss, then to the more uniform weights. The single members are grid
  points, so the plain search's weights score >= the best member on valid. ``--objective logloss``
  minimises the valid log-loss of the average instead (a smooth, proper score: less swayed by
  the few valid documents that flip macro F-beta; ties go to the higher macro F-beta).
  The search is bagged (``--bags``, default :data:`DEFAULT_BAGS`; 0 is the plain search): the
  weights are the mean of those found on stratified bootstrap resamples of valid (Caruana's bagged
  ensemble selection), which follows valid's noise less than one search does.
* ``stacking``: a scikit-learn ``LogisticRegression`` on the members' concatenated valid
  probabilities, its ``C`` and ``class_weight`` picked by stratified k-fold cross-validation
  (``--cv``, macro F-beta), then refitted on all of valid (``stacker.skops``, saved with skops; the
  ``stacker.joblib`` pickle of an older version loads only with ``--trust-code``).

Before they are averaged, the members' probabilities are scaled by a temperature each, fitted on valid
(``--member_calibration temperature``, default; :mod:`.member_temperature`), so members of different
families are averaged on one scale of confidence; a member's own decisions do not change. Stacking
reads them as they are (its regression learns each member's scale); ``none`` averages them as they are.

Multi-label members (``meta.json`` ``"task": "multilabel"``, docs/multilabel.md): the ensemble
averages the members' independent per-label probabilities, ``weighted`` only (``auto`` is the
weighted search, whose grid holds every single member; ``stacking`` is refused in one line). The
weights maximise valid micro F-beta of the average cut at the global threshold
(``decision.threshold``, 0.5), ties going to the lower mean binary log-loss; bagging resamples
rows without strata. Every member must be multi-label with the same label set. The ensemble is
multi-label too: ``textclf tune-thresholds`` gives it per-label thresholds.

Members are referenced by their path relative to the ensemble directory, or copied into
``E/members/`` (``--copy``) so the directory moves as one. They must share one label set (a
different column order is realigned); their own decision thresholds are not used (the ensemble
combines probabilities), but the ensemble can get its own with ``textclf tune-thresholds``.

Caveat: the members were usually tuned on the same validation split, so their valid scores are
optimistic; weights, stacker and ``auto``'s folds learn from them all the same (cross-validation
guards against the ensemble's own over-fitting, not against the members'). Where data allows,
tune the members on one part of valid and build the ensemble on another, and score the result on
a test split.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError, TextclfError
from textclf.core.integrity import FILES_KEY, files_block
from textclf.core.meta import META_FILE
from textclf.core.predictor import Predictor

KIND = "ensemble"
#: how a saved ensemble combines its members (meta.json ``method``)
SAVED_METHODS = ("weighted", "stacking")
#: what ``--method`` accepts: ``auto`` cross-validates the candidates and saves the winner as one of SAVED_METHODS
METHODS = ("auto", "weighted", "stacking")
#: the candidates ``auto`` compares, simplest first (ties go to the earlier one)
CANDIDATES = ("single", "weighted", "stacking")
#: what the weighted search optimises on valid: macro F-beta (default) or the log-loss
OBJECTIVES = ("fbeta", "logloss")
STACKER_FILE = "stacker.skops"
MEMBERS_DIR = "members"
#: up to this many members the weight search scores the whole simplex grid
GRID_MAX_MEMBERS = 4
#: ``textclf ensemble --bags`` default: stratified bootstrap resamples the weight search is bagged over
DEFAULT_BAGS = 25
PACKAGES = ("scikit-learn", "skops")
#: ``auto``: a combination replaces the best single member only when the one-sided lower bound of
#: this confidence on its out-of-fold gain (paired bootstrap, RESAMPLES resamples) is above 0
CONFIDENCE = 0.95
RESAMPLES = 2000


#: why ``--method stacking`` is refused for multi-label members
STACKING_MULTILABEL = ("--method stacking: multi-label members are combined by their weighted per-label probabilities only "
                       "(use --method weighted or auto)")


class EnsembleError(TextclfError):
    """Members that cannot be combined (different label sets, no members, ...)."""


# --------------------------------------------------------------------------- labels and probabilities
def check_label_sets(members: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The shared label list (the first member's order); members with another label set are a one-line error."""
    if not members:
        raise EnsembleError("an ensemble needs at least one member (--model_path)")
    first_name, first = members[0]
    for name, labels in members[1:]:
        if set(labels) != set(first) or len(labels) != len(first):
            raise EnsembleError(f"ensemble members must share one label set: {first_name} has "
                                f"[{', '.join(first)}], {name} has [{', '.join(labels)}]")
    return list(first)


def check_tasks(members: Sequence[tuple[str, str]], expected: str | None = None) -> str:
    """The task every member shares (``multiclass`` or ``multilabel``); a mix is a one-line error."""
    tasks = [task for _, task in members]
    want = expected or tasks[0]
    for name, task in members:
        if task != want:
            raise EnsembleError(f"ensemble members must share one task: {name} is {task}, not {want} "
                                "(a multi-label model combines only with multi-label ones)")
    return want


def align_columns(proba: np.ndarray, from_labels: Sequence[str], to_labels: Sequence[str]) -> np.ndarray:
    """``proba`` with its columns (``from_labels`` order) reordered to ``to_labels``."""
    if list(from_labels) == list(to_labels):
        return proba
    index = {label: i for i, label in enumerate(from_labels)}
    return proba[:, [index[label] for label in to_labels]]


def weighted_average(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_m weights[m] * probas[m]`` (the weights sum to 1)."""
    out = np.zeros_like(np.asarray(probas[0], dtype=np.float64))
    for w, p in zip(weights, probas, strict=True):
        if w:
            out += float(w) * np.asarray(p, dtype=np.float64)
    return out


def stack_features(probas: Sequence[np.ndarray]) -> np.ndarray:
    """The stacker's input: the members' probabilities side by side, ``(n, members * classes)``."""
    return np.hstack([np.asarray(p, dtype=np.float64) for p in probas])


def stacker_proba(stacker, probas: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """The stacker's probabilities in class-index order (a class it never saw gets 0)."""
    features = stack_features(probas)
    out = np.zeros((features.shape[0], n_classes), dtype=np.float64)
    if features.shape[0]:
        out[:, np.asarray(stacker.classes_, dtype=np.int64)] = stacker.predict_proba(features)
    return out


# --------------------------------------------------------------------------- the Predictor
class EnsemblePredictor(Predictor):
    """Several model directories behind one Predictor: weighted probabilities or a stacked logistic regression."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, members: Sequence[Predictor], weights: Sequence[float] | None = None,
                 stacker=None):
        super().__init__(model_dir, meta)
        self.members = list(members)
        self.method = meta.get("method", "weighted")
        self.weights = np.asarray(weights if weights is not None else meta.get("weights") or [], dtype=np.float64)
        self.stacker = stacker
        #: per member, the temperature(s) its probabilities are scaled by before combining (None: as they are)
        self.temperatures = [r.get("temperature") for r in meta.get("members") or []] or None
        if self.temperatures is not None and len(self.temperatures) != len(self.members):
            raise ModelError(f"{self.model_dir / META_FILE}: {len(self.temperatures)} member record(s) for "
                             f"{len(self.members)} member(s)")
        if self.method == "weighted" and len(self.weights) != len(self.members):
            raise ModelError(f"{self.model_dir / META_FILE}: {len(self.weights)} weight(s) for {len(self.members)} member(s)")
        if self.method == "stacking" and stacker is None:
            raise ModelError(f"{self.model_dir}: a stacking ensemble needs its {STACKER_FILE}")

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> EnsemblePredictor:
        """Load every member (paths in meta.json are relative to ``model_dir``) and the stacker, if any."""
        from textclf.core.loading import load_predictor
        from textclf.core.meta import read_meta

        model_dir = Path(model_dir)
        meta = meta or read_meta(model_dir)
        if meta.get("method", "weighted") not in SAVED_METHODS:
            raise ModelError(f"{model_dir / META_FILE}: unknown ensemble method {meta.get('method')!r}; "
                             f"known: {', '.join(SAVED_METHODS)}")
        records = meta.get("members") or []
        if not records:
            raise ModelError(f"{model_dir / META_FILE}: an ensemble without members")
        members = []
        for record in records:
            path = (model_dir / record["path"]).resolve()
            if not path.exists():
                raise ModelError(f"{model_dir / META_FILE}: member {record['path']!r} not found at {path}")
            members.append(load_predictor(path, thresholds=False))
        check_label_sets([(str(m.model_dir), m.labels) for m in members])
        check_tasks([(str(m.model_dir), m.task) for m in members], meta.get("task") or "multiclass")
        if set(meta["labels"]) != set(members[0].labels):
            raise ModelError(f"{model_dir / META_FILE}: labels differ from the members' labels")
        stacker = None
        if meta.get("method") == "stacking":
            from textclf.core.integrity import inside_path
            from textclf.core.model_checks import check_label_indices
            from textclf.core.skops_io import load_sklearn

            path = Path(model_file) if model_file else inside_path(model_dir, meta.get("stacker_file", STACKER_FILE),
                                                                   "stacker_file")
            if not path.is_file():
                raise ModelError(f"{path}: stacking ensemble file not found")
            stacker = load_sklearn(path, what="stacker", attributes=("classes_",))
            check_label_indices(stacker, path, meta["labels"])
        return cls(model_dir, meta, members, meta.get("weights"), stacker)

    def member_probas(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Every member's probabilities on ``texts`` as the ensemble combines them: columns in this ensemble's
        label order, scaled by the member's temperature."""
        from textclf.services.compare.member_temperature import apply_temperatures

        out = []
        for i, (weight, member) in enumerate(itertools.zip_longest(self.weights, self.members, fillvalue=None)):
            if self.method == "weighted" and weight == 0:  # a zero weight needs no inference (nor scaling)
                out.append(np.zeros((len(texts), len(self.labels))))
                continue
            p = align_columns(member.predict_proba(texts), member.labels, self.labels)
            temps = None if not self.temperatures else [self.temperatures[i]]
            out.append(apply_temperatures([p], temps, self.task == "multilabel")[0])
        return out

    def tempered(self, probas: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The members' (label-aligned) probabilities scaled by their temperatures (:mod:`.member_temperature`)."""
        from textclf.services.compare.member_temperature import apply_temperatures

        return apply_temperatures(probas, self.temperatures, self.task == "multilabel")

    def combine(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from its members' (label-aligned) probabilities."""
        if self.method == "stacking":
            return stacker_proba(self.stacker, probas, len(self.labels))
        return weighted_average(probas, self.weights)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Weighted average of the members' probabilities (``weighted``), or the stacker's (``stacking``)."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return self.combine(self.member_probas(texts))


# --------------------------------------------------------------------------- weight search
def _objective(probas: Sequence[np.ndarray], y: np.ndarray, weights: np.ndarray, beta: float) -> tuple[float, float]:
    """Macro F-beta and log-loss of one weight vector; from counts, as the grid scores thousands of them.

    :func:`textclf.core.metrics.fbeta_from_counts` gives scikit-learn's macro F-beta without its
    per-call input checks (which would dominate a bagged grid search).
    """
    from textclf.core.metrics import class_counts, fbeta_from_counts

    p = weighted_average(probas, weights)
    if np.ndim(y) == 2:
        return _multilabel_objective(p, y, beta)
    score = float(fbeta_from_counts(*class_counts(y, p.argmax(axis=1), p.shape[1]), beta)) if len(y) else 0.0
    logloss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))) if len(y) else 0.0
    return score, logloss


def _multilabel_objective(p: np.ndarray, y: np.ndarray, beta: float,
                          threshold: float | None = None) -> tuple[float, float]:
    """Micro F-beta of ``p >= threshold`` (default the global 0.5) against the indicator matrix ``y``, and the mean binary log-loss."""
    from textclf.core.decision import DEFAULT_THRESHOLD

    y = np.asarray(y, dtype=bool)
    if not y.size:
        return 0.0, 0.0
    chosen = p >= (DEFAULT_THRESHOLD if threshold is None else threshold)
    tp, pred, true = float((chosen & y).sum()), float(chosen.sum()), float(y.sum())
    b2 = beta * beta
    denom = b2 * true + pred
    score = (1 + b2) * tp / denom if denom > 0 else 0.0
    q = np.clip(p, 1e-12, 1 - 1e-12)
    logloss = float(-np.mean(np.where(y, np.log(q), np.log1p(-q))))
    return float(score), logloss


def _better(a: tuple[float, float, float], b: tuple[float, float, float] | None) -> bool:
    """Lexicographic: higher score, then lower log-loss, then more uniform weights (each with a tolerance)."""
    if b is None:
        return True
    if abs(a[0] - b[0]) > 1e-12:
        return a[0] > b[0]
    if abs(a[1] - b[1]) > 1e-9:
        return a[1] < b[1]
    return a[2] < b[2] - 1e-12


def simplex_grid(n_members: int, resolution: int) -> list[np.ndarray]:
    """Every weight vector with entries in ``{0, 1/resolution, ..., 1}`` summing to 1."""
    points = []
    for bars in itertools.combinations(range(resolution + n_members - 1), n_members - 1):
        parts, last = [], -1
        for b in bars:
            parts.append(b - last - 1)
            last = b
        parts.append(resolution + n_members - 2 - last)
        points.append(np.asarray(parts, dtype=np.float64) / resolution)
    return points


def search_weights(probas: Sequence[np.ndarray], y: np.ndarray, beta: float = 1.0, step: float = 0.05,
                   max_rounds: int = 50, objective: str = "fbeta") -> dict:
    """Simplex weights maximising valid macro F-beta of the weighted average (see the module docstring).

    ``objective="logloss"`` minimises the valid log-loss instead (ties: higher macro F-beta).
    Returns ``{"weights", "score", "logloss", "strategy", "evaluated", "single": [score of each member]}``.
    """
    if objective not in OBJECTIVES:
        raise EnsembleError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    n = len(probas)
    resolution = max(1, int(round(1 / step)))
    uniform = np.full(n, 1.0 / n)
    evaluated = 0
    best: tuple[float, float, float] | None = None
    best_w = uniform

    def consider(w: np.ndarray) -> None:
        nonlocal best, best_w, evaluated
        score, logloss = _objective(probas, y, w, beta)
        evaluated += 1
        spread = float(np.abs(w - uniform).sum())
        key = (score, logloss, spread) if objective == "fbeta" else (-logloss, -score, spread)
        if _better(key, best):
            best, best_w = key, w

    singles = [_objective(probas, y, np.eye(n)[m], beta)[0] for m in range(n)]
    if n == 1:
        consider(np.ones(1))
        strategy = "single member"
    elif n <= GRID_MAX_MEMBERS and math.comb(resolution + n - 1, n - 1) <= 20000:
        for w in simplex_grid(n, resolution):
            consider(w)
        strategy = f"simplex grid, step 1/{resolution}"
    else:
        for w in [uniform, *np.eye(n)]:
            consider(w)
        values = np.arange(resolution + 1) / resolution
        for _ in range(max_rounds):
            start = best
            for m in range(n):
                for v in values:
                    w = best_w.copy()
                    rest = 1.0 - w[m]
                    if rest > 1e-12:
                        w = w * (1.0 - v) / rest
                    else:  # moving off a vertex: spread the remainder evenly
                        w = np.full(n, (1.0 - v) / (n - 1))
                    w[m] = v
                    consider(np.clip(w, 0.0, 1.0) / np.clip(w, 0.0, 1.0).sum())
            if best == start:
                break
        strategy = f"coordinate ascent, step 1/{resolution}"
    assert best is not None
    score, logloss = _objective(probas, y, best_w, beta)
    return {"weights": [float(w) for w in best_w], "score": score, "logloss": logloss, "objective": objective,
            "strategy": strategy, "evaluated": evaluated, "single": singles}


def bootstrap_indices(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stratified bootstrap resample of ``range(len(y))``: every class keeps its count (label sets, ``y`` 2-D: plain rows)."""
    if np.ndim(y) == 2:
        return rng.choice(len(y), len(y))
    parts = [rng.choice(idx, len(idx)) for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def bagged_search_weights(probas: Sequence[np.ndarray], y: np.ndarray, beta: float = 1.0, step: float = 0.05,
                          bags: int = 0, seed: int = 13, objective: str = "fbeta") -> dict:
    """:func:`search_weights`, bagged: the mean of the weights it finds on ``bags`` stratified bootstrap resamples.

    Caruana et al.'s bagged ensemble selection: one search follows the few valid documents that
    flip macro F-beta; the average over resamples keeps what most resamples agree on and is
    closer to equal weights where valid cannot tell the members apart. ``bags=0`` is the plain
    search. The result's ``score``/``logloss`` are the averaged weights' on all of ``y``;
    ``bag_weights`` lists every resample's weights.
    """
    plain = search_weights(probas, y, beta, step, objective=objective)
    if bags <= 0 or len(probas) == 1:
        return {**plain, "bags": 0}
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(bags):
        idx = bootstrap_indices(y, rng)
        found.append(search_weights([p[idx] for p in probas], y[idx], beta, step, objective=objective)["weights"])
    weights = np.mean(found, axis=0)
    weights = weights / weights.sum()
    score, logloss = _objective(probas, y, weights, beta)
    return {**plain, "weights": [float(w) for w in weights], "score": score, "logloss": logloss, "bags": bags,
            "strategy": f"bagged: mean of {bags} {'' if np.ndim(y) == 2 else 'stratified '}bootstrap searches "
                        f"({plain['strategy']})",
            "evaluated": plain["evaluated"] * (bags + 1), "unbagged_weights": plain["weights"],
            "bag_weights": [[round(float(w), 4) for w in ws] for ws in found]}


def best_member(probas: Sequence[np.ndarray], y: np.ndarray, beta: float = 1.0) -> int:
    """Index of the member with the highest macro F-beta on ``y`` (ties: lower log-loss, then the first)."""
    keys = []
    for m in range(len(probas)):
        score, logloss = _objective(probas, y, np.eye(len(probas))[m], beta)
        keys.append((-round(score, 12), round(logloss, 9), m))
    return min(keys)[2]


def fit_stacker(probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, beta: float = 1.0, cv: int = 5, seed: int = 13):
    """A logistic regression on the members' probabilities, C and class_weight chosen by stratified k-fold CV.

    Returns ``(fitted stacker, info dict)``; the info holds the chosen params and the CV macro F-beta.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import fbeta_score, make_scorer
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
    except ImportError:
        raise EnsembleError("--method stacking needs scikit-learn, which is not installed; "
                            "run: pip install 'textclf[sklearn]'") from None
    counts = np.bincount(y, minlength=n_classes)
    present = counts[counts > 0]
    folds = int(min(cv, present.min())) if len(present) else 0
    if len(present) < 2 or folds < 2:
        raise EnsembleError(f"--method stacking needs at least 2 classes with 2+ validation examples each for "
                            f"{cv}-fold cross-validation (class counts: {counts.tolist()})")
    features = stack_features(probas)
    grid = {"C": [0.01, 0.1, 1.0, 10.0, 100.0], "class_weight": [None, "balanced"]}
    scorer = make_scorer(fbeta_score, beta=beta, average="macro", labels=list(range(n_classes)), zero_division=0)
    search = GridSearchCV(LogisticRegression(max_iter=2000, random_state=seed), grid, scoring=scorer,
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), refit=True)
    search.fit(features, y)
    info = {"params": {k: v for k, v in search.best_params_.items()}, "cv_folds": folds,
            "cv_score": float(search.best_score_), "features": int(features.shape[1])}
    return search.best_estimator_, info


# --------------------------------------------------------------------------- auto: choose by cross-validation
def _fit_candidate(name: str, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, opts: dict):
    """Fit candidate ``name`` on ``(probas, y)``: a member index (single), a weight vector, or a stacker."""
    if name == "single":
        return best_member(probas, y, opts["beta"])
    if name == "weighted":
        return np.asarray(bagged_search_weights(probas, y, opts["beta"], opts["step"], opts["bags"], opts["seed"],
                                                opts["objective"])["weights"])
    return fit_stacker(probas, y, n_classes, opts["beta"], opts["cv"], opts["seed"])[0]


def _predict_candidate(name: str, fitted, probas: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Class indices a fitted candidate predicts from the members' probabilities."""
    if name == "single":
        return np.asarray(probas[fitted]).argmax(axis=1)
    if name == "weighted":
        return weighted_average(probas, fitted).argmax(axis=1)
    return stacker_proba(fitted, probas, n_classes).argmax(axis=1)


def _cv_candidate(name: str, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int,
                  folds: Sequence[tuple[np.ndarray, np.ndarray]], opts: dict) -> dict:
    """Pooled out-of-fold macro F-beta of one candidate (fitted on each training part, predicting its held-out part)."""
    from textclf.services.compare.member_temperature import apply_temperatures, fit_temperatures
    from textclf.services.compare.thresholds import macro_fbeta

    pred = np.empty(len(y), dtype=np.int64)
    fitted_per_fold = []
    for train, held in folds:
        train_p, held_p = [p[train] for p in probas], [p[held] for p in probas]
        if opts.get("member_calibration") == "temperature" and name != "stacking":  # fitted on the training part only
            temps = fit_temperatures(train_p, y[train])
            multilabel = np.ndim(y) == 2
            train_p, held_p = apply_temperatures(train_p, temps, multilabel), apply_temperatures(held_p, temps, multilabel)
        try:
            fitted = _fit_candidate(name, train_p, y[train], n_classes, opts)
        except EnsembleError as e:  # stacking on a fold whose classes are too small for its inner CV
            return {"cv_score": None, "skipped": str(e)}
        pred[held] = _predict_candidate(name, fitted, held_p, n_classes)
        fitted_per_fold.append(fitted)
    out: dict = {"cv_score": macro_fbeta(y, pred, n_classes, opts["beta"]), "oof": pred}
    if name == "single":
        out["fold_members"] = [int(m) for m in fitted_per_fold]
    elif name == "weighted":
        out["fold_weights"] = [[round(float(w), 4) for w in ws] for ws in fitted_per_fold]
    return out


def paired_gain(y: np.ndarray, pred: np.ndarray, base: np.ndarray, n_classes: int, beta: float = 1.0,
                confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 13) -> dict:
    """How much ``pred`` beats ``base`` in macro F-beta on ``y``: a paired bootstrap (``scipy.stats.bootstrap``).

    Rows are resampled with both predictions kept together; the statistic is the difference of
    the two macro F-betas (:func:`textclf.core.metrics.fbeta_from_counts`, vectorised). Returns
    ``{"gain", "ci_low"`` (the one-sided ``confidence`` lower bound, percentile method)``, "se",
    "p_not_better"`` (share of resamples where ``pred`` does not win)``, "rows"}``. The interval
    widens as valid shrinks (about ``1/sqrt(rows)``), which is what scales the bar to valid's size.
    """
    import warnings

    from scipy.stats import bootstrap

    from textclf.core.metrics import class_counts, fbeta_from_counts

    y, pred, base = (np.asarray(a, dtype=np.int64) for a in (y, pred, base))

    def statistic(t: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return fbeta_from_counts(*class_counts(t, a, n_classes), beta) - fbeta_from_counts(*class_counts(t, b, n_classes), beta)

    gain = float(statistic(y, pred, base))
    if len(y) < 2 or np.array_equal(pred, base):
        return {"gain": gain, "ci_low": gain, "se": 0.0, "p_not_better": 1.0 if gain <= 0 else 0.0, "rows": int(len(y))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bootstrap((y, pred, base), statistic, n_resamples=resamples, batch=200, vectorized=True, paired=True,
                           confidence_level=confidence, alternative="greater", method="percentile",
                           rng=np.random.default_rng(seed))
    dist = np.asarray(result.bootstrap_distribution)
    return {"gain": round(gain, 6), "ci_low": round(float(result.confidence_interval.low), 6),
            "se": round(float(result.standard_error), 6), "p_not_better": round(float(np.mean(dist <= 1e-12)), 4),
            "rows": int(len(y))}


def choose_clear_winner(candidates: dict, y: np.ndarray, n_classes: int, beta: float, seed: int,
                        confidence: float = CONFIDENCE) -> tuple[str | None, dict]:
    """``auto``'s rule: the best single member, unless a combination beats it clearly out of fold.

    Every combination (weighted, stacking) is compared with the single-member candidate on the
    same out-of-fold predictions by :func:`paired_gain`; it counts as a clear win when the lower
    bound of its one-sided ``confidence`` interval is above 0. Among clear winners the higher
    out-of-fold score wins (ties: the simpler). Returns the chosen name and the evidence
    (per combination: gain, bound, SE, share of resamples not better; the decision and its reason).
    """
    single = candidates.get("single") or {}
    if single.get("cv_score") is None:
        return None, {}
    evidence: dict = {"test": f"paired bootstrap of the out-of-fold macro F-beta difference (scipy, {RESAMPLES} "
                              f"resamples, one-sided {confidence:.0%} lower bound > 0)", "confidence": confidence,
                      "rows": int(len(y)), "versus_single": {}}
    winners = []
    for name, c in candidates.items():
        if name == "single" or c.get("cv_score") is None:
            continue
        check = paired_gain(y, c["oof"], single["oof"], n_classes, beta, confidence, RESAMPLES, seed)
        check["clear_win"] = bool(check["ci_low"] > 0)
        evidence["versus_single"][name] = check
        if check["clear_win"]:
            winners.append(name)
    chosen = "single"
    for name in winners:  # CANDIDATES order: a later one must score strictly higher
        if chosen == "single" or candidates[name]["cv_score"] > candidates[chosen]["cv_score"] + 1e-12:
            chosen = name
    if chosen == "single":
        shown = "; ".join(f"{n} {e['gain']:+.4f} (lower bound {e['ci_low']:+.4f})" for n, e in evidence["versus_single"].items())
        reason = ("no combination beats the best single member clearly out of fold"
                  + (f": {shown}" if shown else ""))
    else:
        e = evidence["versus_single"][chosen]
        reason = (f"{chosen} beats the best single member out of fold by {e['gain']:+.4f} macro F-beta, lower bound "
                  f"{e['ci_low']:+.4f} > 0 on {e['rows']} rows")
    evidence.update(decision=chosen, reason=reason)
    return chosen, evidence


def select_method(probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, beta: float = 1.0, cv: int = 5,
                  seed: int = 13, step: float = 0.05, bags: int = 0, objective: str = "fbeta",
                  member_calibration: str = "temperature") -> dict:
    """``--method auto``: estimate each candidate's out-of-sample macro F-beta by stratified k-fold CV on valid.

    Candidates (:data:`CANDIDATES`): the best single member (chosen on the training folds), the
    weighted average (weights searched on the training folds) and stacking (the stacker fitted on
    the training folds, its own CV nested inside them). Every candidate sees the same folds and
    predicts its held-out folds; the best single member is kept unless a combination beats it
    clearly on those out-of-fold predictions (:func:`choose_clear_winner`: a paired bootstrap
    whose bar grows as valid shrinks). ``member_calibration="temperature"``: each fold scales the
    members by temperatures fitted on its training part (:mod:`.member_temperature`) for the single
    member and the weighted average; stacking reads the raw probabilities.
    Returns ``{"folds", "seed", "metric", "candidates": {name:
    {"cv_score", ...}}, "rule": {evidence}, "chosen"}``.
    """
    from textclf.core.metrics import beta_name
    from textclf.services.compare.thresholds import n_folds, stratified_folds

    y = np.asarray(y, dtype=np.int64)
    k = n_folds(y, cv)
    if k < 2 or len(np.unique(y)) < 2:
        raise EnsembleError(f"--method auto needs at least 2 classes with 2+ validation examples each for its "
                            f"cross-validation (class counts: {np.bincount(y, minlength=n_classes).tolist()})")
    folds = stratified_folds(y, k, seed)
    opts = {"beta": beta, "step": step, "bags": bags, "seed": seed, "objective": objective, "cv": cv,
            "member_calibration": member_calibration}
    names = CANDIDATES if len(probas) > 1 else ("single",)
    candidates = {name: _cv_candidate(name, probas, y, n_classes, folds, opts) for name in names}
    chosen, rule = choose_clear_winner(candidates, y, n_classes, beta, seed)
    for c in candidates.values():
        c.pop("oof", None)
    return {"folds": k, "seed": seed, "metric": f"macro_{beta_name(beta)}", "candidates": candidates, "rule": rule,
            "chosen": chosen}


def fit_method(method: str, probas: Sequence[np.ndarray], y: np.ndarray, n_classes: int, beta: float = 1.0,
               step: float = 0.05, cv: int = 5, seed: int = 13, bags: int = 0, objective: str = "fbeta",
               member_calibration: str = "temperature") -> tuple:
    """Fit ``method`` (auto, weighted, stacking; ``single`` too) on all of valid.

    Returns ``(saved method, weights or None, stacker or None, search info)``. ``auto`` runs
    :func:`select_method` first (its report lands in ``search["auto"]``); a single member is
    saved as one-hot weights (method ``weighted``), so the ensemble decides exactly like it.
    ``member_calibration="temperature"`` (default) scales every member by a temperature fitted on
    valid before they are averaged (:mod:`.member_temperature`); the temperatures are in
    ``search["member_temperatures"]`` (None with ``"none"``, and for stacking, which reads the raw ones).
    """
    from textclf.services.compare.member_temperature import MODES, apply_temperatures, fit_temperatures

    if member_calibration not in MODES:
        raise EnsembleError(f"--member_calibration {member_calibration!r}: choose one of {', '.join(MODES)}")
    raw = probas
    n = len(probas)
    singles = [_objective(probas, y, np.eye(n)[m], beta)[0] for m in range(n)]  # a temperature keeps every decision
    selection = None
    if np.ndim(y) == 2:  # label sets: the weighted search (its grid holds every single member)
        if method == "stacking":
            raise EnsembleError(STACKING_MULTILABEL)
        method = "weighted"
    if method == "auto":
        selection = select_method(raw, y, n_classes, beta, cv, seed, step, bags, objective, member_calibration)
        method = selection["chosen"]
    temperatures = None  # stacking reads the raw probabilities: no temperatures to fit
    if member_calibration == "temperature" and method != "stacking":
        temperatures = fit_temperatures(probas, y)
        probas = apply_temperatures(probas, temperatures, np.ndim(y) == 2)
    weights, stacker = None, None
    if method == "single":
        m = best_member(probas, y, beta)
        weights = [float(w) for w in np.eye(n)[m]]
        score, logloss = _objective(probas, y, np.asarray(weights), beta)
        search = {"score": score, "logloss": logloss, "strategy": "single member (best on valid)", "member": m}
    elif method == "weighted":
        search = bagged_search_weights(probas, y, beta, step, bags, seed, objective)
        weights = search["weights"]
        if np.ndim(y) == 2 and max(singles) > search["score"]:  # label sets: never below the best member on valid
            m = int(np.argmax(singles))
            weights = [float(w) for w in np.eye(n)[m]]
            score, logloss = _objective(probas, y, np.asarray(weights), beta)
            search = {**search, "weights": weights, "score": score, "logloss": logloss, "member": m,
                      "strategy": f"best member on valid (the bagged weights scored {search['score']:.4f})"}
    else:  # the stacker learns each member's scale itself: it reads their probabilities as they are
        stacker, search = fit_stacker(raw, y, n_classes, beta, cv, seed)
    search = {**search, "single": singles, "chosen": method, "member_calibration": member_calibration,
              "member_temperatures": temperatures}
    if selection is not None:
        search["auto"] = selection
    return ("stacking" if stacker is not None else "weighted"), weights, stacker, search


def describe_auto(search: dict, member_names: Sequence[str]) -> str:
    """One line on what ``--method auto`` compared and chose (empty when it did not run)."""
    auto = search.get("auto")
    if not auto:
        return ""
    parts = []
    for name, c in auto["candidates"].items():
        if c["cv_score"] is None:
            parts.append(f"{name} skipped ({c.get('skipped')})")
            continue
        detail = ""
        if name == "single":
            picks = [member_names[m] for m in c["fold_members"]]
            detail = " (" + ", ".join(f"{p} in {picks.count(p)}/{len(picks)} folds" for p in dict.fromkeys(picks)) + ")"
        parts.append(f"{name} {c['cv_score']:.4f}{detail}")
    reason = (auto.get("rule") or {}).get("reason")
    return (f"auto: out-of-fold {auto['metric']} ({auto['folds']}-fold stratified CV on valid, seed {auto['seed']}): "
            f"{'; '.join(parts)} -> {auto['chosen']}" + (f" ({reason})" if reason else ""))


# --------------------------------------------------------------------------- size budget
def member_bytes(model_dir: Path, meta: dict) -> int:
    """A member's size: the model files its meta.json records (``files``), else its whole directory (with nested members)."""
    from textclf.services.compare.leaderboard import model_size_bytes

    files = meta.get(FILES_KEY) or {}
    sizes = [r.get("bytes") for r in files.values() if isinstance(r, dict)]
    if sizes and all(isinstance(b, int) for b in sizes) and not meta.get("members"):
        return int(sum(sizes))
    return model_size_bytes(Path(model_dir), meta)


def fit_budget(names: Sequence[str], sizes: Sequence[int], scores: Sequence[float], max_mb: float | None) -> tuple[list[int], dict]:
    """The members to keep under ``max_mb`` MiB (sum of member sizes), best valid score alone first, and a record.

    A member that does not fit what the better ones left is skipped (one message each); when not
    even one member fits, a one-line EnsembleError. ``max_mb`` None keeps every member.
    """
    mb = [b / 2**20 for b in sizes]
    record: dict = {"max_model_mb": max_mb, "members_mb": [round(m, 3) for m in mb]}
    if max_mb is None:
        return list(range(len(names))), {**record, "total_mb": round(sum(mb), 3), "skipped": []}
    if not max_mb > 0:
        raise EnsembleError(f"--max_model_mb must be > 0, got {max_mb:g}")
    keep, skipped, used = [], [], 0.0
    for i in sorted(range(len(names)), key=lambda i: (-scores[i], i)):
        if used + mb[i] <= max_mb:
            keep.append(i)
            used += mb[i]
        else:
            skipped.append({"member": names[i], "mb": round(mb[i], 3), "valid_score_alone": scores[i],
                            "reason": f"skipped {names[i]} ({mb[i]:.1f} MB): the better members kept use {used:.1f} MB "
                                      f"of --max_model_mb {max_mb:g}"})
    if not keep:
        raise EnsembleError(f"--max_model_mb {max_mb:g}: no member fits (the smallest, {names[int(np.argmin(mb))]}, is "
                            f"{min(mb):.1f} MB)")
    return sorted(keep), {**record, "total_mb": round(used, 3), "skipped": skipped}


# --------------------------------------------------------------------------- building
def _member_name(path: Path, meta: dict) -> str:
    return f"{path.name} ({meta.get('kind')})"


def _common(values: Sequence) -> object | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def build_ensemble(model_paths: Sequence[str | Path], valid_path: str | Path, output_dir: str | Path,
                   method: str = "auto", beta: float = 1.0, copy: bool = False, test_path: str | Path | None = None,
                   step: float = 0.05, cv: int = 5, seed: int = 13, data_format: str | None = None,
                   text_column: str = "text", label_column: str = "label", batch_size: int = 1024,
                   echo: bool = False, objective: str = "fbeta", bags: int = DEFAULT_BAGS,
                   max_model_mb: float | None = None, member_calibration: str = "temperature") -> dict:
    """Build an ensemble of ``model_paths`` on ``valid_path`` into ``output_dir``; return its meta.json content.

    ``method`` is one of :data:`METHODS` (``auto``: see :func:`select_method`); ``bags`` bootstrap
    resamples bag the weight search (0: the plain grid search). ``max_model_mb`` bounds the sum of
    the members' sizes (:func:`fit_budget`: the best members alone on valid first, the rest skipped).
    ``member_calibration`` (``temperature`` or ``none``): scale each member by a temperature fitted on
    valid before combining (:mod:`.member_temperature`).
    """
    import datetime as _dt

    from textclf.core.atomic import atomic_write_text
    from textclf.core.data import batched, read_labelled
    from textclf.core.loading import _resolve, load_predictor
    from textclf.core.meta import build_meta, read_meta, write_meta
    from textclf.core.metrics import beta_name, classification_metrics, format_report, multilabel_metrics
    from textclf.core.predictor import evaluate_predictor
    from textclf.services.compare.label_thresholds import indicator_matrix
    from textclf.services.compare.thresholds import label_indices

    if method not in METHODS:
        raise EnsembleError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if beta <= 0:
        raise EnsembleError(f"--beta must be > 0, got {beta:g}")
    if objective not in OBJECTIVES:
        raise EnsembleError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if not 0 < step <= 0.5:
        raise EnsembleError(f"--step must be in (0, 0.5], got {step:g}")
    if bags < 0:
        raise EnsembleError(f"--bags must be >= 0, got {bags}")
    output_dir = Path(output_dir)
    dirs = [_resolve(p)[0] for p in model_paths]
    if not dirs:
        raise EnsembleError("an ensemble needs at least one member (--model_path)")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise EnsembleError("the same model directory is given twice as --model_path")
    for d in dirs:
        if output_dir.resolve() == d.resolve() or d.resolve() in output_dir.resolve().parents:
            raise EnsembleError(f"--output_dir {output_dir} must not be a member ({d}) or lie inside one")
    if (output_dir / META_FILE).exists() and read_meta(output_dir).get("kind") != KIND:
        raise EnsembleError(f"--output_dir {output_dir} holds a {read_meta(output_dir).get('kind')} model; "
                            "choose a new directory")
    metas = [read_meta(d) for d in dirs]
    members = [load_predictor(d, thresholds=False) for d in dirs]
    labels = check_label_sets([(_member_name(d, m), p.labels) for d, m, p in zip(dirs, metas, members, strict=True)])
    task = check_tasks([(_member_name(d, m), p.task) for d, m, p in zip(dirs, metas, members, strict=True)])
    multilabel = task == "multilabel"
    if multilabel and method == "stacking":
        raise EnsembleError(STACKING_MULTILABEL)
    read = {"task": task, "label_separator": members[0].label_separator} if multilabel else {}
    valid = read_labelled(valid_path, data_format, text_column, label_column, min_classes=0, **read)
    lines = valid.line_numbers
    y = indicator_matrix(valid.labels, labels, valid_path, lines) if multilabel else label_indices(valid.labels, labels, valid_path, lines)

    def probas_of(texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for p in members:
            chunks = [p.predict_proba(b) for b in batched(texts, batch_size)]
            proba = np.vstack(chunks) if chunks else np.zeros((0, len(labels)))
            out.append(align_columns(proba, p.labels, labels))
        return out

    valid_probas = probas_of(valid.texts)
    names = [_member_name(d, m) for d, m in zip(dirs, metas, strict=True)]
    alone = [_objective(valid_probas, y, np.eye(len(members))[m], beta)[0] for m in range(len(members))]
    keep, size = fit_budget(names, [member_bytes(d, m) for d, m in zip(dirs, metas, strict=True)], alone, max_model_mb)
    if echo and size["skipped"]:
        import click

        for skipped in size["skipped"]:
            click.echo(skipped["reason"], err=True)
    if len(keep) < len(members):
        dirs, metas, members = [dirs[i] for i in keep], [metas[i] for i in keep], [members[i] for i in keep]
        valid_probas = [valid_probas[i] for i in keep]
    saved, weights, stacker, search = fit_method(method, valid_probas, y, len(labels), beta, step, cv, seed, bags, objective,
                                                 member_calibration)
    temperatures = search.get("member_temperatures") or [None] * len(members)

    output_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (d, meta) in enumerate(zip(dirs, metas, strict=True)):
        if copy:
            target = output_dir / MEMBERS_DIR / f"{i}_{d.resolve().name}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(d, target)
            rel = target.relative_to(output_dir).as_posix()
        else:
            rel = Path(os.path.relpath(d.resolve(), output_dir.resolve())).as_posix()
        records.append({"path": rel, "kind": meta.get("kind"), "name": d.resolve().name,
                        "data_sha256": meta.get("data_sha256"), "weight": None if weights is None else weights[i],
                        "valid_score_alone": search["single"][i], "temperature": temperatures[i]})
    if stacker is not None:
        from textclf.core.skops_io import save_sklearn

        save_sklearn(stacker, output_dir / STACKER_FILE)
    elif (output_dir / STACKER_FILE).exists():
        (output_dir / STACKER_FILE).unlink()

    config = {"members": [str(p) for p in model_paths], "method": method, "beta": beta, "objective": objective, "copy": copy,
              "step": step, "bags": bags, "cv": cv, "seed": seed, "max_model_mb": max_model_mb,
              "member_calibration": member_calibration, "valid_path": str(valid_path),
              "test_path": None if test_path is None else str(test_path)}
    if multilabel:  # how predictions join a label set (Predictor.label_separator)
        config["data"] = {"task": task, "label_separator": members[0].label_separator}
    tmp_meta = {"kind": KIND, "labels": labels, "method": saved, "weights": weights, "members": records, "task": task,
                "config": config}
    predictor = EnsemblePredictor(output_dir, tmp_meta, members, weights, stacker)
    label_order = list(labels)
    ens_valid = predictor.combine(predictor.tempered(valid_probas))
    if multilabel:
        metrics = {"valid": multilabel_metrics(valid.labels, predictor.labels_of(predictor.decide(ens_valid)), label_order)}
    else:
        metrics = {"valid": classification_metrics(valid.labels, [labels[i] for i in ens_valid.argmax(axis=1)], label_order)}
    data_paths = [m.get("data") or {} for m in metas]
    test = test_path or _common([p.get("test") for p in data_paths])
    if test_path is not None:
        ds = read_labelled(test_path, data_format, text_column, label_column, min_classes=0, **read)
        metrics["test"] = evaluate_predictor(predictor, ds.texts, ds.labels, batch_size)
    report = "\n\n".join(format_report(m, title=f"== {name} ({valid_path if name == 'valid' else test_path})")
                         for name, m in metrics.items())
    atomic_write_text(output_dir / "metrics.txt", report + "\n")

    search_block = {"metric": f"{'micro' if multilabel else 'macro'}_{beta_name(beta)}",
                    "valid_score": search.get("score", search.get("cv_score")),
                    **{k: v for k, v in search.items() if k not in ("weights",)},
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    meta = build_meta(KIND, labels, config, metrics, _common([m.get("data_sha256") for m in metas]),
                      PACKAGES if saved == "stacking" else (),
                      method=saved, weights=weights, members=records, ensemble_search=search_block, task=task,
                      model_mb=size["total_mb"], size=size,
                      data={"train": _common([p.get("train") for p in data_paths]), "valid": str(valid_path), "test": test},
                      **({"stacker_file": STACKER_FILE, FILES_KEY: files_block(output_dir, [STACKER_FILE])}
                         if saved == "stacking" else {}))
    write_meta(output_dir, meta)
    if echo:
        import click

        click.echo(report)
        line = describe_auto(search, [r["name"] for r in records])
        click.echo(f"\n{line}" if line else "")
        chosen = f"{method}: {search['chosen']}" if method == "auto" else method
        click.echo(f"ensemble ({chosen}) written to {output_dir}")
    return meta


def weights_table(meta: dict) -> str:
    """A markdown table of an ensemble's members: path, kind, weight, temperature, valid score alone.

    The temperature column is the mean over labels for a multi-label member; "-" where none was fitted.
    """
    rows = ["| member | kind | weight | temperature | valid score alone |", "|---|---|---:|---:|---:|"]
    for r in meta.get("members") or []:
        weight = "-" if r.get("weight") is None else f"{r['weight']:.2f}"
        temps = r.get("temperature")
        temperature = "-" if not temps else f"{sum(temps) / len(temps):.2f}"
        alone = r.get("valid_score_alone")
        rows.append(f"| {r['path']} | {r.get('kind')} | {weight} | {temperature} | {'-' if alone is None else f'{alone:.4f}'} |")
    return "\n".join(rows)

"""A scikit-learn estimator over every textclf family: ``TextClassifier`` and ``load``.

``TextClassifier`` is a real :class:`sklearn.base.BaseEstimator` and ``ClassifierMixin``: it fits
on in-memory texts and labels, works in a ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``
(even across families), pickles, and saves the same model directory ``textclf train`` writes::

    import textclf
    from sklearn.model_selection import GridSearchCV

    clf = textclf.TextClassifier("fasttext", params={"model.epoch": 10, "search.n_trials": 0})
    clf.fit(texts, labels)                      # lists, arrays or pandas Series; labels str or int
    clf.predict(["what a day"]), clf.predict_proba(["what a day"]), clf.classes_
    clf.save("models/ft")                       # textclf predict --model_path models/ft ... reads it
    same = textclf.load("models/ft")            # any textclf model directory, CLI-trained ones too

    grid = GridSearchCV(textclf.TextClassifier(params={"search.n_trials": 0, "embeddings.encoder.name": "tfidf_svd"}),
                        [{"family": ["fasttext"], "model.lr": [0.1, 0.5]},
                         {"family": ["embeddings"], "classifiers.logreg.C": [0.1, 1.0]}], scoring="f1_macro")

**Parameters.** ``family`` (a registered family; plug-in files in ``code``), ``config`` (a JSON
config file's path or a dict, as ``--config``), ``params`` (dotted config keys to values, as
``--set``), ``valid_size`` and ``random_state`` (the validation rows held out of ``(X, y)`` when
``fit`` gets no ``X_valid``/``y_valid``: a stratified split, :func:`textclf.core.data.stratified_split`,
seeded by ``random_state`` or else the config's ``seed``) and ``verbose`` (print the run's
report). The effective config is built as for ``textclf train <family>``: the family's defaults <
``config`` < ``params``, so a fit trains what the CLI would, the family's default search included
(fastText searches 50 trials by default: ``params={"search.n_trials": 0}`` fits ``model.*`` as given).

**Config keys as parameters.** ``get_params()`` returns the constructor arguments only (so
``clone`` works), but ``set_params`` (and so every grid) also takes config keys: ``model.lr``,
``model__lr`` (sklearn's spelling, which ``Pipeline`` passes on as ``clf__model__lr``) and a
family-scoped ``fasttext.model.lr`` go into ``params``. A scoped key (its first part a family's
name) applies only while ``family`` is that family, so one estimator can carry the settings of
several families and a grid can switch ``family``. Keys are checked against the family's
config when ``fit`` builds it (an unknown key or a wrong type is a one-line ConfigError).

**Data.** ``fit`` checks in-memory rows with the rules every labelled file meets
(:func:`textclf.core.data.labelled_dataset`): the same defect gives the same message, naming
``(X, y) row <i>`` (0-based position) instead of ``file:line``. Labels are strings or integers;
with integer labels ``classes_`` and ``predict`` give integers back (columns of ``predict_proba``
follow ``classes_``, sorted).

**The model directory.** ``fit`` trains through the run service's :func:`~textclf.services.runs.fit_family`
(no experiment tracking, no network) into a temp directory owned by this estimator, removed when
the estimator is garbage-collected or refitted (one left by a killed process is swept by the next
fit). ``save(dir)`` copies it atomically; :func:`load` reads any model directory in place.
Pickling (``joblib.dump``, ``cross_val_score(n_jobs=2)``) carries the directory as an in-memory tar,
unpacked into a new temp directory when unpickled. Unpickling runs code (pickle does); only load
pickles you trust.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from textclf.core.config import check_search_settings, load_config, merge, set_key
from textclf.core.data import (
    Dataset,
    check_labels_known,
    check_text,
    labelled_dataset,
    sha256_datasets,
    stratified_split,
)
from textclf.core.errors import ConfigError, DataError, TextclfError
from textclf.core.meta import META_FILE, read_meta, write_meta
from textclf.core.predictor import Predictor
from textclf.core.tempfiles import make_owned_temp_dir
from textclf.core.training import Splits

__all__ = ["TextClassifier", "load"]

#: how in-memory data is named in errors and in meta.json (``(X, y) row 3: empty text``)
TRAIN_NAME = "(X, y)"
VALID_NAME = "(X_valid, y_valid)"
PREDICT_NAME = "X"
#: the temp model directories of fitted estimators (``textclf-estimator-<pid>@<host>-<random>``)
TEMP_PREFIX = "textclf-estimator-"
#: meta.json key recording the estimator's parameters and label type
META_KEY = "estimator"
_MODEL = "model"


class _ModelDir:
    """A temp directory removed when the last reference to this holder goes (or at interpreter exit)."""

    def __init__(self) -> None:
        self.root = make_owned_temp_dir(TEMP_PREFIX)
        self.path = self.root / _MODEL
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)


class TextClassifier(ClassifierMixin, BaseEstimator):
    """A text classifier of any textclf family behind the scikit-learn API; see the module docstring.

    Fitted attributes: ``classes_`` (sorted labels, integers when ``y`` held integers),
    ``predictor_`` (the :class:`~textclf.core.predictor.Predictor`), ``model_dir_`` (its directory).
    """

    def __init__(self, family: str = "fasttext", params: dict[str, Any] | None = None,
                 config: str | os.PathLike | dict | None = None, valid_size: float = 0.1,
                 random_state: int | np.random.RandomState | None = None, code: str | Sequence[str] | None = None,
                 verbose: bool = False):
        self.family = family
        self.params = params
        self.config = config
        self.valid_size = valid_size
        self.random_state = random_state
        self.code = code
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    def set_params(self, **params: Any) -> TextClassifier:
        """Set constructor parameters and config keys (``model.lr``, ``model__lr``, ``fasttext.model.lr``) into ``params``."""
        names = set(self._get_param_names())
        own = {k: v for k, v in params.items() if k in names}
        keys = {k.replace("__", "."): v for k, v in params.items() if k not in names}
        super().set_params(**own)
        if keys:
            self.params = {**(self.params or {}), **keys}
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def effective_config(self) -> dict:
        """The config ``fit`` trains with: the family's defaults < ``config`` < ``params`` (this family's keys)."""
        from textclf.core.registry import all_families, get_family, load_code

        for path in _code_files(self.code):
            load_code(path)
        name = get_family(self.family).name  # an unknown family: the one-line error listing the known ones
        families = all_families()
        path = None if self.config is None or isinstance(self.config, dict) else self.config
        cfg = load_config(name, path)
        if isinstance(self.config, dict):
            cfg = merge(cfg, self.config, source="config")
        for key, value in (self.params or {}).items():
            head, _, rest = key.partition(".")
            if head in families and head not in cfg and rest:
                if head != name:
                    continue  # another family's setting
                key = rest
            cfg = set_key(cfg, key, _plain(value), source=f"params {key!r}")
        check_search_settings(cfg)
        return cfg

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, X_valid=None, y_valid=None) -> TextClassifier:  # noqa: N803 - scikit-learn's names
        """Train on texts ``X`` and labels ``y`` (validation: ``X_valid``/``y_valid``, else ``valid_size`` held out)."""
        from textclf.core.integrity import guarded_load
        from textclf.core.registry import get_family
        from textclf.services.runs import fit_family

        with _in_memory_errors():
            cfg = self.effective_config()
            family = get_family(self.family)
            family.check_installed()
            splits, label_type = self._splits(X, y, X_valid, y_valid, cfg)
            holder = _ModelDir()
            with _quiet(self.verbose):
                fit_family(family, cfg, splits, holder.path)
            if not (holder.path / META_FILE).is_file():
                raise TextclfError(f"the {family.name} run wrote no model (search.refit false, or the family broke the "
                                   "contract); TextClassifier needs search.refit true")
            meta = read_meta(holder.path)
            meta[META_KEY] = {"init": _json_params(self.get_params()), "label_type": label_type}
            write_meta(holder.path, meta)
            predictor = guarded_load(family.predictor_class(), holder.path, meta, None)
        self._set_fitted(predictor, holder.path, holder, label_type)
        return self

    def _splits(self, X, y, X_valid, y_valid, cfg: dict) -> tuple[Splits, str]:  # noqa: N803
        """The checked train/valid datasets and the label type (``int`` when every label is an integer)."""
        train, label_type = _dataset(X, y, TRAIN_NAME, min_classes=2)
        if X_valid is None and y_valid is None:
            size = self.valid_size
            if isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size < 1:
                raise ConfigError(f"valid_size {size!r}: expected a fraction between 0 and 1 (or pass X_valid and y_valid)")
            seed = cfg.get("seed", 13) if self.random_state is None else _seed(self.random_state)
            train, valid, _ = stratified_split(train, valid_frac=float(size), test_frac=0.0, seed=seed)
            if len(valid) == 0:
                raise DataError(TRAIN_NAME, f"valid_size={size} holds out no row of {len(train)}; pass more rows, a larger "
                                "valid_size, or X_valid and y_valid")
            valid_name = f"{TRAIN_NAME} held out {size:g}"
        elif X_valid is None or y_valid is None:
            raise DataError(VALID_NAME, f"got {'y_valid' if X_valid is None else 'X_valid'} alone; pass both or neither")
        else:
            valid, _ = _dataset(X_valid, y_valid, VALID_NAME, min_classes=0)
            valid_name = VALID_NAME
        if len(train.label_set) < 2:
            raise DataError(TRAIN_NAME, f"after holding out valid_size={self.valid_size} the training rows hold "
                            f"{len(train.label_set)} class(es); need at least 2")
        check_labels_known(train, valid)
        paths = {"train": TRAIN_NAME, "valid": valid_name, "test": None}
        return Splits(train, valid, None, train.label_set, sha256_datasets([train, valid]), paths, [train]), label_type

    def _set_fitted(self, predictor: Predictor, model_dir: Path, holder: _ModelDir | None, label_type: str) -> None:
        labels = list(predictor.labels)
        values: list = [int(label) for label in labels] if label_type == "int" else labels
        order = sorted(range(len(labels)), key=lambda i: values[i])
        self.classes_ = np.array([values[i] for i in order])
        self.label_type_ = label_type
        self._column_order = np.array(order, dtype=int)
        self._values = dict(zip(labels, values, strict=True))
        self.predictor_ = predictor
        self.model_dir_ = Path(model_dir)
        self._holder = holder

    # ------------------------------------------------------------------ predicting
    def predict(self, X) -> np.ndarray:  # noqa: N803
        """The predicted label of every text (as the model's Predictor decides, tuned thresholds included)."""
        check_is_fitted(self, "predictor_")
        texts = _texts(X)
        if not texts:
            return np.array([], dtype=self.classes_.dtype)
        return np.array([self._values[label] for label in self.predictor_.predict(texts)], dtype=self.classes_.dtype)

    def predict_proba(self, X) -> np.ndarray:  # noqa: N803
        """Class probabilities, shape ``(len(X), len(classes_))``, columns in ``classes_`` order."""
        check_is_fitted(self, "predictor_")
        texts = _texts(X)
        if not texts:
            return np.zeros((0, len(self.classes_)))
        return np.asarray(self.predictor_.predict_proba(texts))[:, self._column_order]

    # ------------------------------------------------------------------ saving, pickling
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy the model directory to ``path`` atomically; returns it.

        ``path`` may be missing or an empty folder; a model directory there (with meta.json) is
        replaced only with ``overwrite=True``, and any other non-empty folder is refused.
        """
        check_is_fitted(self, "predictor_")
        target = Path(path)
        if target.exists() and target.resolve() == self.model_dir_.resolve():
            return target
        busy = target.exists() and (not target.is_dir() or any(target.iterdir()))
        if busy and not (target / META_FILE).is_file():
            raise TextclfError(f"{target}: exists and is not a textclf model directory (no {META_FILE}); save to a new "
                               "or empty directory")
        if busy and not overwrite:
            raise TextclfError(f"{target}: holds a model already; save to a new directory, or pass overwrite=True to "
                               "replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.save-", dir=target.parent))
        try:
            shutil.copytree(self.model_dir_, tmp / _MODEL, symlinks=True)
            if busy:
                os.replace(target, tmp / "old")
            elif target.exists():
                target.rmdir()
            os.replace(tmp / _MODEL, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        for key in ("predictor_", "model_dir_", "_holder"):
            state.pop(key, None)
        if "predictor_" in self.__dict__:
            state["_model_tar"] = _tar(self.model_dir_)
            state["_use_thresholds"] = getattr(self.predictor_, "use_thresholds", True)
        return state

    def __setstate__(self, state: dict) -> None:
        from textclf.core.loading import load_predictor

        state = dict(state)
        archive = state.pop("_model_tar", None)
        thresholds = state.pop("_use_thresholds", True)
        super().__setstate__(state)
        if archive is not None:
            holder = _ModelDir()
            _untar(archive, holder.root)
            # the model came inside a pickle the caller chose to unpickle (which could run code already)
            predictor = load_predictor(holder.path, thresholds=thresholds, announce=False, trust_code=True)
            self._set_fitted(predictor, holder.path, holder, self.label_type_)


def load(model_dir: str | os.PathLike, thresholds: bool = True, backend: str | None = None,
         trust_code: bool | None = None) -> TextClassifier:
    """A fitted :class:`TextClassifier` over any textclf model directory (``textclf train`` or ``TextClassifier.save``).

    Loads through :func:`textclf.core.loading.load_predictor` (the same checks, notes and
    warnings as ``textclf predict``); the directory is used in place. Its ``get_params()`` are
    those it was fitted with (for a CLI-trained model: its family and effective config), so
    ``clone(textclf.load(d)).fit(X, y)`` trains the same way again. ``trust_code=True`` allows the code
    the directory carries (plug-in file, older pickles; :mod:`textclf.core.trust`).
    """
    from textclf.core.loading import load_predictor

    predictor = load_predictor(model_dir, thresholds=thresholds, backend=backend, trust_code=trust_code)
    meta = predictor.meta
    info = meta.get(META_KEY) if isinstance(meta.get(META_KEY), dict) else {}
    init = info.get("init") or {"family": meta["kind"], "config": meta.get("config")}  # a trained model's kind is its family
    est = TextClassifier(**init)
    est._set_fitted(predictor, predictor.model_dir, None, info.get("label_type", "str"))
    return est


# ---------------------------------------------------------------------- helpers
def _code_files(code: str | Sequence[str] | None) -> list[str]:
    if code is None:
        return []
    return [str(code)] if isinstance(code, str | os.PathLike) else [str(c) for c in code]


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays, tuples as the JSON types a config holds."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple):
        return [_plain(v) for v in value]
    return value


def _json_params(params: dict) -> dict:
    """The constructor parameters as meta.json can hold them (a RandomState is not recorded)."""
    out = dict(params)
    if out["params"] is not None:
        out["params"] = {k: _plain(v) for k, v in out["params"].items()}
    if isinstance(out["config"], os.PathLike):
        out["config"] = str(out["config"])
    state = _plain(out["random_state"])
    out["random_state"] = state if isinstance(state, int) and not isinstance(state, bool) else None
    out["code"] = _code_files(out["code"]) or None
    return out


def _seed(random_state: Any) -> int:
    from sklearn.utils import check_random_state

    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _rows(values: Any, what: str, name: str) -> list:
    """One value per row of a list, tuple, 1-D array, Series or one-column frame; anything else is a DataError."""
    if isinstance(values, str | bytes) or values is None:
        raise DataError(name, f"{what} must be a sequence with one entry per row (a list, a 1-D array or a Series), "
                        f"got {type(values).__name__}")
    shape = getattr(values, "shape", None)
    if shape is not None and len(shape) == 2 and shape[1] == 1:
        values = values.iloc[:, 0] if hasattr(values, "iloc") else np.asarray(values)[:, 0]
    elif shape is not None and len(shape) != 1:
        raise DataError(name, f"{what} must hold one entry per row (1-D), got shape {tuple(shape)}")
    if hasattr(values, "tolist"):
        return list(values.tolist())
    try:
        return [_plain(v) for v in values]
    except TypeError:
        raise DataError(name, f"{what} must be a sequence with one entry per row, got {type(values).__name__}") from None


def _dataset(X, y, name: str, min_classes: int) -> tuple[Dataset, str]:  # noqa: N803
    """In-memory texts and labels checked by the file rules into a Dataset; plus ``int`` or ``str`` (the label type)."""
    texts = _rows(X, "X", name)
    labels = [_plain(v) for v in _rows(y, "y", name)]
    if len(texts) != len(labels):
        raise DataError(name, f"X holds {len(texts)} texts but y holds {len(labels)} labels")
    ds = labelled_dataset(((i, _plain(t), label) for i, (t, label) in enumerate(zip(texts, labels, strict=True))), name,
                          min_classes)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    return ds, "int" if ints else "str"


def _texts(X) -> list[str]:  # noqa: N803
    """Texts to predict: strings (an empty one is fine, as an empty line of an input file)."""
    with _in_memory_errors():
        return [str(check_text(PREDICT_NAME, i, t)) for i, t in enumerate(_rows(X, "X", PREDICT_NAME))]


def _tar(model_dir: Path) -> bytes:
    """The model directory as an uncompressed tar in memory (its files under ``model/``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(model_dir), arcname=_MODEL)
    return buffer.getvalue()


def _untar(archive: bytes, root: Path) -> None:
    """Unpack :func:`_tar` bytes under ``root`` (the ``data`` filter: no absolute paths, no links leaving it)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(root, filter="data")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The run's report (printed on stdout by the CLI flow) only when ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _in_memory_errors() -> Iterator[None]:
    """A DataError about in-memory rows says ``(X, y) row 3: ...`` where a file's says ``train.csv:4: ...``."""
    try:
        yield
    except DataError as exc:
        if exc.path not in (TRAIN_NAME, VALID_NAME, PREDICT_NAME) or exc.line is None:
            raise
        err = DataError(f"{exc.path} row {exc.line}", exc.problem)
        err.path, err.line = exc.path, exc.line
        raise err from None

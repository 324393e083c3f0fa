"""One prediction interface for every model family, and streaming file prediction.

The contract (:class:`Predictor`), streaming file prediction and evaluation. Loading a model
directory is :func:`textclf.core.loading.load_predictor`.

Decision thresholds (:mod:`textclf.services.compare.thresholds`): when ``meta.json`` holds per-class offsets
(``textclf tune-thresholds``), ``predict`` of every Predictor returns ``argmax(log p + offsets)``;
``predict_proba`` is unchanged, and ``load_predictor(..., thresholds=False)`` (``--no-thresholds``)
ignores them.

Multi-label models (``meta.json`` ``"task": "multilabel"``): ``predict_proba`` gives independent
per-label probabilities and ``predict`` a sorted tuple of labels a text, those at or above their
threshold (:mod:`textclf.core.decision`).

Calibration (:mod:`textclf.core.calibration`): a model directory whose meta.json names a calibration
file gets it as ``predictor.calibration`` when loaded, and ``predict_proba`` of every Predictor
(each subclass's own is wrapped once, :meth:`Predictor.__init_subclass__`) returns the calibrated
probabilities; :meth:`Predictor.uncalibrated_proba` gives the family's own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from textclf.core.data import batched, check_has_records, iter_texts, resolve_format
from textclf.core.tempfiles import atomic_output

log = logging.getLogger(__name__)


class Predictor(ABC):
    """A trained classifier loaded from a model directory.

    ``predict`` applies the decision offsets of ``meta.json`` (``"thresholds"``) when there are
    any and ``use_thresholds`` is true. A subclass that overrides ``predict`` (a faster path for the
    plain argmax, like fastText's) keeps it for models without offsets: :meth:`__init_subclass__`
    wraps the override so that a model with offsets goes through :meth:`decide` instead.
    """

    kind: ClassVar[str] = ""

    def __init__(self, model_dir: str | Path, meta: dict):
        from textclf.core.decision import offsets_from_meta

        self.model_dir = Path(model_dir)
        self.meta = meta
        self.labels: list[str] = list(meta["labels"])
        #: per-class offsets on log-probabilities (``labels`` order) from meta.json, or None
        self.offsets: np.ndarray | None = None if meta.get("task") == "multilabel" else offsets_from_meta(meta, self.labels)
        #: False: ``predict`` ignores ``offsets`` (``--no-thresholds``)
        self.use_thresholds: bool = True

    #: the fitted calibrator ``predict_proba`` applies (:mod:`textclf.core.calibration`), or None
    calibration = None
    #: False: ``predict_proba`` returns the family's own probabilities
    use_calibration: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._wrap_predict_proba()
        own = cls.__dict__.get("predict")
        if own is None or getattr(own, "applies_thresholds", False):
            return

        @functools.wraps(own)
        def predict(self, texts: Sequence[str]) -> list[str]:
            if self.active_offsets() is not None or self.multilabel or (self.calibration is not None and self.use_calibration):
                return Predictor.predict(self, texts)  # the decision on the (calibrated) probabilities
            return own(self, texts)

        predict.applies_thresholds = True  # type: ignore[attr-defined]
        cls.predict = predict  # type: ignore[method-assign]

    @classmethod
    def _wrap_predict_proba(cls) -> None:
        """Make the class's own ``predict_proba`` apply ``self.calibration`` (once: only the most derived override does)."""
        own = cls.__dict__.get("predict_proba")
        if own is None or getattr(own, "applies_calibration", False) or getattr(own, "__isabstractmethod__", False):
            return

        @functools.wraps(own)
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
            proba = own(self, texts)
            calibrator = self.calibration
            if calibrator is None or not self.use_calibration or type(self).predict_proba is not predict_proba:
                return proba  # uncalibrated, or a subclass's override called this one through super()
            return calibrator.apply(proba)

        predict_proba.applies_calibration = True  # type: ignore[attr-defined]
        cls.predict_proba = predict_proba  # type: ignore[method-assign]

    def uncalibrated_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The family's own probabilities, without the calibration ``predict_proba`` applies."""
        with self.calibration_off():
            return self.predict_proba(texts)

    @contextlib.contextmanager
    def calibration_off(self):
        """Within the block, ``predict_proba`` returns uncalibrated probabilities."""
        before = self.use_calibration
        self.use_calibration = False
        try:
            yield
        finally:
            self.use_calibration = before

    @classmethod
    @abstractmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> Predictor:
        """Load the model stored in ``model_dir``."""

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(self.labels))``, columns in ``self.labels`` order."""

    @property
    def task(self) -> str:
        """``multiclass`` or ``multilabel`` (meta.json's ``task``; models from before it are multi-class)."""
        return (getattr(self, "meta", None) or {}).get("task") or "multiclass"

    @property
    def multilabel(self) -> bool:
        """Whether the model predicts a set of labels a text (independent per-label probabilities)."""
        return self.task == "multilabel"

    @property
    def label_separator(self) -> str:
        """What joins a predicted label set where one string holds it: the training ``data.label_separator``, else ``|``."""
        from textclf.core.data import DEFAULT_LABEL_SEPARATOR

        data = ((getattr(self, "meta", None) or {}).get("config") or {}).get("data") or {}
        return data.get("label_separator") or DEFAULT_LABEL_SEPARATOR

    def active_offsets(self) -> np.ndarray | None:
        """The offsets ``predict`` applies now (None: plain argmax)."""
        if self.multilabel:
            return None
        return getattr(self, "offsets", None) if getattr(self, "use_thresholds", True) else None

    def active_thresholds(self) -> tuple[np.ndarray | float, bool]:
        """A multi-label model's ``(thresholds, at_least_one)`` now: the tuned per-label ones, else the global threshold."""
        from textclf.core.decision import decision_settings, thresholds_from_meta

        meta = getattr(self, "meta", None) or {}
        tuned = thresholds_from_meta(meta, self.labels) if getattr(self, "use_thresholds", True) else None
        return tuned if tuned is not None else decision_settings(meta)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Predicted class index of every row of ``proba``: ``argmax(log p + offsets)``, or ``argmax(p)`` without offsets.

        Multi-label: a boolean ``(n, L)`` matrix, True where a label is predicted (:meth:`active_thresholds`).
        """
        from textclf.core.decision import decide, decide_multilabel

        if self.multilabel:
            return decide_multilabel(proba, *self.active_thresholds())
        return decide(proba, self.active_offsets())

    def labels_of(self, decided: np.ndarray) -> list:
        """The labels of :meth:`decide`'s output: one string a row, or (multi-label) a sorted tuple of labels a row."""
        labels = self.labels
        if self.multilabel:
            order = sorted(range(len(labels)), key=labels.__getitem__)
            return [tuple(labels[j] for j in order if row[j]) for row in np.asarray(decided, dtype=bool)]
        return [labels[int(i)] for i in decided]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The predicted label of every text (the most probable one, shifted by the tuned offsets if any).

        Multi-label: the sorted tuple of labels at or above their thresholds.
        """
        if len(texts) == 0:
            return []
        return self.labels_of(self.decide(self.predict_proba(texts)))


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    output_format: str | None = None,
    batch_size: int = 1024,
    input_format: str | None = None,
    text_column: str = "text",
    progress: bool | None = None,
) -> int:
    """Predict every record of ``input_path`` into ``output_path``; returns the number of records.

    Streams in batches (memory stays flat), keeps output record i for input record i
    (an empty input line gets a prediction too), writes to a temp file and renames it (``-``, a
    device, FIFO or socket: streamed in place, :func:`textclf.core.atomic.output_target`).
    The registered formats read the input (``input_format``, default from the extension: the
    format's ``texts``) and write the output (``output_format``, default from the extension, else
    ``txt``: the format's ``predictions``): ``txt`` writes one label a line; ``csv``/``jsonl`` add
    one probability per class. An unknown format is a one-line error listing the known ones.
    The temp file names this process (:mod:`textclf.core.tempfiles`): a run killed with ``kill -9``
    leaves it, and the next run for the same target removes it; an error or SIGTERM removes it at
    once, and ``output_path`` keeps its old content. A write that fails (no permission, a full
    disk, a parent that is a file) is a one-line error naming ``output_path``.
    """
    try:
        return _predict_file(predictor, input_path, output_path, output_format, batch_size, input_format, text_column,
                             progress)
    except OSError as exc:
        import errno

        from textclf.core.errors import TextclfError

        if exc.errno == errno.EPIPE or (exc.filename and Path(exc.filename) == Path(input_path)):
            raise
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = f"a parent of it is a file, not a folder ({exc.filename})"
        elif exc.filename and Path(exc.filename) != Path(output_path):
            reason += f" ({exc.filename})"
        from textclf.core.atomic import is_stream

        if is_stream(output_path):  # written in place: what came before the error is there
            raise TextclfError(f"{output_path}: cannot write the predictions: {reason}") from None
        raise TextclfError(f"{output_path}: cannot write the predictions: {reason}; nothing was written there") from None


def _predict_file(predictor: Predictor, input_path: str | Path, output_path: str | Path, output_format: str | None,
                  batch_size: int, input_format: str | None, text_column: str, progress: bool | None) -> int:
    """The body of :func:`predict_file`."""
    output_path = Path(output_path)
    writer = resolve_format(output_path, output_format, "predictions")
    reader = resolve_format(input_path, input_format, "texts")
    texts = iter_texts(input_path, reader.name, text_column)
    bar = None
    if progress is None:
        progress = sys.stderr.isatty()
    if progress:
        from tqdm import tqdm

        total = _count_lines(Path(input_path)) if reader.name == "txt" else None
        bar = tqdm(total=total, unit="doc", desc="predict", file=sys.stderr)
    n = 0
    with atomic_output(output_path, "w") as fh:
        factory = writer.part("predictions")
        multi = {"separator": predictor.label_separator} if predictor.multilabel else {}  # label sets: tuples, joined there
        write = factory(fh, list(predictor.labels), **multi)
        for batch in batched(texts, batch_size):
            if writer.probabilities:
                proba = predictor.predict_proba(batch)
                write(predictor.labels_of(predictor.decide(proba)), proba)
            else:  # labels only: the family's own predict (fastText's is faster than predict_proba)
                write(predictor.predict(batch), None)
            n += len(batch)
            if bar:
                bar.update(len(batch))
        check_has_records(input_path, n)  # an empty input is refused (as by train), and nothing is written
    if bar:
        bar.close()
    return n


def evaluate_predictor(predictor: Predictor, texts: Sequence[str], labels: Sequence[str], batch_size: int = 1024,
                       betas: Sequence[float] = (1.0, 0.5), probabilities: bool = True) -> dict:
    """Metrics of ``predictor`` on labelled texts (see :func:`textclf.core.metrics.classification_metrics`).

    A multi-label model is scored on label sets (``labels``: a tuple a text) by
    :func:`textclf.core.metrics.multilabel_metrics`. ``probabilities`` adds the calibration metrics
    of ``predict_proba`` (:func:`textclf.core.metrics.calibration_metrics`: ECE, adaptive ECE, Brier,
    log-loss) over the rows whose labels the model knows; the predictions come from the same
    probabilities unless the family has a ``predict`` of its own.
    """
    from textclf.core.metrics import calibration_metrics, classification_metrics, multilabel_metrics

    own_predict = type(predictor).predict is not Predictor.predict
    preds: list = []
    chunks: list[np.ndarray] = []
    for batch in batched(texts, batch_size):
        if probabilities:
            proba = predictor.predict_proba(batch)
            chunks.append(np.asarray(proba, dtype=np.float64))
            preds += predictor.predict(batch) if own_predict else predictor.labels_of(predictor.decide(proba))
        else:
            preds += predictor.predict(batch)
    gold = {label for row in labels for label in row} if predictor.multilabel else set(labels)
    label_order = list(predictor.labels) + sorted(gold - set(predictor.labels))
    if predictor.multilabel:
        out = multilabel_metrics(list(labels), preds, label_order, betas)
    else:
        out = classification_metrics(list(labels), preds, label_order, betas)
    if probabilities:
        proba = np.vstack(chunks) if chunks else np.zeros((0, len(predictor.labels)))
        y, rows = gold_targets(predictor, labels)
        out.update(calibration_metrics(proba[rows], y, predictor.task))
    return out


def gold_targets(predictor: Predictor, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Gold labels as :func:`textclf.core.metrics.calibration_metrics` takes them, and the rows they cover.

    Multi-class: the class index of every row whose label the model knows; multi-label: the 0/1
    matrix of the model's labels (every row; a label it does not know is left out).
    """
    index = {label: i for i, label in enumerate(predictor.labels)}
    if predictor.multilabel:
        y = np.zeros((len(labels), len(index)), dtype=bool)
        for i, row in enumerate(labels):
            for label in row:
                if label in index:
                    y[i, index[label]] = True
        return y, np.arange(len(labels))
    rows = np.array([i for i, label in enumerate(labels) if label in index], dtype=np.int64)
    return np.array([index[labels[i]] for i in rows], dtype=np.int64), rows

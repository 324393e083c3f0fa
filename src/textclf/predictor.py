"""One prediction interface for every model family, and streaming file prediction.

``load_predictor(model_dir)`` reads ``meta.json`` and asks the family registry
(:mod:`textclf.registry`) for the Predictor of its ``kind``; callers never import a
family's module themselves. A model trained by a plug-in family carries the plug-in's code
(``meta.json`` names it), which is imported first, with a one-line warning.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from textclf.atomic import atomic_open
from textclf.data import batched, iter_texts
from textclf.errors import ModelError
from textclf.meta import META_FILE, read_meta

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("txt", "csv", "jsonl")


class Predictor(ABC):
    """A trained classifier loaded from a model directory."""

    kind: ClassVar[str] = ""

    def __init__(self, model_dir: str | Path, meta: dict):
        self.model_dir = Path(model_dir)
        self.meta = meta
        self.labels: list[str] = list(meta["labels"])

    @classmethod
    @abstractmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> Predictor:
        """Load the model stored in ``model_dir``."""

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(self.labels))``, columns in ``self.labels`` order."""

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of every text."""
        if len(texts) == 0:
            return []
        proba = self.predict_proba(texts)
        return [self.labels[i] for i in proba.argmax(axis=1)]


def _resolve(model_path: str | Path) -> tuple[Path, Path | None]:
    path = Path(model_path)
    if path.is_file():
        # meta.json names the directory, not a model file
        return path.parent, None if path.name == META_FILE else path
    return path, None


def load_plugin_code(model_dir: Path, meta: dict) -> None:
    """Import the plug-in file a model directory carries (named in meta.json), warning that it runs code."""
    from textclf.registry import PLUGIN_META_KEY, load_code

    relative = meta.get(PLUGIN_META_KEY)
    if not relative:
        return
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
        raise ModelError(f"{model_dir / META_FILE}: {PLUGIN_META_KEY} {relative!r} is not a file inside the model directory")
    import click

    click.echo(f"warning: model {model_dir} runs plug-in code from its directory: {path}", err=True)
    load_code(path)


def load_predictor(model_path: str | Path) -> Predictor:
    """Load any textclf model directory (or a model file inside one) by the ``kind`` in its meta.json."""
    from textclf.registry import all_families

    model_dir, model_file = _resolve(model_path)
    meta = read_meta(model_dir)
    kind = meta.get("kind")
    load_plugin_code(model_dir, meta)
    known = all_families()
    if kind not in known:
        raise ModelError(f"{model_dir}/{META_FILE}: unknown model kind {kind!r}; known: {', '.join(known)}")
    cls = known[kind].predictor_class()
    return cls.load(model_dir, meta=meta, model_file=model_file)


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
    (an empty input line gets a prediction too), writes to a temp file and renames it.
    ``txt`` writes one label a line; ``csv``/``jsonl`` add one probability per class.
    """
    output_path = Path(output_path)
    fmt = output_format or {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(output_path.suffix.lower(), "txt")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    texts = iter_texts(input_path, input_format, text_column)
    bar = None
    if progress is None:
        progress = sys.stderr.isatty()
    if progress:
        from tqdm import tqdm

        total = _count_lines(Path(input_path)) if (input_format or Path(input_path).suffix) in ("txt", ".txt", "") else None
        bar = tqdm(total=total, unit="doc", desc="predict", file=sys.stderr)
    n = 0
    with atomic_open(output_path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n") if fmt == "csv" else None
        if writer:
            writer.writerow(["label", *[f"p_{label}" for label in predictor.labels]])
        for batch in batched(texts, batch_size):
            if fmt == "txt":  # one write per batch: this path must keep up with the model on short texts
                fh.write("".join([label + "\n" for label in predictor.predict(batch)]))
            else:
                for probs in predictor.predict_proba(batch):
                    label = predictor.labels[int(probs.argmax())]
                    if writer:
                        writer.writerow([label, *[f"{p:.6f}" for p in probs]])
                    else:
                        probabilities = dict(zip(predictor.labels, map(float, probs), strict=True))
                        fh.write(json.dumps({"label": label, "probabilities": probabilities}) + "\n")
            n += len(batch)
            if bar:
                bar.update(len(batch))
    if bar:
        bar.close()
    return n


def evaluate_predictor(predictor: Predictor, texts: Sequence[str], labels: Sequence[str], batch_size: int = 1024,
                       betas: Sequence[float] = (1.0, 0.5)) -> dict:
    """Metrics of ``predictor`` on labelled texts (see :func:`textclf.metrics.classification_metrics`)."""
    from textclf.metrics import classification_metrics

    preds: list[str] = []
    for batch in batched(texts, batch_size):
        preds += predictor.predict(batch)
    label_order = list(predictor.labels) + sorted(set(labels) - set(predictor.labels))
    return classification_metrics(list(labels), preds, label_order, betas)

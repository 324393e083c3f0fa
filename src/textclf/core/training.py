"""The run flow every family shares: read and check the splits, then evaluate and write meta.json."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import click

from textclf.core.atomic import atomic_write_text
from textclf.core.data import (
    MULTICLASS,
    MULTILABEL,
    Dataset,
    check_labels_known,
    labelled_format,
    read_labelled,
    sha256_datasets,
    sha256_files,
)
from textclf.core.errors import ConfigError, DataError
from textclf.core.meta import build_meta, write_meta
from textclf.core.metrics import format_report
from textclf.core.predictor import Predictor, evaluate_predictor

log = logging.getLogger(__name__)

PLUGIN_DIR = "plugin"
#: the plug-in file (relative to the model directory) that the run in progress must record in meta.json
_plugin_code: ContextVar[str | None] = ContextVar("textclf_plugin_code", default=None)


def ddp_rank() -> int:
    """This process's rank in a torchrun-style job (``RANK``; 0 outside one): only rank 0 finishes a run."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def plugin_context(family, output_dir: str | Path) -> Iterator[None]:
    """While a plug-in family trains: copy its code file into ``output_dir/plugin/`` and have meta.json name it.

    So ``textclf predict --model_path M`` works on a machine without the original file.
    Built-in and entry-point families (no ``code_file``) record nothing.
    """
    if not family.code_file:
        yield
        return
    from textclf.core.atomic import atomic_replace_file

    source = Path(family.code_file)
    relative = f"{PLUGIN_DIR}/{source.name}"
    target = Path(output_dir) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != target.resolve():
        atomic_replace_file(lambda p: shutil.copyfile(source, p), target)
    token = _plugin_code.set(relative)
    try:
        yield
    finally:
        _plugin_code.reset(token)


@dataclass
class Splits:
    """Train/valid(/test) data with the label set taken from train.

    ``task`` is the data's (``multiclass`` or ``multilabel``, the same for every part; see
    :class:`textclf.core.data.Dataset`). ``train_sources`` holds one dataset per ``--train_path`` file (``train`` is their concatenation,
    in order); ``train_source_ids`` gives each train row's file index.
    """

    train: Dataset
    valid: Dataset
    test: Dataset | None
    labels: list[str]
    data_sha256: str
    paths: dict
    train_sources: list[Dataset] = field(default_factory=list)

    @property
    def train_source_ids(self) -> list[int]:
        """Index into ``train_sources`` of every train row (all 0 for one training file)."""
        if not self.train_sources:
            return [0] * len(self.train)
        return [i for i, ds in enumerate(self.train_sources) for _ in range(len(ds))]

    @property
    def task(self) -> str:
        """``multiclass`` or ``multilabel`` (``data.task``, or what ``auto`` found in the data)."""
        return self.train.task

    @property
    def multilabel(self) -> bool:
        """Whether every row holds a label set."""
        return self.train.multilabel


def train_paths(train_path: str | Path | Sequence[str | Path]) -> list[str]:
    """``--train_path`` as a list of paths (one path, or a repeated flag)."""
    if isinstance(train_path, str | Path):
        return [str(train_path)]
    return [str(p) for p in train_path]


def concat_datasets(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset holding every row of ``datasets`` in order (the path names them joined by ``+``)."""
    if len(datasets) == 1:
        return datasets[0]
    return Dataset([t for ds in datasets for t in ds.texts], [label for ds in datasets for label in ds.labels],
                   "+".join(ds.path for ds in datasets), [n for ds in datasets for n in ds.line_numbers], datasets[0].task)


def load_splits(train_path: str | Path | Sequence[str | Path], valid_path: str | Path, test_path: str | Path | None,
                data_cfg: dict) -> Splits:
    """Read train/valid/test with the data config; every valid/test label must occur in train.

    Several training files (``--train_path a.csv --train_path b.csv``) are read separately and
    concatenated; every family trains on the union, the embeddings search can pick a subset.
    ``data.task`` (default ``auto``) and ``data.label_separator`` say how labels are read
    (:func:`textclf.core.data.labelled_dataset`); ``auto`` is decided on the training files (multi-label
    when any holds a label set) and valid and test are read as that.
    """
    kw = {"fmt": data_cfg.get("format"), "text_column": data_cfg.get("text_column", "text"),
          "label_column": data_cfg.get("label_column", "label"), "reader": data_cfg.get("reader"),
          "task": data_cfg.get("task") or "auto", "label_separator": data_cfg.get("label_separator")}
    files = train_paths(train_path)
    if not files:
        raise ConfigError("no --train_path given")
    sources = [read_labelled(path, min_classes=0 if len(files) > 1 else 2, **kw) for path in files]
    kw["task"] = MULTILABEL if any(ds.multilabel for ds in sources) else MULTICLASS
    sources = [ds if ds.task == kw["task"] else read_labelled(path, min_classes=0, **kw) for path, ds in zip(files, sources, strict=True)]
    train = concat_datasets(sources)
    if len(files) > 1 and len(train.label_set) < 2:
        raise DataError(files[0], f"the {len(files)} training files hold {len(train.label_set)} class(es) together; need at least 2")
    valid = read_labelled(valid_path, min_classes=0, **kw)
    check_labels_known(train, valid)
    test = None
    if test_path:
        test = read_labelled(test_path, min_classes=0, **kw)
        check_labels_known(train, test)
    paths = {"train": files[0] if len(files) == 1 else files, "valid": str(valid_path),
             "test": str(test_path) if test_path else None}
    if kw["reader"] or not labelled_format(files[0], kw["fmt"]).files:  # a reader/format that may not read files: hash the rows
        digest = sha256_datasets([*sources, valid, test])
    else:
        digest = sha256_files([*files, valid_path, test_path])
    return Splits(train, valid, test, train.label_set, digest, paths, sources)


def fitted_meta(kind: str, cfg: dict, splits: Splits) -> dict:
    """What a Predictor fitted in this run reads before meta.json exists: kind, labels, task and the config (its decision block)."""
    return {"kind": kind, "labels": list(splits.labels), "task": splits.task, "config": cfg}


def data_stats(splits: Splits) -> dict:
    """meta.json's ``data_stats`` (the model card's data section): per split, rows, texts of each label, SHA-256.

    A split read by a reader (not from files) is hashed over its texts and labels.
    """
    from collections import Counter

    out = {}
    for name, ds in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        if ds is None:
            continue
        counts = Counter(label for row in ds.labels for label in row) if ds.multilabel else Counter(ds.labels)
        files = train_paths(splits.paths[name]) if splits.paths.get(name) else []
        digest = sha256_files(files) if files and all(Path(f).is_file() for f in files) else sha256_datasets([ds])
        out[name] = {"rows": len(ds), "labels": {label: counts[label] for label in sorted(counts)}, "sha256": digest}
    return out


def finish_run(model_dir: str | Path, predictor: Predictor, splits: Splits, config: dict,
               packages: tuple[str, ...] = (), echo: bool = True, **extra) -> dict:
    """Evaluate ``predictor`` on valid (and test), write ``metrics.txt`` and ``meta.json``; return the meta."""
    model_dir = Path(model_dir)
    metrics = {"valid": evaluate_predictor(predictor, splits.valid.texts, splits.valid.labels)}
    if splits.test is not None:
        metrics["test"] = evaluate_predictor(predictor, splits.test.texts, splits.test.labels)
    report = "\n\n".join(format_report(m, title=f"== {name} ({splits.paths[name]})") for name, m in metrics.items())
    atomic_write_text(model_dir / "metrics.txt", report + "\n")
    if _plugin_code.get():
        from textclf.core.registry import PLUGIN_META_KEY

        extra.setdefault(PLUGIN_META_KEY, _plugin_code.get())
    extra.setdefault("data_stats", data_stats(splits))
    meta = build_meta(predictor.kind, predictor.labels, config, metrics, splits.data_sha256, packages,
                      data=splits.paths, task=splits.task, **extra)
    write_meta(model_dir, meta)
    if echo:
        click.echo(report)
        click.echo(f"\nmodel directory: {model_dir}")
    return meta

"""The run flow every family shares: read and check the splits, then evaluate and write meta.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import click

from textclf.atomic import atomic_write_text
from textclf.data import Dataset, check_labels_known, read_labelled, sha256_files
from textclf.meta import build_meta, write_meta
from textclf.metrics import format_report
from textclf.predictor import Predictor, evaluate_predictor

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Train/valid(/test) data with the label set taken from train."""

    train: Dataset
    valid: Dataset
    test: Dataset | None
    labels: list[str]
    data_sha256: str
    paths: dict


def load_splits(train_path: str | Path, valid_path: str | Path, test_path: str | Path | None, data_cfg: dict) -> Splits:
    """Read train/valid/test with the data config; every valid/test label must occur in train."""
    kw = {"fmt": data_cfg.get("format"), "text_column": data_cfg.get("text_column", "text"),
          "label_column": data_cfg.get("label_column", "label")}
    train = read_labelled(train_path, **kw)
    valid = read_labelled(valid_path, min_classes=0, **kw)
    check_labels_known(train, valid)
    test = None
    if test_path:
        test = read_labelled(test_path, min_classes=0, **kw)
        check_labels_known(train, test)
    paths = {"train": str(train_path), "valid": str(valid_path), "test": str(test_path) if test_path else None}
    return Splits(train, valid, test, train.label_set, sha256_files([train_path, valid_path, test_path]), paths)


def finish_run(model_dir: str | Path, predictor: Predictor, splits: Splits, config: dict,
               packages: tuple[str, ...] = (), echo: bool = True, **extra) -> dict:
    """Evaluate ``predictor`` on valid (and test), write ``metrics.txt`` and ``meta.json``; return the meta."""
    model_dir = Path(model_dir)
    metrics = {"valid": evaluate_predictor(predictor, splits.valid.texts, splits.valid.labels)}
    if splits.test is not None:
        metrics["test"] = evaluate_predictor(predictor, splits.test.texts, splits.test.labels)
    report = "\n\n".join(format_report(m, title=f"== {name} ({splits.paths[name]})") for name, m in metrics.items())
    atomic_write_text(model_dir / "metrics.txt", report + "\n")
    meta = build_meta(predictor.kind, predictor.labels, config, metrics, splits.data_sha256, packages,
                      data=splits.paths, **extra)
    write_meta(model_dir, meta)
    if echo:
        click.echo(report)
        click.echo(f"\nmodel directory: {model_dir}")
    return meta

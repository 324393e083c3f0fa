"""``--resume`` continues a run only on the data it started with.

A family's checkpoints (BERT's ``checkpoints/*/last.pth``, the BiLSTM's ``last.ckpt``) hold weights,
optimizer state and epochs, not the data they were trained on. Resuming them with other training or
validation rows would silently finish the old run and label the result with the new data's hashes.
So the core writes :data:`RESUME_FILE` (what the fit was started on: task, labels, and the row count
and SHA-256 of train and valid) into the model directory before every final fit, and a ``--resume``
into a directory whose file names other data stops at once with a one-line error that says what
differs. A directory without the file (a run from before it, or none yet) resumes as before. The
family's own checks (the BiLSTM refuses a checkpoint of another architecture) stay in the family.
"""

from __future__ import annotations

import json
from pathlib import Path

from textclf.core.atomic import atomic_write_json
from textclf.core.data import sha256_datasets
from textclf.core.errors import ModelError

#: the file in the model directory naming the data of the fit that was started there
RESUME_FILE = "fit_data.json"


def fit_data(splits) -> dict:
    """What the fit is trained and selected on: task, labels, rows and SHA-256 of train and valid."""
    record = {"task": splits.task, "labels": list(splits.labels)}
    for name in ("train", "valid"):
        ds = getattr(splits, name)
        record[name] = {"rows": len(ds.texts), "sha256": sha256_datasets([ds])}
    return record


def _describe(key: str, old, new) -> str:
    """One difference, short: row counts and hash prefixes for a split, the values otherwise."""
    if isinstance(old, dict) and isinstance(new, dict) and "sha256" in new:
        return (f"{key}: {old.get('rows')} rows sha256 {str(old.get('sha256'))[:12]} -> "
                f"{new['rows']} rows sha256 {new['sha256'][:12]}")
    return f"{key}: {old!r} -> {new!r}"


def check_and_record(output_dir: str | Path, splits, resume: bool) -> None:
    """Refuse ``--resume`` on other data than the run in ``output_dir`` started with; record this fit's data.

    Raises a one-line ModelError naming each difference (task, labels, train, valid). Without
    ``resume`` (a new run replaces the directory's model) only the record is written, atomically.
    """
    output_dir = Path(output_dir)
    path = output_dir / RESUME_FILE
    current = fit_data(splits)
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot resume, unreadable record of the interrupted run's data "
                             f"({exc}); rerun without --resume to start over") from None
        if not isinstance(saved, dict):
            raise ModelError(f"{path}: cannot resume, expected a JSON object; rerun without --resume to start over")
        diffs = [_describe(k, saved.get(k), v) for k, v in current.items() if saved.get(k) != v]
        if diffs:
            raise ModelError(f"{output_dir}: cannot resume, the run there was started on other data "
                             f"({'; '.join(diffs)}); rerun without --resume to start over, or choose another --output_dir")
    atomic_write_json(path, current)

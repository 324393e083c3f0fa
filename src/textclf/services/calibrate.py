"""``textclf calibrate``: fit a calibrator for an existing model directory on a labelled valid file.

The fitting is the core's (:func:`textclf.core.calibration.calibrate_predictor`, the same as the
``calibration`` config key at training time). The model directory is updated atomically: the new
calibrator is a new file (its name holds its SHA-256), meta.json is rewritten in one rename to name
it (``calibration`` block: method, chosen method, fitted parameters, valid ECE/Brier/log-loss before
and after; ``files`` gets its size and hash), and only then is the previous calibration file removed.
``--method none`` removes the calibration.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from textclf.core.calibration import META_KEY, calibrate_predictor, check_method


def calibrate_model(model_path: str | Path, valid_path: str | Path, method: str = "auto", data_format: str | None = None,
                    text_column: str = "text", label_column: str = "label", seed: int = 13,
                    batch_size: int = 1024) -> dict:
    """Calibrate the model at ``model_path`` on ``valid_path`` with ``method``; returns meta.json's new ``calibration`` block.

    The block is ``{"method": "none"}`` after ``method`` ``none`` (the calibration is removed). A valid
    label the model does not know, a missing file or fewer than
    :data:`textclf.core.calibration.MIN_ROWS` rows are one-line errors, and the directory is left as it was.
    """
    from textclf.core.data import labelled_format, read_labelled, sha256_datasets, sha256_files
    from textclf.core.integrity import FILES_KEY, file_record
    from textclf.core.loading import _resolve, load_predictor
    from textclf.core.meta import read_meta, write_meta
    from textclf.services.compare.label_thresholds import indicator_matrix
    from textclf.services.compare.thresholds import label_indices

    method = check_method(method, "--method")
    model_dir, _ = _resolve(model_path)
    predictor = load_predictor(model_dir, thresholds=False)
    meta = read_meta(model_dir)
    old = (meta.get(META_KEY) or {}).get("file") if isinstance(meta.get(META_KEY), dict) else None
    if method == "none":
        block: dict = {"method": "none"}
    else:
        ds = read_labelled(valid_path, data_format, text_column, label_column, min_classes=0, task=predictor.task,
                           label_separator=predictor.label_separator)
        check = indicator_matrix if predictor.multilabel else label_indices
        check(ds.labels, predictor.labels, valid_path, ds.line_numbers)  # unknown labels: a one-line error before anything is written
        block = calibrate_predictor(predictor, ds.texts, ds.labels, method, model_dir, seed, batch_size) or {}
        valid_sha = sha256_files([valid_path]) if labelled_format(valid_path, data_format).files else sha256_datasets([ds])
        block.update({"valid_path": str(valid_path), "valid_sha256": valid_sha,
                      "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    files = dict(meta.get(FILES_KEY) or {})
    if old:
        files.pop(old, None)
    if block.get("file"):
        files[block["file"]] = file_record(model_dir / block["file"])
    if files or FILES_KEY in meta:
        meta[FILES_KEY] = files
    if method == "none":
        meta.pop(META_KEY, None)
    else:
        meta[META_KEY] = block
    write_meta(model_dir, meta)
    if old and old != block.get("file"):
        (model_dir / old).unlink(missing_ok=True)
    return block


def summary(block: dict, model_dir: str | Path, thresholds: bool) -> str:
    """What ``textclf calibrate`` prints about the block :func:`calibrate_model` stored."""
    if block.get("method") == "none" and "chosen" not in block:
        return f"removed the calibration of {model_dir}: predict_proba returns the model's own probabilities"
    before, after = block["valid_before"], block["valid_after"]
    chosen = block["chosen"] if block["method"] != "auto" else f"auto -> {block['chosen']}"
    lines = []
    if block.get("cv_log_loss"):
        lines.append("cross-validated valid log-loss: " + ", ".join(f"{m} {v:.4f}" for m, v in block["cv_log_loss"].items()))
    params = block.get("params") or {}
    parts = []
    if "temperature" in params:
        parts.append(f"T={params['temperature']:.3f}")
    elif "temperatures" in params:
        parts.append("T per label: " + ", ".join(f"{k} {v:.3f}" for k, v in params["temperatures"].items()))
    if "biases" in params:
        parts.append("biases " + ", ".join(f"{k} {v:+.3f}" for k, v in params["biases"].items()))
    shown = f" ({'; '.join(parts)})" if parts else ""
    lines.append(f"calibration {chosen}{shown}: valid ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
                 f"Brier {before['brier']:.4f} -> {after['brier']:.4f}, log-loss {before['log_loss']:.4f} -> {after['log_loss']:.4f}")
    where = f"{Path(model_dir) / block['file']}" if block.get("file") else f"{Path(model_dir)}/meta.json (no calibrator: none won)"
    lines.append(f"stored in {where}; predict_proba returns calibrated probabilities")
    if thresholds:
        lines.append("note: the model's tuned thresholds were tuned on its earlier probabilities; rerun textclf tune-thresholds")
    return "\n".join(lines)

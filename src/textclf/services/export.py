"""``textclf export --format onnx``: write a BERT or BiLSTM model as ONNX (optionally int8) beside its PyTorch weights.

* BERT family: the whole classifier (encoder, mean/CLS pooling over the attention mask, head)
  with inputs ``input_ids``/``attention_mask`` (int64, dynamic batch and sequence axes) and
  output ``logits``.
* BiLSTM family: embedding, LSTM, pooling and head with input ``ids`` (dynamic batch and time
  axes). The PyTorch model packs padded batches; the ONNX graph runs the LSTM unpacked, which is
  exact for a batch whose texts all have the same token count, and that is how the backend
  batches (:class:`textclf.families.lstm.onnx.OnnxLSTMPredictor`). Each family's
  ``onnx.py`` (named by ``Family.onnx``) holds its exporter and its ONNX Predictor.

Export uses ``torch.onnx.export`` (the TorchScript exporter: the dynamo one needs onnxscript)
at opset 17. ``--quantize int8`` adds ``model.int8.onnx`` from ONNX Runtime's
``quantize_dynamic`` (int8 weights per output channel, activations quantized on the fly: what
suits CPUs); the file's metadata says so, and the backend then runs one text at a time (see
:mod:`textclf.core.onnx_runtime`).
Multi-label models (``meta.json`` ``"task": "multilabel"``) export when their family trains
label sets (``Family(multilabel=True)``) and has an ONNX module: its exporter keeps the sigmoid
outputs (one independent probability a label), which the check below holds to PyTorch's. Any
other multi-label model (fastText: no ONNX at all) is refused in one line.
After writing, the export is checked on sample texts against the PyTorch Predictor (largest
absolute probability difference, and agreement of the predicted labels) and the result goes
into ``onnx.json``; a float32 export further than 1e-4 away is an error.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from textclf.core.atomic import atomic_replace_file, atomic_write_json
from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import file_record
from textclf.core.meta import read_meta
from textclf.core.onnx_runtime import (
    ACTIVATION_KEY,
    DYNAMIC_ACTIVATIONS,
    FP32_FILE,
    INFO_FILE,
    INT8_FILE,
    SOURCE_KEY,
    load_onnx_predictor,
    onnx_kinds,
    source_files,
)
from textclf.core.registry import get_family

log = logging.getLogger(__name__)

OPSET = 17
QUANTIZE = ("int8",)
FP32_TOLERANCE = 1e-4
SAMPLE_TEXTS = [
    "I love this, best day ever!", "this is awful and I hate it", "", "ok", "meh. not sure what to think about it",
    "The service was slow but the food was great, would come back", "worst. purchase. ever.",
    "Ünïcödé têxt with émojis 🎉🎉 and numbers 12345",
    "a much longer text " * 30,
]


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of an ONNX model's weights, per output channel (ONNX Runtime), written atomically.

    Per-channel scales keep the probabilities closer to float32 than one scale per matrix, at no
    speed cost. (ONNX Runtime's shape-inference pre-processing step is skipped: its symbolic shape
    inference fails on the exported attention mask and the speed is the same without it.)
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing advice on the root logger

    def produce(tmp: str) -> None:
        import onnx

        quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8, per_channel=True)
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {ACTIVATION_KEY: DYNAMIC_ACTIVATIONS})
        onnx.save(model, tmp)

    try:
        atomic_replace_file(produce, target)
    finally:
        root.setLevel(level)


def compare(reference, candidate, texts: list[str]) -> dict:
    """Largest absolute probability difference and label agreement of two Predictors on ``texts``.

    Multi-label: a text agrees when both give it the same label set (``reference``'s thresholds).
    """
    a, b = reference.predict_proba(texts), candidate.predict_proba(texts)
    if getattr(reference, "multilabel", False):
        same = np.all(reference.decide(a) == reference.decide(b), axis=1)
    else:
        same = a.argmax(axis=1) == b.argmax(axis=1)
    return {"texts": len(texts), "max_abs_diff": float(np.abs(a - b).max()) if len(texts) else 0.0,
            "label_agreement": float(np.mean(same)) if len(texts) else 1.0}


def export_onnx(model_dir: str | Path, quantize: str | None = None, check_texts: list[str] | None = None) -> dict:
    """Export the model in ``model_dir`` to ONNX (and int8 with ``quantize="int8"``); returns the ``onnx.json`` record."""
    import onnxruntime
    import torch

    from textclf.core.loading import load_predictor

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    kind = meta.get("kind")
    kinds = onnx_kinds()
    if kind not in kinds:
        raise ConfigError(f"{model_dir}: {kind} models cannot be exported to ONNX (families that can: {', '.join(kinds)})")
    if quantize not in (None, *QUANTIZE):
        raise ConfigError(f"--quantize {quantize!r}: choose {', '.join(QUANTIZE)}")
    family = get_family(kind)
    if meta.get("task") == "multilabel" and not family.multilabel:
        able = sorted(name for name in kinds if get_family(name).multilabel)
        raise ConfigError(f"{model_dir}: a multi-label {kind} model cannot be exported to ONNX (its family keeps no sigmoid "
                          f"outputs there; multi-label families that can: {', '.join(able) or 'none'})")
    torch_predictor = load_predictor(model_dir, backend="torch")
    exporter = family.onnx_hook("export")
    start = time.perf_counter()
    # the old record goes first: until the new one is written, the directory holds no export the backend would pick
    (model_dir / INFO_FILE).unlink(missing_ok=True)
    fp32 = model_dir / FP32_FILE
    atomic_replace_file(lambda tmp: exporter(torch_predictor, Path(tmp), OPSET), fp32)
    files = [FP32_FILE]
    if quantize == "int8":
        quantize_int8(fp32, model_dir / INT8_FILE)
        files.append(INT8_FILE)
    texts = list(check_texts) if check_texts is not None else SAMPLE_TEXTS
    checks = {}
    for name in files:
        candidate = load_onnx_predictor(model_dir, meta, model_dir / name)
        checks[name] = compare(torch_predictor, candidate, texts)
    if checks[FP32_FILE]["max_abs_diff"] > FP32_TOLERANCE:
        for name in files:
            (model_dir / name).unlink(missing_ok=True)
        raise ModelError(f"{model_dir}: the float32 ONNX export differs from PyTorch by "
                         f"{checks[FP32_FILE]['max_abs_diff']:.2e} (> {FP32_TOLERANCE}); nothing kept")
    if quantize is None:  # a float32-only export replaces an older int8 one
        (model_dir / INT8_FILE).unlink(missing_ok=True)
    info = {"format": "onnx", "kind": kind, "opset": OPSET, "default": files[-1],
            "files": {name: file_record(model_dir / name) for name in files},
            "quantize": quantize, "check": checks, SOURCE_KEY: source_files(meta),
            "seconds": round(time.perf_counter() - start, 2),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}
    atomic_write_json(model_dir / INFO_FILE, info)
    log.info("exported %s: %s", model_dir, json.dumps(checks))
    return info

"""The ``onnx`` Predictor backend: a model exported by ``textclf export --format onnx`` run by ONNX Runtime.

``textclf export`` (:mod:`textclf.onnx_export`) writes into the model directory ``model.onnx``
(float32), ``model.int8.onnx`` with ``--quantize int8`` (dynamic int8 quantization of the
weights) and ``onnx.json`` (which files, their sizes and SHA-256, the opset, which file the
backend loads by default: the int8 one when there is one, and the check against PyTorch).
:func:`textclf.predictor.load_predictor` picks this backend when ``onnx.json`` is there (or
``--backend onnx``, or ``--model_path M/model.onnx``); ``--backend torch`` keeps the family's own.

Prediction needs neither torch nor the family's training code: BERT models tokenize with the
saved Hugging Face tokenizer (``encoder/``), BiLSTM models with their own tokenizer and
``vocab.json``. Inputs are batched like the PyTorch Predictors (BERT: length-sorted batches
padded to their longest text with an attention mask; BiLSTM: batches of texts of exactly the
same token count, since the exported LSTM runs unpacked) and results come back in input order.

An int8 model from ``--quantize int8`` quantizes its activations on the fly with one scale per
tensor, computed over the whole batch: texts sharing a batch would change each other's
probabilities (about 1% of labels flipped between batch sizes in a test), so such a model runs one
text at a time and a text gets the same answer in any batch (the serving tests compare the server
with in-process predictions). On a CPU that costs little: ONNX Runtime gains hardly anything from
batching short texts. ``TEXTCLF_THREADS`` sets ONNX Runtime's intra-op threads (default: all
usable cores).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.errors import ConfigError, ModelError
from textclf.predictor import Predictor

INFO_FILE = "onnx.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
#: model kinds with an exporter (:mod:`textclf.onnx_export`) and a backend class here
ONNX_KINDS = ("bert", "lstm")
BACKENDS = ("torch", "onnx")
#: ONNX metadata key that ``textclf export`` sets on int8 files, and its value for dynamic per-tensor activations
ACTIVATION_KEY = "textclf.activation_quantization"
DYNAMIC_ACTIVATIONS = "dynamic-per-tensor"
THREADS_ENV = "TEXTCLF_THREADS"


def read_info(model_dir: str | Path) -> dict | None:
    """``onnx.json`` of a model directory, or None when it holds no ONNX export."""
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ONNX export record: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise ModelError(f"{path}: not an ONNX export record (no 'files')")
    return info


def use_onnx(model_dir: str | Path, meta: dict, model_file: str | Path | None, backend: str | None) -> bool:
    """Whether ``load_predictor`` should load the ONNX export (see the module docstring)."""
    if backend not in (None, "auto", *BACKENDS):
        raise ConfigError(f"--backend {backend!r}: choose torch or onnx")
    names_onnx = model_file is not None and Path(model_file).suffix == ".onnx"
    if backend == "torch":
        if names_onnx:
            raise ConfigError(f"--backend torch, but --model_path names an ONNX file ({model_file})")
        return False
    if names_onnx:
        return True
    exported = (Path(model_dir) / INFO_FILE).is_file()
    if backend == "onnx":
        if meta.get("kind") not in ONNX_KINDS:
            raise ModelError(f"{model_dir}: --backend onnx: {meta.get('kind')} models have no ONNX export "
                             f"(families with one: {', '.join(ONNX_KINDS)})")
        if not exported:
            raise ModelError(f"{model_dir}: --backend onnx, but there is no ONNX export ({INFO_FILE}); "
                             f"run: textclf export --model_path {model_dir} --format onnx")
        return True
    return exported and model_file is None and meta.get("kind") in ONNX_KINDS


def usable_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads: ``$TEXTCLF_THREADS`` when set, else every usable core."""
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else usable_cores()


def make_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads (default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelError(f"{path}: cannot load the ONNX model ({type(exc).__name__}: {first})") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxPredictor(Predictor):
    """Base of the ONNX Predictors: the session, the file it came from, and loading with checks."""

    backend = "onnx"

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, batch_size: int):
        super().__init__(model_dir, meta)
        self.kind = meta["kind"]
        self.session = session
        self.onnx_file = onnx_file
        self.input_names = [i.name for i in session.get_inputs()]
        props = session.get_modelmeta().custom_metadata_map
        #: dynamic int8 activations make a text's result depend on its batch: run one text per session call
        self.one_at_a_time = props.get(ACTIVATION_KEY) == DYNAMIC_ACTIVATIONS
        self.batch_size = 1 if self.one_at_a_time else max(1, batch_size)

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> OnnxPredictor:
        """Load the default ONNX file of ``onnx.json`` (or ``model_file``) with its family's preprocessing."""
        from textclf.meta import read_meta

        meta = meta or read_meta(model_dir)
        return load_onnx_predictor(model_dir, meta, model_file)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output of one session run."""
        return self.session.run(None, feeds)[0]


class OnnxBertPredictor(OnnxPredictor):
    """A BERT-family model (encoder + pooling + head) exported to ONNX, with the saved tokenizer."""

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, tokenizer, max_length: int,
                 batch_size: int = 64):
        super().__init__(model_dir, meta, session, onnx_file, batch_size)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids like the PyTorch Predictor (special tokens, truncated to ``max_length``, unpadded)."""
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)
        return out["input_ids"]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities in ``self.labels`` order."""
        n_out = len(self.labels)
        if len(texts) == 0:
            return np.zeros((0, n_out), dtype=np.float64)
        rows = self.encode(texts)
        logits = np.zeros((len(rows), n_out), dtype=np.float32)
        order = np.argsort([len(r) for r in rows], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for j, i in enumerate(idx):
                ids[j, :len(rows[i])] = rows[i]
                mask[j, :len(rows[i])] = 1
            logits[idx] = self.run({"input_ids": ids, "attention_mask": mask})
        return softmax(logits)


class OnnxLSTMPredictor(OnnxPredictor):
    """A BiLSTM exported to ONNX; texts run in batches of one token count (the exported LSTM is unpacked)."""

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, encoder, batch_size: int = 256):
        super().__init__(model_dir, meta, session, onnx_file, batch_size)
        self.encoder = encoder

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities; texts with the same token count share a batch, results in input order."""
        n_out = len(self.labels)
        if len(texts) == 0:
            return np.zeros((0, n_out), dtype=np.float64)
        rows = self.encoder(texts)
        logits = np.zeros((len(rows), n_out), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        # (int8: batch_size 1, see the module docstring)
        for same in by_length.values():
            for start in range(0, len(same), self.batch_size):
                idx = same[start:start + self.batch_size]
                ids = np.asarray([rows[i] for i in idx], dtype=np.int64)
                logits[idx] = self.run({"ids": ids})
        return softmax(logits)


def _bert_parts(model_dir: Path, meta: dict) -> tuple[object, int, int]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    encoder_dir = model_dir / "encoder"
    if not encoder_dir.is_dir():
        raise ModelError(f"{encoder_dir}: missing from the BERT model directory (its tokenizer is needed)")
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{encoder_dir}: cannot load the tokenizer: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        raise ModelError(f"{encoder_dir}: tokenizer has no padding token")
    info = meta.get("bert") or {}
    batch = (info.get("predict") or {}).get("batch_size_cpu", info.get("predict_batch_size", 64))
    return tokenizer, int(info.get("max_length", 128)), int(batch) if isinstance(batch, int) else 64


def _lstm_encoder(model_dir: Path, meta: dict):
    from textclf.families.lstm.text import VOCAB_FILE, TextEncoder, Tokenizer, Vocab

    pre = meta.get("preprocess")
    if not isinstance(pre, dict):
        raise ModelError(f"{model_dir / 'meta.json'}: no 'preprocess' block; not a BiLSTM model directory")
    return TextEncoder(Tokenizer(pre["lowercase"], pre["pattern"]), Vocab.load(model_dir / VOCAB_FILE), pre["max_length"] or None)


def onnx_file_of(model_dir: Path, info: dict | None, model_file: str | Path | None) -> Path:
    """The ONNX file to load: ``model_file``, else ``onnx.json``'s default (int8 when exported, else float32)."""
    if model_file is not None:
        return Path(model_file)
    if info is None:
        raise ModelError(f"{model_dir}: no ONNX export ({INFO_FILE}); run: textclf export --model_path {model_dir} --format onnx")
    name = info.get("default") or (INT8_FILE if INT8_FILE in info["files"] else FP32_FILE)
    return model_dir / name


def load_onnx_predictor(model_dir: str | Path, meta: dict, model_file: str | Path | None = None) -> OnnxPredictor:
    """The ONNX Predictor of a model directory (its kind must have an exporter: ``bert``, ``lstm``)."""
    from textclf.integrity import verify_file

    model_dir = Path(model_dir)
    kind = meta.get("kind")
    if kind not in ONNX_KINDS:
        raise ModelError(f"{model_dir}: {kind} models have no ONNX backend (kinds with one: {', '.join(ONNX_KINDS)})")
    info = read_info(model_dir)
    path = onnx_file_of(model_dir, info, model_file)
    record = (info or {}).get("files", {}).get(path.name) if path.parent.resolve() == model_dir.resolve() else None
    if record:
        verify_file(path, record)
    elif not path.is_file():
        raise ModelError(f"{path}: ONNX model file not found")
    session = make_session(path)
    if kind == "bert":
        tokenizer, max_length, batch_size = _bert_parts(model_dir, meta)
        return OnnxBertPredictor(model_dir, meta, session, path, tokenizer, max_length, batch_size)
    encoder = _lstm_encoder(model_dir, meta)
    cfg = meta.get("config") or {}
    batch = (cfg.get("predict") or {}).get("batch_size_cpu", (cfg.get("train") or {}).get("eval_batch_size", 256))
    return OnnxLSTMPredictor(model_dir, meta, session, path, encoder, int(batch) if isinstance(batch, int) else 256)

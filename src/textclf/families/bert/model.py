"""The BERT family's model: any Hugging Face encoder + pooling + dropout + linear head, and its Predictor.

The model directory holds ``encoder/`` (the fine-tuned encoder and its tokenizer, in
Hugging Face format), ``head.pt`` (the linear head) and ``meta.json``; :class:`BertPredictor`
loads it through :func:`textclf.load_predictor`. Training lives in :mod:`.train`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import load_torch_weights
from textclf.core.long_text import LongText, document_batches, saved_long_text
from textclf.core.model_checks import check_label_count
from textclf.core.precision import DeviceInfo, Precision, predict_batch_size, resolve_precision
from textclf.core.predictor import Predictor
from textclf.core.torch_common import pool_chunks, predict_by_length, resolve_device
from textclf.families.bert.data import ChunkedDataset, EncodedDataset, encode, encode_chunked, load_tokenizer
from textclf.families.common.packaged import default_model_path  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

KIND = "bert"
ENCODER_DIR = "encoder"
HEAD_FILE = "head.pt"
POOLINGS = ("mean", "cls")

# --------------------------------------------------------------------------- model

def resolve_model_name(name: str | None) -> str:
    """``None``/``""``/``"auto"`` -> the shipped MiniLM's path; anything else is a hub id or a local path."""
    if name in (None, "", "auto"):
        return default_model_path()
    return str(name)


def load_encoder(name_or_path: str | Path) -> nn.Module:
    """``AutoModel.from_pretrained`` in float32 without the pooler layer the head does not use.

    An unused pooler would leave parameters without gradients, which DistributedDataParallel
    rejects. A model that cannot be found raises ModelError saying what to do.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "pooler weights unexpected" is intended here
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModel.from_pretrained(str(name_or_path), dtype=torch.float32, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            model = AutoModel.from_pretrained(str(name_or_path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        hint = " (HF_HUB_OFFLINE is set: only local paths and cached models work)" if offline else ""
        raise ModelError(f"cannot load encoder {name_or_path!r}{hint}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.float()


class BertClassifier(nn.Module):
    """Encoder -> pooling over the attention mask (mean, or the CLS token) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1, pooling: str = "mean",
                 chunk_pooling: str = "mean"):
        super().__init__()
        self.chunk_pooling = chunk_pooling  # how the windows of one document are pooled (long_text: chunk)
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)
        self.compile_state = "off"  # off | pending | on | failed (see compile_encoder)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the unmasked token states, or the first (CLS) token's state."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def compile_encoder(self) -> None:
        """``torch.compile`` the encoder in place (state-dict keys unchanged), with ``dynamic=True`` for bucketed lengths.

        Compilation happens at the first forward; if it fails there (no C++ compiler, an
        unsupported op, ...) a warning is logged and the encoder runs eagerly from then on.
        """
        try:
            self.encoder.compile(dynamic=True)
            self.compile_state = "pending"
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            log.warning("model.compile: torch.compile unavailable (%s); running the encoder eagerly", exc)
            self.compile_state = "failed"

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.compile_state != "pending":
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        try:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            self.compile_state = "on"
            return hidden
        except Exception as exc:  # noqa: BLE001 - compile errors come in many types
            log.warning("model.compile: compiling the encoder failed (%s: %s); running it eagerly",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.encoder._compiled_call_impl = None  # what nn.Module.compile set
            self.compile_state = "failed"
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_doc: torch.Tensor | None = None,
                n_docs: int | None = None) -> torch.Tensor:
        """Logits per row; with ``chunk_doc`` (each row's document in the batch) pooled to ``n_docs`` rows."""
        hidden = self._encode(input_ids, attention_mask)
        logits = self.head(self.dropout(self.pool(hidden, attention_mask)))
        if chunk_doc is None:
            return logits
        return pool_chunks(logits.float(), chunk_doc, int(n_docs), self.chunk_pooling, attention_mask.sum(dim=1))


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and values: equal digests mean equal parameters."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------- predictor

def predict_logits(model: BertClassifier, input_ids: list[list[int]] | EncodedDataset, pad_id: int, device: torch.device,
                   batch_size: int, precision: Precision | None = None) -> np.ndarray:
    """Logits for token id lists, computed in length-sorted batches and returned in input order.

    On CUDA, batches are padded in pinned memory and copied without blocking, and the forward
    runs under ``precision``'s autocast (bf16/fp16; fp32 is plain).
    """
    model.eval()
    data = input_ids if isinstance(input_ids, EncodedDataset) else EncodedDataset(input_ids, pad_id=pad_id)
    data.pad_id = pad_id
    cuda = device.type == "cuda"
    autocast = precision.autocast(device.type) if precision is not None else contextlib.nullcontext()

    def forward(idx: list[int]) -> torch.Tensor:
        batch = data.__getitems__(idx)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if cuda:
            ids, mask = ids.pin_memory(), mask.pin_memory()
        with autocast:
            return model(ids.to(device, non_blocking=cuda), mask.to(device, non_blocking=cuda))

    return predict_by_length(None, batch_size, model.head.out_features, forward, lengths=data.lengths)


def predict_document_logits(model: BertClassifier, data: ChunkedDataset, device: torch.device, batch_size: int,
                            precision: Precision | None = None) -> np.ndarray:
    """Logits per document of chunked texts, in input order: one row per document, its windows pooled.

    Documents go in length order, about ``batch_size`` windows per batch
    (:func:`textclf.core.long_text.document_batches`); each batch's windows run as one padded
    tensor and :func:`textclf.core.torch_common.pool_chunks` pools them on the device.
    """
    model.eval()
    cuda = device.type == "cuda"
    autocast = precision.autocast(device.type) if precision is not None else contextlib.nullcontext()
    out = np.zeros((len(data), model.head.out_features), dtype=np.float32)
    with torch.inference_mode():
        for docs in document_batches(data.window_counts, data.lengths, batch_size):
            batch = data.__getitems__(docs)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            if cuda:
                ids, mask = ids.pin_memory(), mask.pin_memory()
            with autocast:
                logits = model(ids.to(device, non_blocking=cuda), mask.to(device, non_blocking=cuda),
                               batch["chunk_doc"].to(device, non_blocking=cuda), len(docs))
            out[docs] = logits.float().cpu().numpy()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inference_bytes_per_row(config, max_length: int, activation_bytes: int = 4) -> int:
    """Rough memory of one text in an inference batch: one layer's activations alive at a time.

    ``max_length * hidden * 12`` values (hidden states in and out, Q/K/V, the 4x feed-forward)
    plus the attention scores ``heads * max_length**2``, at ``activation_bytes`` each.
    """
    hidden = int(getattr(config, "hidden_size", 768))
    heads = int(getattr(config, "num_attention_heads", max(1, hidden // 64)))
    return int(activation_bytes * (max_length * hidden * 12 + heads * max_length**2))


def predict_settings(info: dict) -> dict:
    """The prediction settings saved in meta.json's ``bert`` section, with defaults for older models."""
    legacy = info.get("predict_batch_size", 64)
    saved = info.get("predict") or {}
    return {"batch_size_cpu": saved.get("batch_size_cpu", legacy),
            "batch_size_gpu": saved.get("batch_size_gpu", legacy if "predict" not in info else "auto"),
            "precision": saved.get("precision", "auto")}


class BertPredictor(Predictor):
    """A fine-tuned encoder + head behind the shared Predictor interface.

    The batch size and precision are chosen for the device it runs on (``predict.*`` in the
    training config, saved in meta.json): small fp32 batches on the CPU, large bf16/fp16
    autocast batches on a GPU.
    """

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, model: BertClassifier, tokenizer, device: torch.device,
                 max_length: int, batch_size: int | None = None, precision: Precision | None = None,
                 long_text: LongText | None = None):
        super().__init__(model_dir, meta)
        self.long_text = long_text or LongText()
        model.chunk_pooling = self.long_text.pooling
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        settings = predict_settings((meta or {}).get("bert") or {})
        info = DeviceInfo.of(device)
        self.precision = precision or resolve_precision(settings["precision"], info)
        self.batch_size = batch_size or predict_batch_size(
            settings["batch_size_cpu"], settings["batch_size_gpu"], info,
            inference_bytes_per_row(model.encoder.config, max_length, self.precision.activation_bytes))

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> BertPredictor:
        """Load ``encoder/`` and ``head.pt`` from a model directory onto ``device`` (default ``$TEXTCLF_DEVICE`` or auto)."""
        from textclf.core.meta import read_meta

        model_dir = Path(model_dir)
        meta = meta or read_meta(model_dir)
        info = meta.get("bert") or {}
        encoder_dir, head_path = model_dir / ENCODER_DIR, model_dir / HEAD_FILE
        for path in (encoder_dir, head_path):
            if not path.exists():
                raise ModelError(f"{path}: missing from the BERT model directory (training did not finish?)")
        encoder = load_encoder(encoder_dir)
        tokenizer = load_tokenizer(encoder_dir, encoder.config.vocab_size)
        head = load_torch_weights(head_path)
        weight = head.get("weight") if isinstance(head, dict) else None
        if weight is not None and getattr(weight, "ndim", 0) == 2:
            check_label_count(head_path, weight.shape[0], meta["labels"])
        model = BertClassifier(encoder, len(meta["labels"]), info.get("dropout", 0.0), info.get("pooling", "mean"))
        try:
            model.head.load_state_dict(head)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(f"{head_path}: not the head of this model ({str(exc).splitlines()[0]})") from None
        max_length = info.get("max_length", 128)
        return cls(model_dir, meta, model, tokenizer, resolve_device(device), max_length,
                   long_text=saved_long_text(info.get("long_text"), max_length))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw head outputs, shape ``(len(texts), len(self.labels))`` (with ``long_text: chunk``: the windows' pooled logits)."""
        if self.long_text.chunk:
            data = encode_chunked(self.tokenizer, list(texts), self.max_length, self.long_text)
            return predict_document_logits(self.model, data, self.device, self.batch_size, self.precision)
        ids = encode(self.tokenizer, list(texts), self.max_length)
        return predict_logits(self.model, ids, self.tokenizer.pad_token_id, self.device, self.batch_size, self.precision)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities in ``self.labels`` order (multi-label: a sigmoid per label)."""
        from textclf.core.onnx_runtime import sigmoid

        logits = self.logits(texts)
        return sigmoid(logits) if self.multilabel else softmax(logits)


def save_model_dir(output_dir: Path, model: BertClassifier, tokenizer) -> None:
    """Write ``encoder/`` (weights, config, tokenizer) and ``head.pt``; meta.json comes last, from finish_run."""
    encoder_dir = output_dir / ENCODER_DIR
    tmp = output_dir / f".{ENCODER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.encoder.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(encoder_dir, ignore_errors=True)
    os.replace(tmp, encoder_dir)
    from textclf.core.atomic import atomic_replace_file

    head = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
    atomic_replace_file(lambda p: torch.save(head, p), output_dir / HEAD_FILE)

"""The BERT family's ONNX hook: its exporter and the ONNX Runtime Predictor (the saved tokenizer, length-sorted batches).

The graph classifies one window (``input_ids``/``attention_mask`` -> ``logits``); a model trained
with ``long_text: chunk`` is exported the same way, and its Predictor cuts texts into windows and
pools their logits in numpy, as the PyTorch Predictor does on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.long_text import encode_windows, pool_rows, saved_long_text, spread_windows
from textclf.core.onnx_runtime import OnnxPredictor


class OnnxBertPredictor(OnnxPredictor):
    """A BERT-family model (encoder + pooling + head) exported to ONNX, with the saved tokenizer."""

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, tokenizer, max_length: int,
                 batch_size: int = 64):
        super().__init__(model_dir, meta, session, onnx_file, batch_size)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id)
        self.long_text = saved_long_text((meta.get("bert") or {}).get("long_text"), max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids like the PyTorch Predictor (special tokens, truncated to ``max_length``, unpadded)."""
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)
        return out["input_ids"]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities in ``self.labels`` order (multi-label: a sigmoid per label).

        With ``long_text: chunk`` the graph runs on every window (the same windows as the PyTorch
        Predictor) and the windows' logits are pooled per document in numpy (:func:`pool_rows`).
        """
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        if not self.long_text.chunk:
            return self.probabilities(self.row_logits(self.encode(texts)))
        lt = self.long_text
        rows, doc = encode_windows(self.tokenizer, texts, self.max_length, lt.stride)
        kept = spread_windows(doc, len(texts), lt.max_chunks)
        rows = [rows[i] for i in kept]
        logits = self.row_logits(rows)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.float64, count=len(rows))
        return self.probabilities(pool_rows(logits, doc[kept], len(texts), lt.pooling, lengths))

    def row_logits(self, rows: list[list[int]]) -> np.ndarray:
        """The graph's logits for token id rows, in length-sorted batches, returned in input order."""
        n_out = len(self.labels)
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
        return logits


def bert_parts(model_dir: Path, meta: dict) -> tuple[object, int, int]:
    """The saved tokenizer, ``max_length`` and the CPU predict batch size of a BERT model directory."""
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


def load(model_dir: Path, meta: dict, session, path: Path) -> OnnxBertPredictor:
    """The ONNX Predictor of a BERT model directory, on ``session`` (loaded from ``path``)."""
    tokenizer, max_length, batch_size = bert_parts(model_dir, meta)
    return OnnxBertPredictor(model_dir, meta, session, path, tokenizer, max_length, batch_size)


def export(predictor, path: Path, opset: int) -> None:
    """Write the whole classifier (encoder, pooling, head) to ``path``: inputs ``input_ids``/``attention_mask``, output ``logits``."""
    import torch

    model = predictor.model.to("cpu").eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2003, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=opset,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                    "logits": {0: "batch"}})

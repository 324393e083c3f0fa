"""The BiLSTM family's ONNX hook: its exporter (the LSTM unpacked) and the ONNX Runtime Predictor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.onnx_runtime import OnnxPredictor


class OnnxLSTMPredictor(OnnxPredictor):
    """A BiLSTM exported to ONNX; texts run in batches of one token count (the exported LSTM is unpacked)."""

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, encoder, batch_size: int = 256):
        super().__init__(model_dir, meta, session, onnx_file, batch_size)
        self.encoder = encoder

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities (multi-label: a sigmoid per label); texts with the same token count share a batch, in input order."""
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
        return self.probabilities(logits)


def lstm_encoder(model_dir: Path, meta: dict):
    """The BiLSTM's text encoder (tokenizer, vocabulary, max length) from ``meta.json``'s ``preprocess`` block."""
    from textclf.families.lstm.text import VOCAB_FILE, TextEncoder, Tokenizer, Vocab

    pre = meta.get("preprocess")
    if not isinstance(pre, dict):
        raise ModelError(f"{model_dir / 'meta.json'}: no 'preprocess' block; not a BiLSTM model directory")
    return TextEncoder(Tokenizer(pre["lowercase"], pre["pattern"]), Vocab.load(model_dir / VOCAB_FILE), pre["max_length"] or None)


def load(model_dir: Path, meta: dict, session, path: Path) -> OnnxLSTMPredictor:
    """The ONNX Predictor of a BiLSTM model directory, on ``session`` (loaded from ``path``)."""
    encoder = lstm_encoder(model_dir, meta)
    cfg = meta.get("config") or {}
    batch = (cfg.get("predict") or {}).get("batch_size_cpu", (cfg.get("train") or {}).get("eval_batch_size", 256))
    return OnnxLSTMPredictor(model_dir, meta, session, path, encoder, int(batch) if isinstance(batch, int) else 256)


def _lstm_module(model):
    """The BiLSTM's forward without packing (exact for a batch of texts of one length)."""
    import torch
    from torch import nn

    class UnpackedLSTM(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            m = self.m
            out, (h_n, _) = m.lstm(m.embedding(ids))
            if m.pooling == "last":
                feats = torch.cat([h_n[-2], h_n[-1]], dim=1) if m.bidirectional else h_n[-1]
            elif m.pooling == "max":
                feats = out.max(dim=1).values
            else:
                feats = out.mean(dim=1)
            return m.head(feats)

    return UnpackedLSTM(model).eval()


def export(predictor, path: Path, opset: int) -> None:
    """Write the BiLSTM (unpacked, see :func:`_lstm_module`) to ``path``: input ``ids``, output ``logits``."""
    import torch

    module = _lstm_module(predictor.model.to("cpu").eval())
    ids = torch.tensor([[2, 3, 4], [5, 6, 7]], dtype=torch.long)
    torch.onnx.export(module, (ids,), str(path), dynamo=False, opset_version=opset, input_names=["ids"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "batch", 1: "time"}, "logits": {0: "batch"}})

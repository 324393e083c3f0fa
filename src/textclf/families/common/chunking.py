"""Long documents for the sentence encoders: the encoder side of :mod:`textclf.core.long_text`.

Config keys (the same names as the BERT family's, in the ``encoder`` block of the embeddings and
setfit families; see docs/families.md "Long documents"): ``long_text`` (``truncate``, the default,
or ``chunk``), ``stride`` (tokens shared by consecutive windows; null or 0: none), ``max_chunks``
and ``chunk_pooling``. The rules - validation, the windows (the fast tokenizer's
``return_overflowing_tokens``), which windows a long document keeps (spread evenly, first and last
included), the statistics and the pooling - live in :mod:`textclf.core.long_text`, as for BERT.

What is the encoders' own: a sentence encoder reads text, not token ids, so each window goes back to
text as the slice of the original document its tokens' character offsets span (the encoder
tokenizes it to the same tokens); all windows of a call are encoded in one batched call, pooled,
and L2-normalised again when the encoder normalises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclf.core.long_text import (
    DEFAULT_MAX_CHUNKS,
    ChunkStats,
    LongText,
    chunk_stats,
    cut_windows,
    long_text_settings,
    pool_rows,
    spread_windows,
)

WHERE = "encoder"
DEFAULTS = {"long_text": "truncate", "stride": 0, "max_chunks": DEFAULT_MAX_CHUNKS, "chunk_pooling": "mean"}


class ChunkSettings(LongText):
    """How an encoder reads texts longer than its ``max_length``: :class:`textclf.core.long_text.LongText`, read from
    and written to the ``encoder`` block's key names (``long_text``, ``stride``, ``max_chunks``, ``chunk_pooling``)."""

    @classmethod
    def from_config(cls, block: dict | None, auto: bool = False) -> ChunkSettings:
        """The settings of an ``encoder`` config block (or a meta.json encoder record); a bad value is a one-line ConfigError.

        Checked by :func:`textclf.core.long_text.long_text_settings` (not ``capped``: the encoder's
        window is known once its tokenizer is, and the stride is checked against it then). ``auto``: the
        family accepts ``chunk_pooling: auto`` (setfit's training; a saved model records the pooling chosen).
        """
        s = long_text_settings(block or {}, where=WHERE, capped=False, auto=auto)
        return cls(s.mode, s.stride, s.max_chunks, s.pooling)

    def with_pooling(self, pooling: str) -> ChunkSettings:
        """The same settings pooling by ``pooling``."""
        return dataclasses.replace(self, pooling=pooling)

    def record(self) -> dict:
        """The settings as config/meta.json keys."""
        return {"long_text": self.mode, "stride": self.stride, "max_chunks": self.max_chunks, "chunk_pooling": self.pooling}

    def key_part(self) -> dict | None:
        """What the embedding cache key adds: nothing for ``truncate`` (old keys stay valid), the settings for ``chunk``."""
        return self.record() if self.chunk else None


@dataclass
class Windows:
    """The kept windows of a list of documents, in document order.

    ``texts[i]`` is window ``i``, ``doc[i]`` its document, ``lengths[i]`` its text tokens;
    ``chunks`` the statistics of the split (:class:`textclf.core.long_text.ChunkStats`).
    """

    texts: list[str]
    doc: np.ndarray
    lengths: np.ndarray
    chunks: ChunkStats

    @property
    def n_docs(self) -> int:
        """How many documents were split."""
        return self.chunks.documents

    def stats(self) -> dict:
        """For meta.json: documents, share longer than one window (what truncation cuts), share still cut after
        ``max_chunks``, mean windows per document and windows in all."""
        c = self.chunks
        return {"documents": c.documents, "share_over_max_length": round(c.cut_share, 4),
                "share_cut": round(c.capped_share, 4), "mean_chunks": round(c.mean_chunks, 4), "windows": c.windows}


def split_windows(tokenizer: Any, texts: Sequence[str], max_length: int, settings: ChunkSettings) -> Windows:
    """Split ``texts`` into windows of ``max_length`` tokens (special tokens included) overlapping by ``stride``,
    at most ``max_chunks`` per document spread over it (an empty text is one empty window)."""
    texts = list(texts)
    rows, doc, spans = cut_windows(tokenizer, texts, max_length, settings.stride, WHERE, spans=True)
    special = tokenizer.num_special_tokens_to_add(pair=False)
    keep = spread_windows(doc, len(texts), settings.max_chunks)
    kept_doc = doc[keep]
    window_texts = [texts[d][spans[i][0]:spans[i][1]] for i, d in zip(keep.tolist(), kept_doc.tolist(), strict=True)]
    lengths = np.fromiter((len(rows[i]) - special for i in keep.tolist()), dtype=np.int64, count=len(keep))
    return Windows(window_texts, kept_doc, lengths, chunk_stats(doc, kept_doc, len(texts)))


def pool(vectors: np.ndarray, doc: np.ndarray, n_docs: int, how: str = "mean", lengths: np.ndarray | None = None,
         normalize: bool = False) -> np.ndarray:
    """One float32 vector per document from its windows' vectors (:func:`textclf.core.long_text.pool_rows`;
    ``length`` weights an empty window as 1), L2-normalised again when ``normalize``."""
    weights = None if lengths is None else np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    out = pool_rows(vectors, doc, n_docs, how, weights, where=WHERE).astype(np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0, 1.0, norms)
    return out


def encode_windows(texts: Sequence[str], tokenizer: Any, max_length: int, settings: ChunkSettings,
                   encode: Callable[[list[str]], np.ndarray], normalize: bool) -> tuple[np.ndarray, dict]:
    """``(one pooled vector per text, chunk statistics)``: split, encode every window in one call, pool."""
    windows, vectors = encoded_windows(texts, tokenizer, max_length, settings, encode)
    return pool_windows(windows, vectors, settings.pooling, normalize), windows.stats()


def encoded_windows(texts: Sequence[str], tokenizer: Any, max_length: int, settings: ChunkSettings,
                    encode: Callable[[list[str]], np.ndarray]) -> tuple[Windows, np.ndarray]:
    """``(the windows, their vectors)``: split, and encode every window in one call (to pool more than one way)."""
    windows = split_windows(tokenizer, texts, max_length, settings)
    return windows, encode(windows.texts)


def pool_windows(windows: Windows, vectors: np.ndarray, how: str, normalize: bool) -> np.ndarray:
    """One vector per document of ``windows`` from the windows' ``vectors``, pooled by ``how``."""
    return pool(vectors, windows.doc, windows.n_docs, how, windows.lengths, normalize)

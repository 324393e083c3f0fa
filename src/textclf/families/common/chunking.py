"""Long documents for the sentence encoders: split texts into token windows, encode them, pool per document.

Config keys (the same names as the BERT family's, in the ``encoder`` block of the embeddings and
setfit families; see docs/families.md "Long documents"):

* ``long_text``: ``truncate`` (default: the encoder reads the first ``max_length`` tokens, as before)
  or ``chunk``;
* ``stride``: tokens shared by consecutive windows (0: none);
* ``max_chunks``: at most this many windows per document (the first ones; the rest of a longer
  document is cut);
* ``chunk_pooling``: ``mean``, ``max`` or ``length`` (mean weighted by each window's token count).

A window holds ``max_length`` minus the special tokens ([CLS], [SEP]) of content tokens. The split is
the fast tokenizer's own (``return_overflowing_tokens`` with ``stride``, in batches of documents);
each window goes back to text as the slice of the original document its tokens' character offsets
span, so the encoder tokenizes it to the same tokens. All windows of a call are encoded in one
batched call and pooled with numpy index operations (``np.add.at`` / ``np.maximum.at``), so there is
no Python loop per window around the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclf.core.errors import ConfigError

LONG_TEXT = ("truncate", "chunk")
CHUNK_POOLING = ("mean", "max", "length")
#: documents handed to the tokenizer at once (bounds the memory of the offsets)
TOKENIZE_BATCH = 1024
DEFAULTS = {"long_text": "truncate", "stride": 0, "max_chunks": 8, "chunk_pooling": "mean"}


@dataclass(frozen=True)
class ChunkSettings:
    """How an encoder reads texts longer than its ``max_length``."""

    long_text: str = "truncate"
    stride: int = 0
    max_chunks: int = 8
    chunk_pooling: str = "mean"

    @classmethod
    def from_config(cls, block: dict | None) -> ChunkSettings:
        """The settings of an ``encoder`` config block (or a meta.json encoder record); a bad value is a one-line ConfigError."""
        b = {**DEFAULTS, **{k: v for k, v in (block or {}).items() if k in DEFAULTS and v is not None}}
        if b["long_text"] not in LONG_TEXT:
            raise ConfigError(f"encoder.long_text: expected one of {', '.join(LONG_TEXT)}, got {b['long_text']!r}")
        if b["chunk_pooling"] not in CHUNK_POOLING:
            raise ConfigError(f"encoder.chunk_pooling: expected one of {', '.join(CHUNK_POOLING)}, got {b['chunk_pooling']!r}")
        for key, low in (("stride", 0), ("max_chunks", 1)):
            if isinstance(b[key], bool) or not isinstance(b[key], int) or b[key] < low:
                raise ConfigError(f"encoder.{key}: expected an integer of at least {low}, got {b[key]!r}")
        return cls(b["long_text"], b["stride"], b["max_chunks"], b["chunk_pooling"])

    @property
    def chunk(self) -> bool:
        """Whether long texts are split into windows (else truncated)."""
        return self.long_text == "chunk"

    def record(self) -> dict:
        """The settings as config/meta.json keys."""
        return {"long_text": self.long_text, "stride": self.stride, "max_chunks": self.max_chunks,
                "chunk_pooling": self.chunk_pooling}

    def key_part(self) -> dict | None:
        """What the embedding cache key adds: nothing for ``truncate`` (old keys stay valid), the settings for ``chunk``."""
        return self.record() if self.chunk else None


@dataclass
class Windows:
    """The windows of a list of documents, in document order.

    ``texts[i]`` is window ``i``, ``doc[i]`` its document, ``lengths[i]`` its content tokens;
    ``doc_tokens[d]`` is document ``d``'s whole length in content tokens and ``doc_windows[d]`` the
    windows it would need without ``max_chunks``.
    """

    texts: list[str]
    doc: np.ndarray
    lengths: np.ndarray
    doc_tokens: np.ndarray
    doc_windows: np.ndarray

    @property
    def n_docs(self) -> int:
        """How many documents were split."""
        return len(self.doc_tokens)

    def stats(self, window: int) -> dict:
        """Share of documents longer than one ``window`` (what truncation cuts), share still cut after
        ``max_chunks``, and the mean number of windows per document."""
        n = max(self.n_docs, 1)
        kept = np.bincount(self.doc, minlength=self.n_docs) if len(self.doc) else np.zeros(0, dtype=int)
        return {"documents": int(self.n_docs),
                "share_over_max_length": round(float((self.doc_tokens > window).sum()) / n, 4),
                "share_cut": round(float((self.doc_windows > kept).sum()) / n, 4),
                "mean_chunks": round(float(kept.sum()) / n, 4), "windows": int(kept.sum())}


def window_tokens(tokenizer: Any, max_length: int) -> int:
    """Content tokens per window: ``max_length`` less the special tokens the tokenizer adds to one text."""
    n = int(max_length) - int(tokenizer.num_special_tokens_to_add(pair=False))
    if n < 1:
        raise ConfigError(f"encoder.max_length {max_length}: leaves no room for text after the special tokens")
    return n


def split_windows(tokenizer: Any, texts: Sequence[str], max_length: int, settings: ChunkSettings) -> Windows:
    """Split ``texts`` into windows of ``max_length`` tokens (special tokens included) overlapping by ``stride``,
    at most ``max_chunks`` per document (an empty text is one empty window)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder.long_text chunk: needs a fast (Rust) tokenizer for the token offsets; "
                          f"{type(tokenizer).__name__} is not one")
    size = window_tokens(tokenizer, max_length)
    if settings.stride >= size:
        raise ConfigError(f"encoder.stride {settings.stride}: must be below the {size} text tokens of a window "
                          f"(max_length {max_length} less the special tokens)")
    texts = list(texts)
    parts_doc, parts_len, parts_text = [], [], []
    for b in range(0, len(texts), TOKENIZE_BATCH):
        batch = texts[b:b + TOKENIZE_BATCH]
        enc = tokenizer(batch, add_special_tokens=False, truncation=True, max_length=size, stride=settings.stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False)
        doc = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        offsets = enc["offset_mapping"]
        parts_doc.append(doc + b)
        parts_len.append(np.fromiter((len(o) for o in offsets), dtype=np.int64, count=len(offsets)))
        parts_text.append([batch[d][o[0][0]:o[-1][1]] if o else "" for d, o in zip(doc.tolist(), offsets, strict=True)])
    doc = np.concatenate(parts_doc) if parts_doc else np.zeros(0, dtype=np.int64)
    lengths = np.concatenate(parts_len) if parts_len else np.zeros(0, dtype=np.int64)
    all_texts = [t for part in parts_text for t in part]
    n_docs = len(texts)
    doc_windows = np.bincount(doc, minlength=n_docs)
    # every window after a document's first repeats `stride` tokens of the one before it
    doc_tokens = np.bincount(doc, weights=lengths, minlength=n_docs).astype(np.int64) - settings.stride * np.maximum(doc_windows - 1, 0)
    keep = rank_in_group(doc) < settings.max_chunks
    return Windows([t for t, k in zip(all_texts, keep.tolist(), strict=True) if k], doc[keep], lengths[keep], doc_tokens,
                   doc_windows)


def rank_in_group(group: np.ndarray) -> np.ndarray:
    """The position of each element within its run of equal, sorted ``group`` values (``[0,0,1,1,1] -> [0,1,0,1,2]``)."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def pool(vectors: np.ndarray, doc: np.ndarray, n_docs: int, how: str = "mean", lengths: np.ndarray | None = None,
         normalize: bool = False) -> np.ndarray:
    """One vector per document from its windows' vectors: ``mean``, ``max`` or ``length`` (mean weighted by
    ``lengths``, an empty window counting as 1), L2-normalised again when ``normalize``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    doc = np.asarray(doc, dtype=np.int64)
    if how not in CHUNK_POOLING:
        raise ConfigError(f"encoder.chunk_pooling: expected one of {', '.join(CHUNK_POOLING)}, got {how!r}")
    if how == "max":
        out = np.full((n_docs, vectors.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, doc, vectors)
        out[~np.isfinite(out)] = 0.0
    else:
        weights = np.ones(len(doc)) if how == "mean" else np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
        out64 = np.zeros((n_docs, vectors.shape[1]), dtype=np.float64)
        np.add.at(out64, doc, vectors * weights[:, None])
        total = np.bincount(doc, weights=weights, minlength=n_docs)
        out = (out64 / np.where(total == 0, 1.0, total)[:, None]).astype(np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0, 1.0, norms)
    return out


def encode_windows(texts: Sequence[str], tokenizer: Any, max_length: int, settings: ChunkSettings,
                   encode: Callable[[list[str]], np.ndarray], normalize: bool) -> tuple[np.ndarray, dict]:
    """``(one pooled vector per text, chunk statistics)``: split, encode every window in one call, pool."""
    windows = split_windows(tokenizer, texts, max_length, settings)
    vectors = encode(windows.texts)
    pooled = pool(vectors, windows.doc, windows.n_docs, settings.chunk_pooling, windows.lengths, normalize)
    return pooled, windows.stats(window_tokens(tokenizer, max_length))

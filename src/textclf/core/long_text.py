"""Long documents: ``model.long_text: truncate | chunk`` for the families that read tokens.

``truncate`` (the default) reads a text's first ``max_length`` tokens, as textclf always did.
``chunk`` cuts a text's token ids into windows of ``max_length`` tokens (special tokens
included) that overlap by ``stride`` tokens, keeps at most ``max_chunks`` windows per document
and pools the windows' outputs into one row per document (``chunk_pooling``):

* ``mean`` - the plain mean of the windows' rows;
* ``max`` - the element-wise maximum;
* ``length`` - the mean weighted by each window's token count (a short last window counts less).

This module is the one home of these rules for every family that chunks: BERT (the ``model``
block) and the sentence encoders of embeddings and setfit (the ``encoder`` block, through the thin
text adapter :mod:`textclf.families.common.chunking`). The same four keys: ``long_text``,
``stride`` (null: ``max_length // 4`` for BERT, 0 for the encoders), ``max_chunks`` (8) and
``chunk_pooling`` (``mean``). Windows come from the Hugging Face fast tokenizer itself
(``return_overflowing_tokens`` with ``stride``: :func:`encode_windows`), so they follow the
tokenizer's own rules. A document with more windows than ``max_chunks`` keeps windows spread
evenly over it, the first and the last included (:func:`spread_windows`): a cue at the end of a
long text is still read, which the first ``max_chunks`` windows would miss.

This module needs neither torch nor a family: the ONNX predictors pool here in numpy
(:func:`pool_rows`); the torch version for batches on the device is
:func:`textclf.core.torch_common.pool_chunks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from textclf.core.errors import ConfigError, ModelError

MODES = ("truncate", "chunk")
POOLINGS = ("mean", "max", "length")
#: ``chunk_pooling: auto``: pool every way and keep the pooling with the best valid score. Only a family that
#: can refit what reads the pooled rows cheaply offers it (setfit: its head); BERT pools inside the trained model.
AUTO_POOLING = "auto"
DEFAULT_MAX_CHUNKS = 8
#: texts per tokenizer call: one batched call per slice keeps memory bounded on large splits
ENCODE_SLICE = 20000


@dataclass(frozen=True)
class LongText:
    """Resolved long-text settings (``stride`` already a number of tokens)."""

    mode: str = "truncate"
    stride: int = 0
    max_chunks: int = DEFAULT_MAX_CHUNKS
    pooling: str = "mean"

    @property
    def chunk(self) -> bool:
        """True when texts are cut into windows."""
        return self.mode == "chunk"

    def as_dict(self) -> dict:
        """The settings for meta.json."""
        return asdict(self)


def default_stride(max_length: int) -> int:
    """The overlap when ``model.stride`` is null: a quarter of ``max_length``."""
    return max(0, int(max_length) // 4)


def long_text_settings(model: dict, max_length: int | None = None, where: str = "model",
                       capped: bool = True, auto: bool = False) -> LongText:
    """The ``long_text``/``stride``/``max_chunks``/``chunk_pooling`` keys of a ``model`` block, checked.

    Missing keys mean truncation (configs and models older than these settings). A bad value is a
    one-line ConfigError naming ``where.<key>``. ``capped`` (BERT): ``max_length`` is known, a null
    stride is ``max_length // 4`` and a stride may not pass ``max_length // 2``. Not ``capped`` (the
    sentence encoders, whose null ``max_length`` is the model's own): a null stride is 0 and the
    stride is checked against the window when texts are cut (:func:`window_size`). ``auto``: the
    family accepts ``chunk_pooling: auto`` (:data:`AUTO_POOLING`).
    """
    mode = str(model.get("long_text") or "truncate").lower()
    if mode not in MODES:
        raise ConfigError(f"{where}.long_text: expected one of {', '.join(MODES)}, got {model.get('long_text')!r}")
    pooling = str(model.get("chunk_pooling") or "mean").lower()
    allowed = POOLINGS + ((AUTO_POOLING,) if auto else ())
    if pooling not in allowed:
        hint = " (auto, chosen on valid, is the setfit family's)" if pooling == AUTO_POOLING else ""
        raise ConfigError(f"{where}.chunk_pooling: expected one of {', '.join(allowed)}, "
                          f"got {model.get('chunk_pooling')!r}{hint}")
    max_chunks = model.get("max_chunks")
    max_chunks = DEFAULT_MAX_CHUNKS if max_chunks is None else max_chunks
    if not _is_int(max_chunks) or max_chunks < 1:
        raise ConfigError(f"{where}.max_chunks: expected an integer >= 1, got {max_chunks!r}")
    stride = model.get("stride")
    if not capped:
        stride = 0 if stride is None else stride
        if not _is_int(stride) or stride < 0:
            raise ConfigError(f"{where}.stride: expected an integer of at least 0, got {stride!r}")
        return LongText(mode, int(stride), int(max_chunks), pooling)
    max_length = int(max_length if max_length is not None else model.get("max_length", 128))
    if stride is None:
        stride = default_stride(max_length)
    if not _is_int(stride) or stride < 0 or stride > max_length // 2:
        raise ConfigError(f"{where}.stride: expected null or an integer from 0 to max_length // 2 "
                          f"({max_length // 2}), got {stride!r}")
    return LongText(mode, int(stride), int(max_chunks), pooling)


def _is_int(value) -> bool:
    """An int that is not a bool (JSON ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def window_size(tokenizer, max_length: int, stride: int, where: str = "model") -> int:
    """Text tokens per window: ``max_length`` less the special tokens the tokenizer adds to one text.

    Checks that the window holds text and that ``stride`` is smaller than it (a one-line
    ConfigError otherwise), and that the tokenizer is a fast one (the windows come from its
    ``return_overflowing_tokens``).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{where}.long_text chunk: needs a fast (Rust) tokenizer; {type(tokenizer).__name__} is not one")
    size = int(max_length) - int(tokenizer.num_special_tokens_to_add(pair=False))
    if size < 1:
        raise ConfigError(f"{where}.max_length {max_length}: leaves no room for text after the special tokens")
    if stride >= size:
        raise ConfigError(f"{where}.stride {stride}: must be below the {size} text tokens of a window "
                          f"(max_length {max_length} less the special tokens)")
    return size


def encode_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int,
                   where: str = "model") -> tuple[list[list[int]], np.ndarray]:
    """Every window of every text: ``(token id lists, document index of each window)``.

    One batched call of the Hugging Face tokenizer per slice of texts, with
    ``return_overflowing_tokens`` and ``stride`` (windows of ``max_length`` ids, special tokens
    included, consecutive windows sharing ``stride`` tokens). An empty text gives one window.
    """
    rows, doc, _ = cut_windows(tokenizer, texts, max_length, stride, where)
    return rows, doc


def cut_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int, where: str = "model",
                spans: bool = False) -> tuple[list[list[int]], np.ndarray, list[tuple[int, int]] | None]:
    """:func:`encode_windows` plus, with ``spans``, each window's character span ``(start, end)`` in its text.

    The span runs from the first text token's first character to the last one's last character
    (special tokens left out; ``(0, 0)`` for a window without text): the slice a sentence encoder
    reads back as the window's text.
    """
    texts = list(texts)
    window_size(tokenizer, max_length, stride, where)
    rows: list[list[int]] = []
    docs: list[np.ndarray] = []
    cuts: list[tuple[int, int]] | None = [] if spans else None
    for start in range(0, len(texts), ENCODE_SLICE):
        out = tokenizer(texts[start:start + ENCODE_SLICE], truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, padding=False, return_attention_mask=False,
                        return_token_type_ids=False, return_offsets_mapping=spans, return_special_tokens_mask=spans)
        rows += out["input_ids"]
        docs.append(np.asarray(out["overflow_to_sample_mapping"], dtype=np.int64) + start)
        if spans:
            for offsets, special in zip(out["offset_mapping"], out["special_tokens_mask"], strict=True):
                text = [o for o, s in zip(offsets, special, strict=True) if not s]
                cuts.append((text[0][0], text[-1][1]) if text else (0, 0))
    return rows, (np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)), cuts


def spread_windows(doc: np.ndarray, n_docs: int, max_chunks: int) -> np.ndarray:
    """Indices of the windows kept: at most ``max_chunks`` per document, spread evenly (first and last kept).

    ``doc`` maps each window to its document and is sorted (a document's windows are
    consecutive, as :func:`encode_windows` returns them). Vectorised: no loop over documents.
    """
    doc = np.asarray(doc, dtype=np.int64)
    counts = np.bincount(doc, minlength=n_docs)
    starts = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    keep = np.minimum(counts, max_chunks)
    owner = np.repeat(np.arange(n_docs), keep)
    first = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(keep[:-1], out=first[1:])
    k = np.arange(int(keep.sum())) - first[owner]  # 0..keep-1 within each document
    n, m = counts[owner], keep[owner]
    # k-th of m windows spread over n: round(k * (n - 1) / (m - 1)); identity when n == m
    step = np.where(m > 1, (n - 1) / np.maximum(m - 1, 1), 0.0)
    return starts[owner] + np.rint(k * step).astype(np.int64)


@dataclass(frozen=True)
class ChunkStats:
    """How a split was chunked: documents, the share longer than one window, windows per document."""

    documents: int
    cut_share: float
    mean_chunks: float
    capped_share: float
    max_chunks_seen: int
    windows: int = 0

    def as_dict(self) -> dict:
        """Rounded values for meta.json."""
        return {"documents": self.documents, "cut_share": round(self.cut_share, 4),
                "mean_chunks": round(self.mean_chunks, 3), "capped_share": round(self.capped_share, 4),
                "max_chunks_seen": self.max_chunks_seen}


def chunk_stats(all_doc: np.ndarray, kept_doc: np.ndarray, n_docs: int) -> ChunkStats:
    """Statistics of one split: ``all_doc`` maps every window to its document, ``kept_doc`` the kept ones.

    ``cut_share``: documents longer than ``max_length`` (more than one window); ``mean_chunks``:
    kept windows per document; ``capped_share``: documents that had more than ``max_chunks`` windows;
    ``windows``: the windows kept in all.
    """
    counts = np.bincount(np.asarray(all_doc, dtype=np.int64), minlength=n_docs)
    kept = np.bincount(np.asarray(kept_doc, dtype=np.int64), minlength=n_docs)
    if n_docs == 0:
        return ChunkStats(0, 0.0, 0.0, 0.0, 0)
    return ChunkStats(n_docs, float((counts > 1).mean()), float(kept.mean()), float((counts > kept).mean()),
                      int(counts.max()), int(kept.sum()))


def pool_rows(values: np.ndarray, doc: np.ndarray, n_docs: int, pooling: str,
              weights: np.ndarray | None = None, where: str = "model") -> np.ndarray:
    """Pool window rows ``values`` (windows x k) into ``(n_docs, k)`` by their document index ``doc``.

    ``mean``, ``max``, or ``length`` (the mean weighted by ``weights``, each window's token
    count). Vectorised with ``np.add.at``/``np.maximum.at``; the windows of a document need not be
    adjacent, and a document without windows pools to zeros.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"{where}.chunk_pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    values = np.asarray(values, dtype=np.float64)
    doc = np.asarray(doc, dtype=np.int64)
    out = np.zeros((n_docs, values.shape[1]), dtype=np.float64)
    if pooling == "max":
        out.fill(-np.inf)
        np.maximum.at(out, doc, values)
        out[np.isneginf(out)] = 0.0
        return out
    w = np.ones(len(doc)) if pooling == "mean" or weights is None else np.asarray(weights, dtype=np.float64)
    np.add.at(out, doc, values * w[:, None])
    total = np.bincount(doc, weights=w, minlength=n_docs)
    return out / np.where(total == 0, 1.0, total)[:, None]


def document_batches(window_counts: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Documents in length order, cut into batches of about ``batch_size`` windows each.

    A batch starts a new document while fewer than ``batch_size`` windows came before it, so it
    holds at most ``batch_size + max_chunks - 1`` windows; a document is never split.
    """
    counts = np.asarray(window_counts, dtype=np.int64)
    order = np.argsort(np.asarray(lengths), kind="stable")
    if not len(order):
        return []
    before = np.cumsum(counts[order]) - counts[order]
    batch = before // max(1, int(batch_size))
    return np.split(order, np.flatnonzero(np.diff(batch)) + 1)


def saved_long_text(block: dict | None, max_length: int, where: str = "meta.json long_text") -> LongText:
    """The settings a model saved (:meth:`LongText.as_dict`, in its meta.json); truncation for older models.

    A bad value is a ModelError (the model directory, not the user's config, is wrong).
    """
    saved = block or {}
    try:
        return long_text_settings({"long_text": saved.get("mode"), "stride": saved.get("stride"),
                                   "max_chunks": saved.get("max_chunks", DEFAULT_MAX_CHUNKS),
                                   "chunk_pooling": saved.get("pooling")}, max_length, where=where)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None

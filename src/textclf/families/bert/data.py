"""Tokenised datasets, the token cache, dynamic padding and loaders for the BERT family.

Every split is tokenised once, up front, by the model's fast tokenizer in one batched call
(truncated to ``max_length``, not padded) and kept as one flat int32 id array plus offsets
(:class:`EncodedDataset`). :func:`cached_encode` stores those arrays in the model directory's
work area (``work/tokens_<split>_<key>.npz``, the key a SHA-256 of the tokenizer's full
definition, ``max_length`` and the texts), so a rerun or ``--resume`` on the same data skips
tokenising. A batch is padded only to its longest member, by a vectorised gather
(:func:`textclf.core.torch_common.pad_flat`) in the dataset's ``__getitems__``: no per-row Python.
Training batches group texts of similar length (:class:`textclf.core.torch_common.BucketBatchSampler`,
shared with the LSTM); evaluation and prediction batches are sorted by length and put back in
input order afterwards. On CUDA the loaders pin memory and the engine copies with ``non_blocking``.

With ``model.long_text: chunk`` (:mod:`textclf.core.long_text`) each text becomes overlapping
windows (:func:`cached_encode_chunked`, cached with the stride in the key): training rows are the
windows, each with its document's label; evaluation and prediction batches are documents
(:class:`ChunkedDataset`), whose windows run as one padded tensor and are pooled back per document.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from textclf.core.errors import ModelError
from textclf.core.long_text import ChunkStats, LongText, chunk_stats, encode_windows, spread_windows
from textclf.core.torch_common import POOL_BATCHES, bucket_loader, pad_flat, pad_ids

log = logging.getLogger(__name__)

#: fewer entries than this means the tokenizer was built wrong (e.g. a 5-token vocab from a bad vocab_file)
MIN_VOCAB = 1000
#: texts per tokenizer call: one batched call per chunk keeps memory bounded on large splits
ENCODE_CHUNK = 20000
WORK_DIR = "work"
CACHE_VERSION = 1


def load_tokenizer(path: str | Path, encoder_vocab_size: int | None = None):
    """``AutoTokenizer.from_pretrained(path)`` with a check that the vocabulary is real and fits the encoder."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load a tokenizer: {exc}") from None
    size = len(tokenizer)
    if size < MIN_VOCAB:
        raise ModelError(f"{path}: tokenizer has only {size} tokens; expected a real vocabulary (>= {MIN_VOCAB})")
    if encoder_vocab_size is not None and tokenizer.vocab_size > encoder_vocab_size:
        raise ModelError(f"{path}: tokenizer vocabulary ({tokenizer.vocab_size}) is larger than the encoder's "
                         f"embedding table ({encoder_vocab_size}); tokenizer and model do not match")
    if tokenizer.pad_token_id is None:
        raise ModelError(f"{path}: tokenizer has no padding token")
    if not getattr(tokenizer, "is_fast", False):
        log.warning("%s: no fast (Rust) tokenizer; tokenising will be slow", path)
    return tokenizer


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of every text (special tokens added, truncated to ``max_length``, no padding)."""
    if not texts:
        return []
    out: list[list[int]] = []
    texts = list(texts)
    for start in range(0, len(texts), ENCODE_CHUNK):
        out += tokenizer(texts[start : start + ENCODE_CHUNK], truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return out


def _flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def batch_from_ids(ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """``input_ids`` + ``attention_mask`` (1 on real tokens) of a padded id matrix."""
    mask = (torch.arange(ids.size(1))[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


class EncodedDataset(Dataset):
    """Token ids of many texts in one flat int32 array + offsets, with optional integer targets.

    ``dataset[i]`` is one item (a dict); ``dataset.__getitems__(indices)`` - what a DataLoader
    with a batch sampler calls - is the whole padded batch: ``input_ids``, ``attention_mask``,
    ``index`` (dataset positions, so metrics can be gathered across processes) and ``targets``.
    """

    def __init__(self, input_ids: Sequence[Sequence[int]] | None = None, targets: Sequence[int] | None = None, *,
                 pad_id: int = 0, flat: np.ndarray | None = None, offsets: np.ndarray | None = None):
        if flat is None or offsets is None:
            flat, offsets = _flatten(input_ids or [])
        self.flat = np.asarray(flat, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.pad_id = pad_id
        self.targets = None if targets is None else np.asarray(targets, dtype=multilabel_dtype(targets) or np.int64)
        if self.targets is not None and len(self.targets) != len(self):
            raise ValueError(f"{len(self.targets)} targets for {len(self)} texts")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Token counts, for length-grouped batches."""
        return np.diff(self.offsets)

    @property
    def input_ids(self) -> list[list[int]]:
        """The texts' ids as lists (for callers that want them; training never builds these)."""
        return [self.flat[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def with_targets(self, targets: Sequence[int] | None) -> EncodedDataset:
        """The same ids with other targets (no copy of the ids)."""
        return EncodedDataset(targets=targets, pad_id=self.pad_id, flat=self.flat, offsets=self.offsets)

    def subset(self, indices: Sequence[int]) -> EncodedDataset:
        """The rows ``indices``, in that order (a compact copy)."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = self.offsets[idx]
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        targets = self.targets[idx] if self.targets is not None else None
        return EncodedDataset(targets=targets, pad_id=self.pad_id, flat=self.flat[gather], offsets=offsets)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.flat[self.offsets[i] : self.offsets[i + 1]].tolist(), "index": int(i)}
        if self.targets is not None:
            item["targets"] = self.targets[i] if self.targets.ndim == 2 else int(self.targets[i])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        ids, lengths = pad_flat(self.flat, self.offsets, indices, self.pad_id)
        batch = {**batch_from_ids(ids, lengths), "index": torch.as_tensor(np.asarray(indices, dtype=np.int64))}
        if self.targets is not None:
            batch["targets"] = torch.from_numpy(self.targets[np.asarray(indices, dtype=np.int64)])
        return batch


def multilabel_dtype(targets) -> type | None:
    """``np.float32`` for multi-label targets (one 0/1 row a text: BCE wants floats), None for class indices."""
    first = targets[0] if len(targets) else None
    return np.float32 if first is not None and np.ndim(first) == 1 else None


def batch_as_is(batch):
    """The collate function of loaders over :class:`EncodedDataset`: ``__getitems__`` already built the batch."""
    return batch


class PadCollate:
    """Pad a list of items to the batch's longest sequence: ``input_ids``, ``attention_mask``, ``targets``, ``index``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids, lengths = pad_ids([it["input_ids"] for it in items], self.pad_id)
        batch = {**batch_from_ids(ids, lengths), "index": torch.tensor([it["index"] for it in items])}
        if "targets" in items[0]:
            targets = [it["targets"] for it in items]
            batch["targets"] = (torch.from_numpy(np.stack(targets)).float() if isinstance(targets[0], np.ndarray)
                                else torch.tensor(targets, dtype=torch.long))
        return batch


def make_loader(dataset: EncodedDataset, batch_size: int, pad_id: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False, pool_batches: int = POOL_BATCHES) -> DataLoader:
    """A loader of padded batches: length-grouped and shuffled for training, length-sorted for evaluation.

    Training batches are cut from length-sorted pools of ``pool_batches`` batches (1: random batches).
    """
    dataset.pad_id = pad_id
    return bucket_loader(dataset, dataset.lengths, batch_size, batch_as_is, shuffle, seed, num_workers, pin_memory,
                         pool_batches)


# --------------------------------------------------------------------------- token cache


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of everything that decides a tokenizer's ids (the full ``tokenizer.json`` of a fast tokenizer)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation/padding state that every __call__ sets anew
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        digest.update(json.dumps(spec, sort_keys=True).encode())
    else:  # slow tokenizer: its vocabulary and special tokens
        for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            digest.update(f"{index}\t{token}\n".encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def cache_key(fingerprint: str, max_length: int, texts: Sequence[str], windows: str = "") -> str:
    """The token cache key: tokenizer + ``max_length`` + texts (+ the window settings of ``long_text: chunk``)."""
    windows = f"{windows}|" if windows else ""  # truncation keeps the key it always had
    raw = f"v{CACHE_VERSION}|{fingerprint}|{max_length}|{windows}{texts_sha256(texts)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _load_cache(path: Path, n_texts: int, split: str) -> dict | None:
    """The arrays of a token cache file, or None when it is missing, unreadable or for other texts."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError) as exc:  # unreadable: tokenise again and overwrite
        log.warning("%s: unreadable token cache (%s); tokenising again", path, exc)
        return None
    docs = arrays.get("doc_offsets", arrays.get("offsets"))
    if docs is None or len(docs) != n_texts + 1:
        return None
    log.info("tokens of %s (%d texts) from %s", split, n_texts, path)
    return arrays


def _save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write the arrays to a temp name and rename: parallel writers (DDP ranks) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def cached_encode(tokenizer, texts: Sequence[str], max_length: int, cache_dir: str | Path | None, split: str,
                  fingerprint: str | None = None) -> tuple[EncodedDataset, str]:
    """Token ids of ``texts`` from ``cache_dir/tokens_<split>_<key>.npz``, or tokenised now and stored there.

    Returns the dataset (no targets) and ``"hit"``, ``"miss"`` (tokenised and written) or
    ``"off"`` (no ``cache_dir``). The file is written to a temp name and renamed, so parallel
    writers (DDP ranks) and interrupted runs never leave a half-written cache.
    """
    pad_id = tokenizer.pad_token_id
    if cache_dir is None:
        return EncodedDataset(encode(tokenizer, texts, max_length), pad_id=pad_id), "off"
    key = cache_key(fingerprint or tokenizer_fingerprint(tokenizer), max_length, texts)
    path = Path(cache_dir) / f"tokens_{split}_{key}.npz"
    arrays = _load_cache(path, len(texts), split)
    if arrays is not None:
        return EncodedDataset(pad_id=pad_id, flat=arrays["ids"], offsets=arrays["offsets"]), "hit"
    dataset = EncodedDataset(encode(tokenizer, texts, max_length), pad_id=pad_id)
    _save_cache(path, ids=dataset.flat, offsets=dataset.offsets)
    log.info("tokenised %s (%d texts) into %s", split, len(texts), path)
    return dataset, "miss"


# --------------------------------------------------------------------------- long documents: windows


class ChunkedDataset(Dataset):
    """Documents as consecutive runs of windows (``long_text: chunk``), for evaluation and prediction.

    ``windows`` holds every kept window (an :class:`EncodedDataset`); document ``d`` owns windows
    ``doc_offsets[d]:doc_offsets[d + 1]``. ``dataset.__getitems__(documents)`` is one padded
    tensor of all the windows of those documents plus ``chunk_doc`` (each window's row in the
    batch), ``index`` and the documents' ``targets``: the model runs the windows at once and
    :func:`textclf.core.torch_common.pool_chunks` brings them back to one row per document.
    ``lengths`` are the documents' token totals (for length-sorted batches).
    """

    def __init__(self, windows: EncodedDataset, doc_offsets: np.ndarray, targets: Sequence[int] | None = None,
                 stats: ChunkStats | None = None):
        self.windows = windows
        self.doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64) if targets is not None else None
        self.stats = stats
        self.pad_id = windows.pad_id
        if self.targets is not None and len(self.targets) != len(self):
            raise ValueError(f"{len(self.targets)} targets for {len(self)} documents")

    def __len__(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def window_counts(self) -> np.ndarray:
        """Windows per document."""
        return np.diff(self.doc_offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, over its kept windows."""
        tokens = np.zeros(len(self.windows) + 1, dtype=np.int64)
        np.cumsum(self.windows.lengths, out=tokens[1:])
        return tokens[self.doc_offsets[1:]] - tokens[self.doc_offsets[:-1]]

    @property
    def window_doc(self) -> np.ndarray:
        """The document of every window."""
        return np.repeat(np.arange(len(self)), self.window_counts)

    def with_targets(self, targets: Sequence[int] | None) -> ChunkedDataset:
        """The same windows with per-document targets (no copy of the ids)."""
        return ChunkedDataset(self.windows, self.doc_offsets, targets, self.stats)

    def window_indices(self, documents: Sequence[int]) -> np.ndarray:
        """The windows of ``documents``, document by document (vectorised gather)."""
        docs = np.asarray(documents, dtype=np.int64)
        counts = self.window_counts[docs]
        first = np.zeros(len(docs), dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        return np.repeat(self.doc_offsets[docs] - first, counts) + np.arange(int(counts.sum()))

    def training_windows(self, documents: Sequence[int] | None = None) -> EncodedDataset:
        """Windows of ``documents`` (default all) as training rows, each with its document's target."""
        docs = np.arange(len(self)) if documents is None else np.asarray(documents, dtype=np.int64)
        idx = self.window_indices(docs)
        targets = None if self.targets is None else np.repeat(self.targets[docs], self.window_counts[docs])
        return self.windows.subset(idx).with_targets(targets)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        docs = np.asarray(indices, dtype=np.int64)
        ids, lengths = pad_flat(self.windows.flat, self.windows.offsets, self.window_indices(docs), self.pad_id)
        chunk_doc = np.repeat(np.arange(len(docs)), self.window_counts[docs])
        batch = {**batch_from_ids(ids, lengths), "index": torch.from_numpy(docs),
                 "chunk_doc": torch.from_numpy(chunk_doc)}
        if self.targets is not None:
            batch["targets"] = torch.from_numpy(self.targets[docs])
        return batch


def encode_chunked(tokenizer, texts: Sequence[str], max_length: int, long_text: LongText) -> ChunkedDataset:
    """Windows of every text (:func:`textclf.core.long_text.encode_windows`), at most ``max_chunks`` each, spread evenly."""
    rows, doc = encode_windows(tokenizer, texts, max_length, long_text.stride)
    return _chunked(EncodedDataset(rows, pad_id=tokenizer.pad_token_id), doc, len(texts), long_text.max_chunks)


def _chunked(all_windows: EncodedDataset, doc: np.ndarray, n_docs: int, max_chunks: int) -> ChunkedDataset:
    kept = spread_windows(doc, n_docs, max_chunks)
    stats = chunk_stats(doc, doc[kept], n_docs)
    windows = all_windows.subset(kept) if len(kept) != len(all_windows) else all_windows
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc[kept], minlength=n_docs), out=offsets[1:])
    return ChunkedDataset(windows, offsets, stats=stats)


def cached_encode_chunked(tokenizer, texts: Sequence[str], max_length: int, long_text: LongText,
                          cache_dir: str | Path | None, split: str, fingerprint: str | None = None
                          ) -> tuple[ChunkedDataset, str]:
    """:func:`encode_chunked` through the token cache (every window is stored; ``max_chunks`` applies on load)."""
    if cache_dir is None:
        return encode_chunked(tokenizer, texts, max_length, long_text), "off"
    key = cache_key(fingerprint or tokenizer_fingerprint(tokenizer), max_length, texts, f"stride{long_text.stride}")
    path = Path(cache_dir) / f"tokens_{split}_{key}.npz"
    arrays = _load_cache(path, len(texts), split)
    status = "hit"
    if arrays is None:
        rows, doc = encode_windows(tokenizer, texts, max_length, long_text.stride)
        windows = EncodedDataset(rows, pad_id=tokenizer.pad_token_id)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(doc, minlength=len(texts)), out=offsets[1:])
        arrays = {"ids": windows.flat, "offsets": windows.offsets, "doc_offsets": offsets}
        _save_cache(path, **arrays)
        log.info("tokenised %s (%d texts, %d windows) into %s", split, len(texts), len(windows), path)
        status = "miss"
    windows = EncodedDataset(pad_id=tokenizer.pad_token_id, flat=arrays["ids"], offsets=arrays["offsets"])
    doc = np.repeat(np.arange(len(texts)), np.diff(arrays["doc_offsets"]))
    return _chunked(windows, doc, len(texts), long_text.max_chunks), status

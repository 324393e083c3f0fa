"""PyTorch helpers shared by the torch families (LSTM, BERT): device choice, seeding, length-bucketed batches.

Also the learning-rate scaling rule for larger batches (:func:`scaled_lr`), padding of
pre-tokenised texts kept as one flat id array plus offsets (:func:`pad_flat`), and a cap on torch's
intra-op threads for one block (:func:`torch_threads`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from textclf.core.errors import ConfigError

DEVICE_ENV = "TEXTCLF_DEVICE"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` inside the block and restored after (None or 0: left as they are).

    Models made of many small operations (the BiLSTM's time steps, a small head) gain little from a
    second thread on an idle CPU, and lose badly on a busy one: OpenMP threads wait at every
    operation for a thread whose core another process holds (see docs/families.md, BiLSTM).
    """
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(spec: str | None = None) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` (or ``$TEXTCLF_DEVICE`` when ``spec`` is None/empty) into a torch device.

    ``auto`` picks ``cuda:0`` when CUDA is usable, else ``mps`` when available, else ``cpu``.
    Asking for a CUDA device that is not there raises ConfigError naming the devices seen.
    """
    spec = (spec or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "gpu":
        spec = "cuda"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            seen = f"{count} CUDA device(s) visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
            raise ConfigError(f"--device {spec!r}: {seen}; use --device cpu or auto")
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {spec!r}: MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def lightning_device_args(device: torch.device) -> dict:
    """``accelerator``/``devices`` keyword arguments for a Lightning Trainer running on one ``device``."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    if device.type == "mps":
        return {"accelerator": "mps", "devices": 1}
    return {"accelerator": "cpu", "devices": 1}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


class _EpochView(Sampler[int]):
    """The ``sampler`` attribute of a :class:`BucketBatchSampler`: Lightning calls ``batch_sampler.sampler.set_epoch``."""

    def __init__(self, owner: BucketBatchSampler):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.owner.batches() for i in batch)

    def __len__(self) -> int:
        return len(self.owner.lengths)


#: batches per length-sorted pool of :class:`BucketBatchSampler` (BERT's families/bert/config.json sets it as train.bucket_pool)
POOL_BATCHES = 50


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose items have similar lengths, so little compute goes to padding.

    Each epoch the indices are shuffled (seeded by ``seed + epoch``), cut into pools of
    ``batch_size * pool_batches`` items, every pool is sorted by length and cut into batches,
    and the batches are shuffled. Without ``shuffle`` the batches follow length order, which
    is what evaluation wants. Call :meth:`set_epoch` (Lightning calls ``sampler.set_epoch``,
    which forwards here) to get a new order every epoch; the same seed and epoch always give the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = POOL_BATCHES, drop_last: bool = False):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = max(1, pool_batches)
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler = _EpochView(self)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order :meth:`__iter__` yields."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches, as lists of dataset indices."""
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            out = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        else:
            rng = np.random.default_rng(self.seed + self.epoch)
            perm = rng.permutation(n)
            pool = self.batch_size * self.pool_batches
            out = []
            for start in range(0, n, pool):
                chunk = perm[start : start + pool]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                out += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
            order = rng.permutation(len(out))
            out = [out[i] for i in order]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        if not self.shuffle:
            return math.ceil(len(self.lengths) / self.batch_size)
        pool = self.batch_size * self.pool_batches
        full, rest = divmod(len(self.lengths), pool)
        return full * self.pool_batches + math.ceil(rest / self.batch_size)


def bucket_loader(dataset, lengths: Sequence[int], batch_size: int, collate: Callable, shuffle: bool, seed: int = 0,
                  num_workers: int = 0, pin_memory: bool = False, pool_batches: int = POOL_BATCHES) -> DataLoader:
    """A DataLoader over length buckets (:class:`BucketBatchSampler`; seeded, ``set_epoch`` reshuffles)."""
    sampler = BucketBatchSampler(lengths, batch_size, shuffle=shuffle, seed=seed, pool_batches=pool_batches)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory)


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest row: ``(ids (batch, width), lengths (batch,))``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max()) if len(rows) else 0), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids, lengths


def pad_flat(flat: np.ndarray, offsets: np.ndarray, idx: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of texts stored as one flat id array (text ``i`` is ``flat[offsets[i]:offsets[i + 1]]``),
    padded to the longest of them: ``(ids (batch, width) int64, lengths (batch,))``. Vectorised, no Python loop per row.
    """
    idx = np.asarray(idx, dtype=np.int64)
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    width = int(lengths.max()) if len(idx) else 0
    steps = np.arange(width)
    valid = steps[None, :] < lengths[:, None]
    positions = np.where(valid, starts[:, None] + steps[None, :], 0)
    ids = np.where(valid, flat[positions] if len(flat) else pad_id, pad_id).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(lengths.astype(np.int64))


LR_SCALING = ("none", "linear", "sqrt")


def scaled_lr(lr: float, batch_size: int, base_batch_size: int = 32, rule: str = "sqrt") -> float:
    """The learning rate for ``batch_size`` when ``lr`` was tuned at ``base_batch_size``.

    ``linear``: ``lr * B / B0`` (Goyal et al. 2017, for SGD); ``sqrt``: ``lr * sqrt(B / B0)``
    (Malladi et al. 2022, the rule that keeps Adam/AdamW's dynamics); ``none``: ``lr`` unchanged.
    ``batch_size`` is the effective batch: per-process batch x accumulation steps x processes.
    """
    rule = str(rule or "none").lower()
    if rule not in LR_SCALING:
        raise ConfigError(f"train.lr_scaling {rule!r}: choose one of {', '.join(LR_SCALING)}")
    if base_batch_size < 1 or batch_size < 1:
        raise ConfigError(f"batch sizes must be at least 1 (batch {batch_size}, base {base_batch_size})")
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


def predict_by_length(rows: Sequence[Sequence[int]] | None, batch_size: int, n_out: int,
                      forward: Callable[[list[int]], torch.Tensor], dtype: type = np.float32,
                      lengths: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Run ``forward(indices)`` on length-sorted batches of ``rows`` and return ``(len(rows), n_out)`` in input order.

    Sorting by length keeps padding small; ``forward`` gets the indices of one batch and returns
    its outputs (any float tensor), which are put back at those indices. ``lengths`` may be given
    instead of ``rows`` (then ``rows`` is not read).
    """
    lengths = np.asarray([len(r) for r in rows] if lengths is None else lengths)
    out = np.zeros((len(lengths), n_out), dtype=dtype)
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + batch_size]
            out[idx] = forward(idx.tolist()).float().cpu().numpy()
    return out


def pool_chunks(values: torch.Tensor, doc: torch.Tensor, n_docs: int, pooling: str = "mean",
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pool the rows of a batch of windows (``values``: windows x k) into ``(n_docs, k)`` by document index ``doc``.

    ``mean``, ``max`` or ``length`` (mean weighted by ``weights``, each window's token count): the
    torch twin of :func:`textclf.core.long_text.pool_rows`, with ``index_add``/``scatter_reduce``
    on the values' device, so a batch of documents runs as one padded tensor of all their windows
    and comes back one row per document without a Python loop. Differentiable.
    """
    doc = doc.to(values.device, dtype=torch.long)
    k = values.size(1)
    if pooling == "max":
        out = values.new_full((n_docs, k), float("-inf"))
        return out.scatter_reduce(0, doc[:, None].expand(-1, k), values, reduce="amax", include_self=True)
    if pooling == "length" and weights is not None:
        w = weights.to(values.device, dtype=values.dtype)
    elif pooling in ("mean", "length"):
        w = values.new_ones(values.size(0))
    else:
        raise ConfigError(f"model.chunk_pooling: expected mean, max or length, got {pooling!r}")
    total = values.new_zeros(n_docs).index_add(0, doc, w)
    summed = values.new_zeros((n_docs, k)).index_add(0, doc, values * w[:, None])
    return summed / total.clamp(min=1e-12)[:, None]

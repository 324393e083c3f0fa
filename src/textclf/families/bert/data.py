"""Tokenised datasets, dynamic padding and loaders for the BERT family.

Texts are tokenised once with the model's own tokenizer (truncated to ``max_length``, not
padded); each batch is padded only to its longest member. Training batches group texts of
similar length (:class:`textclf.torch_common.BucketBatchSampler`); evaluation and
prediction batches are sorted by length and put back in input order afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from textclf.errors import ModelError
from textclf.torch_common import bucket_loader, pad_ids

#: fewer entries than this means the tokenizer was built wrong (e.g. a 5-token vocab from a bad vocab_file)
MIN_VOCAB = 1000


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
    return tokenizer


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of every text (special tokens added, truncated to ``max_length``, no padding)."""
    if not texts:
        return []
    out = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    return out["input_ids"]


class EncodedDataset(Dataset):
    """Token ids with optional integer targets; items are dicts for :func:`pad_collate`."""

    def __init__(self, input_ids: list[list[int]], targets: Sequence[int] | None = None):
        self.input_ids = input_ids
        self.targets = list(targets) if targets is not None else None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "index": i}
        if self.targets is not None:
            item["targets"] = self.targets[i]
        return item

    @property
    def lengths(self) -> list[int]:
        """Token counts, for length-grouped batches."""
        return [len(ids) for ids in self.input_ids]


class PadCollate:
    """Pad a list of items to the batch's longest sequence: ``input_ids``, ``attention_mask``, ``targets``, ``index``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids, lengths = pad_ids([it["input_ids"] for it in items], self.pad_id)
        mask = (torch.arange(ids.size(1))[None, :] < lengths[:, None]).long()
        batch = {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([it["index"] for it in items])}
        if "targets" in items[0]:
            batch["targets"] = torch.tensor([it["targets"] for it in items], dtype=torch.long)
        return batch


def make_loader(dataset: EncodedDataset, batch_size: int, pad_id: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A loader of padded batches: length-grouped and shuffled for training, length-sorted for evaluation."""
    return bucket_loader(dataset, dataset.lengths, batch_size, PadCollate(pad_id), shuffle, seed, num_workers)

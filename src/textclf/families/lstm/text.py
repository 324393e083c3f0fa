"""A fast configurable tokenizer (lowercase + regex word split) and a vocabulary built on the training texts."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from textclf.core.atomic import atomic_write_json
from textclf.core.config import read_json
from textclf.core.errors import ConfigError, ModelError

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
DEFAULT_PATTERN = r"[\w']+|[^\w\s]"
VOCAB_FILE = "vocab.json"


class Tokenizer:
    """Split text into tokens with one compiled regex (``re.findall``), lowercasing first when asked."""

    def __init__(self, lowercase: bool = True, pattern: str = DEFAULT_PATTERN):
        try:
            self._regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"text.pattern {pattern!r}: invalid regular expression: {exc}") from None
        self.lowercase = lowercase
        self.pattern = pattern

    def __call__(self, text: str) -> list[str]:
        """The tokens of ``text``."""
        return self._regex.findall(text.lower() if self.lowercase else text)


class Vocab:
    """Token <-> id mapping; id 0 is padding, id 1 the unknown token."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = list(tokens)
        if self.itos[:2] != [PAD, UNK]:
            raise ModelError(f"a vocabulary must start with {PAD!r}, {UNK!r}; found {self.itos[:2]}")
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None) -> Vocab:
        """Keep tokens seen at least ``min_count`` times, the most frequent first (ties by token), at most ``max_size``."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in (PAD, UNK)), key=lambda t: (-counts[t], t))
        if max_size:
            kept = kept[: max(0, max_size - 2)]
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], max_length: int | None = None) -> list[int]:
        """Token ids (unknown tokens -> 1), cut to ``max_length``; an empty text becomes ``[UNK]`` (length 1)."""
        if max_length:
            tokens = tokens[:max_length]
        ids = [self.stoi.get(t, UNK_ID) for t in tokens]
        return ids or [UNK_ID]

    def save(self, path: str | Path) -> None:
        """Write the token list as JSON (atomically)."""
        atomic_write_json(path, {"tokens": self.itos})

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by :meth:`save`."""
        if not Path(path).exists():
            raise ModelError(f"{path}: vocabulary file not found")
        return cls(read_json(path)["tokens"])


class TextEncoder:
    """Tokenizer + vocabulary + length cut: texts in, id lists out."""

    def __init__(self, tokenizer: Tokenizer, vocab: Vocab, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.max_length = max_length

    def __call__(self, texts: Iterable[str]) -> list[list[int]]:
        """Encode every text."""
        tok, enc, n = self.tokenizer, self.vocab.encode, self.max_length
        return [enc(tok(t), n) for t in texts]

"""Pretrained word vectors for an embedding layer: fastText ``.vec``/``.bin``, word2vec text, GloVe text.

Only the vectors of words in the vocabulary are kept, so a large file costs one pass, not its size in memory.
Words without a vector keep a small random init (``.bin`` models give every word a vector from subwords).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from textclf.core.errors import DataError
from textclf.families.lstm.text import PAD_ID, Vocab

log = logging.getLogger(__name__)


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _is_header(parts: list[str]) -> bool:
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def read_text_vectors(path: str | Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for ``words`` from a text file (optional ``count dim`` header line, then ``word v1 ... vd`` lines)."""
    path = Path(path)
    found: dict[str, np.ndarray] = {}
    dim = 0
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.rstrip().split(" ")
            if number == 1 and _is_header(parts):
                dim = int(parts[1])
                continue
            if len(parts) < 2:
                continue
            if not dim:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise DataError(path, f"expected {dim} numbers after the word, found {len(parts) - 1}", number)
            word = parts[0]
            if word in words and word not in found:
                try:
                    found[word] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(path, "a vector entry is not a number", number) from None
    if not dim:
        raise DataError(path, "no vectors found")
    return found, dim


def read_fasttext_bin(path: str | Path, words: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for ``words`` from a fastText ``.bin`` model (subwords give out-of-vocabulary words a vector too)."""
    import fasttext

    try:
        model = fasttext.load_model(str(path))
    except ValueError as exc:
        raise DataError(path, f"not a fastText .bin model: {exc}") from None
    return {w: model.get_word_vector(w).astype(np.float32) for w in words}, model.get_dimension()


def embedding_matrix(path: str | Path, vocab: Vocab, seed: int = 0, scale: float | None = None) -> tuple[np.ndarray, float]:
    """A ``(len(vocab), dim)`` matrix from a vector file and the share of vocabulary words it covered.

    Rows of words missing from the file are drawn from N(0, std of the found vectors); row 0 (padding) is zero.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "pretrained vectors file not found (model.pretrained_vectors)")
    words = vocab.itos[2:]
    if path.suffix == ".bin":
        found, dim = read_fasttext_bin(path, words)
    else:
        found, dim = read_text_vectors(path, set(words))
    std = scale if scale is not None else (float(np.std(np.stack(list(found.values())))) if found else 0.1)
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, std or 0.1, size=(len(vocab), dim)).astype(np.float32)
    for i, w in enumerate(vocab.itos):
        if w in found:
            matrix[i] = found[w]
    matrix[PAD_ID] = 0.0
    coverage = len(found) / max(1, len(words))
    log.info("pretrained vectors %s: dim %d, %.1f%% of %d vocabulary words found", path, dim, 100 * coverage, len(words))
    return matrix, coverage

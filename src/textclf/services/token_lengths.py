"""Token lengths of a data set against each family's ``max_length`` (``textclf stats``).

Texts are tokenized with the default encoder's tokenizer (all-MiniLM-L6-v2's WordPiece, shipped,
offline) in batches of :data:`BATCH`, without truncation and without special tokens. A family whose
registration names a ``max_length_key`` reads ``max_length`` tokens including its special tokens
([CLS], [SEP]), so a text is cut when its tokens exceed ``max_length`` less those; the share of
tokens cut is the tokens past that point over all tokens. A null ``max_length`` means the default
encoder's own limit. The BiLSTM counts its own word tokens, so its row is an estimate in WordPieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BATCH = 1024
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def default_tokenizer() -> Any:
    """The default encoder's tokenizer, read from its shipped directory (no weights loaded, no network)."""
    from transformers import AutoTokenizer

    from textclf.families.common.encoders import DEFAULT_ENCODER, resolve_model_dir

    return AutoTokenizer.from_pretrained(str(resolve_model_dir(DEFAULT_ENCODER)))


def default_encoder_max_length() -> int:
    """The default encoder's own ``max_length`` (its sentence-transformers config)."""
    from textclf.families.common.encoders import DEFAULT_ENCODER, SentenceEncoder

    return int(SentenceEncoder(DEFAULT_ENCODER).spec()["max_length"])


def token_lengths(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Tokens per text (no special tokens, no truncation), tokenized in batches."""
    out = [np.zeros(0, dtype=np.int64)]
    for b in range(0, len(texts), BATCH):
        ids = tokenizer(list(texts[b:b + BATCH]), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
        out.append(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))
    return np.concatenate(out)


def family_limits() -> dict[str, int]:
    """``{family: max_length}`` of every registered family that names a ``max_length_key`` (its default config)."""
    from textclf.core.config import default_config
    from textclf.core.registry import all_families

    limits = {}
    for name, fam in sorted(all_families().items()):
        if not fam.max_length_key:
            continue
        node: Any = default_config(name)
        for part in fam.max_length_key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        limits[name] = int(node) if node else default_encoder_max_length()
    return limits


def length_report(lengths: np.ndarray, limits: dict[str, int], special_tokens: int = 2) -> dict:
    """Quantiles of ``lengths`` and, per family, the share of texts and of tokens that ``max_length`` cuts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    quant = {"mean": round(float(lengths.mean()), 1) if len(lengths) else 0.0,
             **{f"p{round(q * 100)}": int(np.quantile(lengths, q, method="inverted_cdf")) if len(lengths) else 0
                for q in QUANTILES},
             "max": int(lengths.max()) if len(lengths) else 0}
    families = {}
    for name, limit in limits.items():
        room = max(limit - special_tokens, 0)
        over = np.maximum(lengths - room, 0)
        families[name] = {"max_length": limit, "share_texts_cut": round(float((over > 0).mean()) if len(lengths) else 0.0, 4),
                          "share_tokens_cut": round(float(over.sum()) / total, 4) if total else 0.0}
    return {"tokens": total, "lengths": quant, "families": families}


def format_length_report(report: dict) -> str:
    """:func:`length_report` as text: one line of quantiles, then one line per family."""
    q = report["lengths"]
    out = [f"  tokens (all-MiniLM-L6-v2 WordPiece, per text): mean {q['mean']}, "
           + ", ".join(f"{k} {v}" for k, v in q.items() if k != "mean")]
    out.append(f"  {'family':<12} {'max_length':>10} {'texts cut':>10} {'tokens cut':>11}")
    for name, f in report["families"].items():
        out.append(f"  {name:<12} {f['max_length']:>10} {f['share_texts_cut']:>10.2%} {f['share_tokens_cut']:>11.2%}")
    return "\n".join(out)


def token_report(texts: Sequence[str], tokenizer: Any | None = None, limits: dict[str, int] | None = None) -> dict:
    """The token-length report of ``texts`` with the default tokenizer against every family's limit."""
    tokenizer = tokenizer or default_tokenizer()
    limits = family_limits() if limits is None else limits
    return length_report(token_lengths(texts, tokenizer), limits, int(tokenizer.num_special_tokens_to_add(pair=False)))

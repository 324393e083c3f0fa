"""Integrated gradients over a Hugging Face tokenizer's pieces, summed into words (BERT and SetFit explainers).

captum's ``LayerIntegratedGradients`` on the encoder's input (word-piece) embeddings: the baseline
keeps the special tokens ([CLS], [SEP]) and puts the padding token everywhere else, the positions
and the attention mask stay the text's own. The pieces' scores (summed over the embedding
dimensions) are added up per word of the tokenizer's pre-tokenizer (whitespace and punctuation
split), and the words are shown as they are in the text. Words past ``max_length`` pieces get 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from textclf.core.explanation import Attribution

METHOD = "integrated gradients (captum)"
#: interpolation steps of the integral (all in one batch)
N_STEPS = 32


def text_words(tokenizer, text: str) -> tuple[list[str], list[int | None]]:
    """The pre-tokenizer's words of ``text`` as written there, and the word of every piece (None: a special token)."""
    full = tokenizer(text, add_special_tokens=False)
    n = max((w for w in full.word_ids() if w is not None), default=-1) + 1
    words = []
    for w in range(n):
        span = full.word_to_chars(w)
        words.append(text[span.start:span.end] if span is not None else "")
    return words, full.word_ids()


def word_attributions(tokenizer, texts: Sequence[str], targets: Sequence[int], max_length: int,
                      forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embeddings: torch.nn.Module,
                      device: torch.device | str) -> list[Attribution] | None:
    """IG attributions of ``forward(input_ids, attention_mask) -> probabilities`` per word; None without a fast tokenizer."""
    from captum.attr import LayerIntegratedGradients

    if not getattr(tokenizer, "is_fast", False):
        return None
    lig = LayerIntegratedGradients(forward, embeddings)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    out = []
    for text, target in zip(texts, targets, strict=True):
        words, _ = text_words(tokenizer, text)
        if not words:
            out.append(Attribution([], [], METHOD))
            continue
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        baseline = torch.where(torch.isin(ids, special), ids, torch.full_like(ids, tokenizer.pad_token_id))
        attr = lig.attribute(ids.to(device), baselines=baseline.to(device), target=int(target),
                             additional_forward_args=(mask.to(device),), n_steps=N_STEPS, internal_batch_size=N_STEPS)
        per_piece = attr.sum(dim=-1)[0].detach().cpu().double().tolist()
        scores = [0.0] * len(words)
        for pos, w in enumerate(enc.word_ids()):
            if w is not None:
                scores[w] += per_piece[pos]
        out.append(Attribution(words, scores, METHOD))
    return out

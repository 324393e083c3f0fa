"""Synthetic unlabelled text for distillation: variants of the training texts for a teacher to label.

A teacher labelling only its own training texts mostly repeats the gold labels (it fitted them),
so a student learns little it could not learn from the gold rows. More text helps
(``--unlabeled_path``); when there is none, :func:`augment_texts` makes some from the training
texts with the two rules of Tang et al. (2019), *Distilling Task-Specific Knowledge from BERT
into Simple Neural Networks* (section 3.3), applied to each whitespace token of a text:

* **deletion**: each token is dropped with probability ``p_drop`` (the paper masks it; a mask
  token means nothing to a bag-of-n-grams student such as fastText, so it is left out here);
* **n-gram sampling**: with probability ``p_ngram`` the variant is cut down to a random window of
  1 to 5 tokens of it.

The paper's third rule (part-of-speech-guided word replacement) needs a tagger and is not used.
Variants are drawn ``per_text`` times per text with a seeded generator; empty variants, the
original text and duplicates are dropped, so a short text may yield fewer. The teacher labels
them like any unlabelled text: a fragment it is unsure of gets few or no copies in the student's
training set (:func:`textclf.services.distill.copies`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: defaults: the paper's p_mask and p_ng
P_DROP = 0.1
P_NGRAM = 0.25
MAX_NGRAM = 5


def augment_texts(texts: Sequence[str], per_text: int, seed: int = 0, p_drop: float = P_DROP,
                  p_ngram: float = P_NGRAM) -> list[str]:
    """Up to ``per_text`` distinct variants of every text of ``texts`` (see the module docstring), in text order."""
    if per_text < 0:
        raise ValueError(f"per_text must be >= 0, got {per_text}")
    rng = np.random.default_rng(seed)
    seen = set(texts)
    out: list[str] = []
    for text in texts:
        tokens = text.split()
        if not tokens:
            continue
        for _ in range(per_text):
            kept = [t for t, drop in zip(tokens, rng.random(len(tokens)) < p_drop, strict=True) if not drop]
            if kept and rng.random() < p_ngram:
                n = int(rng.integers(1, MAX_NGRAM + 1))
                start = int(rng.integers(0, max(1, len(kept) - n + 1)))
                kept = kept[start:start + n]
            variant = " ".join(kept)
            if variant and variant not in seen:
                seen.add(variant)
                out.append(variant)
    return out

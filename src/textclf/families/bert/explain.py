"""Token attributions of a fine-tuned BERT: integrated gradients on its word-piece embeddings (``Family.explainer``).

See :mod:`textclf.families.common.token_ig`. Models with ``long_text: chunk`` (several windows a
document) and ONNX backends get None: occlusion explains them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textclf.core.explanation import Attribution


def explain(predictor, texts: Sequence[str], targets: Sequence[int]) -> list[Attribution] | None:
    """Integrated-gradients word attributions of a :class:`~textclf.families.bert.model.BertPredictor`."""
    from textclf.families.bert.model import BertPredictor
    from textclf.families.common.token_ig import word_attributions

    if not isinstance(predictor, BertPredictor) or predictor.long_text.chunk:
        return None
    model = predictor.model

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = model(ids, mask).float()
        return torch.sigmoid(logits) if predictor.multilabel else torch.softmax(logits, dim=1)

    return word_attributions(predictor.tokenizer, texts, targets, predictor.max_length, forward,
                             model.encoder.get_input_embeddings(), predictor.device)

"""Token attributions of a SetFit model: integrated gradients through its encoder and torch head (``Family.explainer``).

The forward pass is the prediction's own, in torch: the sentence encoder's pooled embedding,
L2-normalised, then the head's softmax (a sigmoid a label when multi-label). IG runs on the
encoder's word-piece embeddings (:mod:`textclf.families.common.token_ig`). A scikit-learn
logistic-regression head (``head.type: logreg``) and ``long_text: chunk`` models are left to
occlusion (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textclf.core.explanation import Attribution


def explain(predictor, texts: Sequence[str], targets: Sequence[int]) -> list[Attribution] | None:
    """Integrated-gradients word attributions of a :class:`~textclf.families.setfit.model.SetFitPredictor` with a torch head."""
    from textclf.families.common.token_ig import word_attributions
    from textclf.families.setfit.head import TorchHead
    from textclf.families.setfit.model import SetFitPredictor

    if not isinstance(predictor, SetFitPredictor) or not isinstance(predictor.head, TorchHead) or predictor.chunking.chunk:
        return None
    encoder, head = predictor.encoder, predictor.head.module
    encoder.eval()
    head.eval()
    transformer = encoder[0].auto_model  # sentence-transformers' Transformer module wraps the Hugging Face model

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = encoder({"input_ids": ids, "attention_mask": mask})["sentence_embedding"]
        logits = head(torch.nn.functional.normalize(pooled.float(), dim=1))
        return torch.sigmoid(logits) if predictor.multilabel else torch.softmax(logits, dim=1)

    return word_attributions(encoder.tokenizer, texts, targets, int(encoder.max_seq_length), forward,
                             transformer.get_input_embeddings(), encoder.device)

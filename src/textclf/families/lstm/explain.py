"""Token attributions of the BiLSTM: captum's integrated gradients on the embedding layer (``Family.explainer``).

``LayerIntegratedGradients`` integrates the gradient of the target class's probability along the
straight line from the padding embedding (all zeros: the baseline of no words) to the text's
embeddings; a token's score is the sum over its embedding dimensions. The scores add up to
p(target | text) - p(target | baseline) (captum's completeness), so they compare with occlusion's
probability drops. Texts of a batch are padded together: the model reads packed sequences, so
padding changes neither the output nor any attribution. Tokens are the model's own (its
tokenizer, lowercased when the model lowercases); those past ``max_length`` get 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from textclf.core.explanation import Attribution
from textclf.core.torch_common import pad_ids
from textclf.families.lstm.text import PAD_ID

METHOD = "integrated gradients (captum)"
#: interpolation steps of the integral
N_STEPS = 32
#: texts attributed together
BATCH = 16


def explain(predictor, texts: Sequence[str], targets: Sequence[int]) -> list[Attribution] | None:
    """Integrated-gradients attributions of an :class:`~textclf.families.lstm.model.LSTMPredictor` (None for another backend)."""
    from captum.attr import LayerIntegratedGradients

    from textclf.families.lstm.model import LSTMPredictor

    if not isinstance(predictor, LSTMPredictor):
        return None
    model, device = predictor.model, predictor.device
    activation = torch.sigmoid if predictor.multilabel else functools.partial(torch.softmax, dim=1)

    def forward(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return activation(model(ids, lengths).float())

    lig = LayerIntegratedGradients(forward, model.embedding)
    tokens = [predictor.encoder.tokenizer(t) for t in texts]
    encoded = predictor.encoder(texts)
    out: list[Attribution] = []
    for start in range(0, len(texts), BATCH):
        idx = list(range(start, min(start + BATCH, len(texts))))
        ids, lengths = pad_ids([encoded[i] for i in idx], PAD_ID)
        ids = ids.to(device)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN backward needs training mode
            attr = lig.attribute(ids, baselines=torch.full_like(ids, PAD_ID), target=[int(targets[i]) for i in idx],
                                 additional_forward_args=(lengths,), n_steps=N_STEPS)
        per_token = attr.sum(dim=-1).detach().cpu().double().numpy()
        for row, i in enumerate(idx):
            n = len(tokens[i])
            seen = min(n, int(lengths[row])) if n else 0
            scores = [float(s) for s in per_token[row, :seen]] + [0.0] * (n - seen)
            out.append(Attribution(tokens[i], scores, METHOD))
    return out

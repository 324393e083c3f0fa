"""Losses for imbalanced classification: a real focal loss (Lin et al., 2017).

``FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)``. With ``gamma=0`` and no ``alpha``
it is exactly cross-entropy; with ``gamma > 0`` well-classified examples (``p_t`` near 1)
are down-weighted, so training concentrates on the hard ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textclf.core.errors import ConfigError


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits, averaged over the batch.

    Args:
        gamma: focusing parameter (0 gives cross-entropy; 2 is the paper's default).
        alpha: optional per-class weights (a list in class-index order), applied as ``alpha[target]``.
            Averaging is a plain mean over examples, so with ``gamma=0`` this matches
            ``F.cross_entropy(weight=alpha, reduction="none").mean()``.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha is not None else None)

    def per_example(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every example, shape ``(batch,)``."""
        log_p = F.log_softmax(logits.float(), dim=-1)
        log_pt = log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = -log_pt
        if self.gamma:
            pt = log_pt.exp()
            loss = (1.0 - pt).clamp(min=0.0).pow(self.gamma) * loss
        if self.alpha is not None:
            loss = self.alpha.to(loss.device)[targets] * loss
        return loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_example(logits, targets).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={None if self.alpha is None else self.alpha.tolist()}"


class FocalBCELoss(nn.Module):
    """Multi-label focal loss: a sigmoid per label, ``(1 - p_t) ** gamma`` times the binary cross-entropy, averaged.

    With ``gamma=0`` it is exactly ``BCEWithLogitsLoss(pos_weight=pos_weight)`` (mean over texts and
    labels). ``pos_weight``: optional per-label weights of the positive term (``negatives / positives``
    from label frequencies with ``loss.pos_weight: "balanced"``; :func:`textclf.core.class_weights.pos_weight`).
    """

    def __init__(self, gamma: float = 2.0, pos_weight: Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="none")
        if self.gamma:
            p = torch.sigmoid(logits)
            p_t = p * targets + (1.0 - p) * (1.0 - targets)
            loss = (1.0 - p_t).clamp(min=0.0).pow(self.gamma) * loss
        return loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, pos_weight={None if self.pos_weight is None else self.pos_weight.tolist()}"

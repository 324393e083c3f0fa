"""Contrastive fine-tuning of a sentence encoder: our own PyTorch loop around sentence-transformers' loss modules.

SetFit's first stage, without ``setfit`` or ``SentenceTransformerTrainer``: rows come from
:mod:`textclf.families.setfit.sampling` (linear in the number of texts), each batch column is
turned into features with ``model.preprocess`` (the non-deprecated ``tokenize``), moved to the
device and handed to the loss, an ``nn.Module`` called as ``loss(sentence_features, labels)``.

Losses (config ``loss``):

* ``cosine`` (default, SetFit's): :class:`CosineSimilarityLoss` on (text, text, 1.0 | 0.0) pairs;
* ``mnr``: :class:`MultipleNegativesRankingLoss` on (anchor, positive, negative) triplets;
* ``batch_all_triplet``: :class:`BatchAllTripletLoss` on batches of single labelled texts
  (every valid in-batch triplet counts; ``train.margin`` is its margin).

On label sets (``codes`` a ``(N, L)`` indicator matrix) ``cosine`` and ``mnr`` draw their pairs and
triplets by shared/disjoint labels (:mod:`.sampling`); ``batch_all_triplet`` needs one class a text
and is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textclf.core.errors import ConfigError
from textclf.families.setfit.sampling import sample_pairs, sample_texts, sample_triplets

log = logging.getLogger(__name__)

LOSSES = ("cosine", "mnr", "batch_all_triplet")
LOSS_ALIASES = {"cosinesimilarityloss": "cosine", "cosine_similarity": "cosine",
                "multiplenegativesrankingloss": "mnr", "multiple_negatives_ranking": "mnr",
                "batchalltripletloss": "batch_all_triplet", "batch_all": "batch_all_triplet"}


#: the one-line refusal of an in-batch triplet loss on label sets
MULTILABEL_LOSS_ERROR = ("loss: batch_all_triplet needs one class a text; on multi-label data use cosine "
                         "(pairs sharing a label / disjoint) or mnr")


def loss_name(name: str) -> str:
    """The canonical loss name (``cosine``, ``mnr``, ``batch_all_triplet``) of ``name`` or its class name."""
    key = str(name).strip()
    key = LOSS_ALIASES.get(key.lower(), key.lower())
    if key not in LOSSES:
        raise ConfigError(f"loss: unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return key


def make_loss(name: str, model: Any, margin: float = 0.25) -> torch.nn.Module:
    """The sentence-transformers loss module ``name`` wrapping ``model``."""
    from sentence_transformers.sentence_transformer import losses

    name = loss_name(name)
    if name == "cosine":
        return losses.CosineSimilarityLoss(model)
    if name == "mnr":
        return losses.MultipleNegativesRankingLoss(model)
    return losses.BatchAllTripletLoss(model, margin=float(margin))


@dataclass
class Rows:
    """One epoch's training rows: ``columns`` of text indices (one array per loss input) and per-row labels."""

    columns: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def epoch_rows(name: str, codes: np.ndarray, per_text: int, seed: int) -> Rows:
    """The rows loss ``name`` trains on for one epoch (pairs, triplets or texts), drawn with ``seed``.

    ``codes``: integer classes, or a label indicator matrix (label sets).
    """
    name = loss_name(name)
    if codes.ndim == 2 and name == "batch_all_triplet":
        raise ConfigError(MULTILABEL_LOSS_ERROR)
    if name == "cosine":
        left, right, similar = sample_pairs(codes, per_text, seed)
        return Rows([left, right], similar)
    if name == "mnr":
        anchor, positive, negative = sample_triplets(codes, per_text, seed)
        return Rows([anchor, positive, negative], np.zeros(len(anchor), dtype=np.int64))
    idx = sample_texts(codes, per_text, seed)
    return Rows([idx], codes[idx].astype(np.int64))


def row_batches(rows: Rows, chars: np.ndarray, batch_size: int, bucket: bool, seed: int) -> list[np.ndarray]:
    """The epoch's batches of row positions, in a seeded random order.

    With ``bucket`` rows of similar length (the longest text of the row, in characters) share a
    batch (:class:`textclf.core.torch_common.BucketBatchSampler`), so little compute goes to padding;
    otherwise consecutive rows of the (already shuffled) sample form the batches.
    """
    if not bucket:
        return [np.arange(b, min(b + batch_size, len(rows))) for b in range(0, len(rows), batch_size)]
    from textclf.core.torch_common import BucketBatchSampler

    lengths = np.max(np.stack([chars[col] for col in rows.columns]), axis=0)
    return [np.asarray(b, dtype=np.int64) for b in BucketBatchSampler(lengths, batch_size, shuffle=True, seed=seed)]


def features_to(features: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of a feature dict moved to ``device`` (other entries, e.g. ``modality``, kept as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def preprocess(model: Any, texts: list[str]) -> dict[str, Any]:
    """Tokenize ``texts`` the way the model does (``preprocess``; ``tokenize`` on older sentence-transformers)."""
    fn = getattr(model, "preprocess", None) or model.tokenize
    return fn(texts)


def warmup_linear(total_steps: int, warmup: float):
    """A LambdaLR factor: linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
    warm = int(round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def tune_encoder(model: Any, texts: Sequence[str], codes: np.ndarray, cfg: dict, device: torch.device,
                 seed: int, log_path: str | Path | None = None) -> dict:
    """Fine-tune ``model`` in place with the configured contrastive loss; returns the run's statistics.

    ``codes`` are the integer labels of ``texts`` (label sets: their ``(N, L)`` indicator matrix). ``cfg`` is the run config (``loss``,
    ``pairs.per_text`` and the ``train`` block: ``epochs``, ``batch_size``, ``lr``, ``warmup``,
    ``weight_decay``, ``max_grad_norm``, ``margin``, ``bucket``). Rows are redrawn each epoch (seed + epoch).
    """
    from textclf.core.progress import Progress

    t = cfg["train"]
    name = loss_name(cfg["loss"])
    per_text, epochs, batch_size = int(cfg["pairs"]["per_text"]), int(t["epochs"]), int(t["batch_size"])
    if batch_size < 1:
        raise ConfigError(f"train.batch_size: expected at least 1, got {batch_size}")
    texts = list(texts)
    codes = np.asarray(codes, dtype=np.int64)
    chars = np.fromiter((len(x) for x in texts), dtype=np.int64, count=len(texts))
    first = epoch_rows(name, codes, per_text, seed)
    n_rows = len(first)
    steps_per_epoch = len(row_batches(first, chars, batch_size, bool(t.get("bucket", True)), seed))
    total = steps_per_epoch * epochs
    stats = {"loss": name, "epochs": epochs, "rows_per_epoch": n_rows, "steps": 0, "seconds": 0.0, "final_loss": None}
    if total == 0:
        return stats
    loss_fn = make_loss(name, model, t.get("margin", 0.25)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total, float(t.get("warmup", 0.1))))
    max_norm = float(t.get("max_grad_norm") or 0.0)
    what = {"cosine": "pairs", "mnr": "triplets", "batch_all_triplet": "texts"}[name]
    log.info("contrastive tuning: loss %s, %d %s per epoch (%d texts x per_text %d), %d epoch(s), batch %d, %d steps",
             name, n_rows, what, len(texts), per_text, epochs, batch_size, total)
    every = max(1, min(50, total // 20))
    start = time.monotonic()
    model.train()
    running: list[float] = []
    with Progress(total, "contrastive", "step", log_path=log_path) as bar:
        for epoch in range(epochs):
            rows = first if epoch == 0 else epoch_rows(name, codes, per_text, seed + epoch)
            for batch in row_batches(rows, chars, batch_size, bool(t.get("bucket", True)), seed + epoch):
                features = [features_to(preprocess(model, [texts[i] for i in col[batch]]), device) for col in rows.columns]
                labels = torch.as_tensor(rows.labels[batch], device=device)
                loss = loss_fn(features, labels)
                loss.backward()
                if max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                running.append(float(loss.detach()))
                stats["steps"] += 1
                if stats["steps"] % every == 0 or stats["steps"] == total:
                    seconds = time.monotonic() - start
                    bar.update(every if stats["steps"] % every == 0 else stats["steps"] % every,
                               epoch=epoch + 1, loss=float(np.mean(running[-every:])),
                               rows_per_s=f"{stats['steps'] * batch_size / max(seconds, 1e-9):.1f}")
    model.eval()
    stats["seconds"] = round(time.monotonic() - start, 2)
    stats["final_loss"] = float(np.mean(running[-every:]))
    log.info("contrastive tuning: %d steps (%d %s) in %.1fs, final loss %.4f", stats["steps"], n_rows * epochs, what,
             stats["seconds"], stats["final_loss"])
    return stats

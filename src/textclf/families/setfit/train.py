"""Fitting the setfit family (contract v2): few-shot subset, contrastive encoder tuning, head on the tuned embeddings.

1. ``data.per_class`` N keeps N rows per class of train (the few-shot setting; null: all), drawn
   with the run's ``seed``, so every search trial and the refit see the same examples.
2. The encoder (``encoder.name``, resolved like the embeddings family's) is fine-tuned with the
   configured contrastive loss on pairs/triplets drawn from the labels (:mod:`.contrastive`),
   seeded with ``context.seed`` (``seed + trial number`` in a search trial).
3. Train and valid (and test, for the kept model) are embedded once with the tuned encoder
   (L2-normalised); the head is fitted on train, its best epoch chosen on valid macro-F1 (:mod:`.head`).

Label sets (``splits.multilabel``): ``data.per_class`` N keeps N texts per label
(:func:`.sampling.few_shot_label_sets`), the pairs are drawn by shared/disjoint labels, the head
fits the label indicator matrix (sigmoid + BCE with ``head.pos_weight``, or one-vs-rest logreg) and
its best epoch is chosen on valid micro-F1. With ``long_text: chunk`` each window carries its
document's label set.
4. The kept model's ``encoder/`` and head file are written; a search trial writes nothing. The
   returned predictor remembers the valid/test vectors, so the core's evaluation encodes nothing again,
   and its ``fit_info`` carries the encoder, head, contrastive, few-shot and timing blocks of meta.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from textclf.core.class_weights import pos_weight
from textclf.core.integrity import FILES_KEY
from textclf.core.long_text import AUTO_POOLING
from textclf.core.torch_common import resolve_device, seed_everything
from textclf.core.training import Splits, fitted_meta
from textclf.families.common.cache import weight_hash
from textclf.families.common.chunking import ChunkSettings, split_windows
from textclf.families.common.encoders import resolve_model_dir
from textclf.families.setfit.contrastive import tune_encoder
from textclf.families.setfit.head import make_head
from textclf.families.setfit.model import ENCODER_DIR, KIND, SetFitPredictor, embed_long, load_sentence_model, save_encoder
from textclf.families.setfit.pooling import choose_pooling
from textclf.families.setfit.sampling import few_shot_indices

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.log"


def label_codes(labels: list, label_set: list[str], multilabel: bool = False) -> np.ndarray:
    """``labels`` as indices into ``label_set`` (``multilabel``: the ``(N, L)`` 0/1 indicator matrix of the label sets)."""
    if multilabel:
        from textclf.core.sklearn_model import label_indicator

        return label_indicator(labels, label_set).astype(np.int64)
    index = {label: i for i, label in enumerate(label_set)}
    return np.asarray([index[label] for label in labels], dtype=np.int64)


def fit(cfg: dict, splits: Splits, context) -> SetFitPredictor:
    """Tune the encoder contrastively and fit the head; return the :class:`SetFitPredictor` (family contract v2).

    The kept model (``context.final``) is saved into ``context.output_dir`` (``encoder/``, the head,
    ``progress.log``); ``fit_info["files"]`` names the head and the encoder weights, which loading
    checks. There are no checkpoints: ``context.resume`` starts the (seeded, so identical) fit again.
    """
    output_dir = Path(context.output_dir)
    final = context.final
    if context.resume and final:
        log.info("setfit keeps no checkpoints; --resume trains from the start")
    started = time.monotonic()
    seed = int(context.seed)
    seed_everything(seed)
    device = resolve_device(cfg.get("device"))

    per_class = cfg["data"].get("per_class")
    keep = few_shot_indices(splits.train.labels, per_class, int(cfg["seed"]))
    train_ds = splits.train if per_class is None else splits.train.subset(keep)
    y_train = label_codes(train_ds.labels, splits.labels, splits.multilabel)
    log.info("setfit: %d training texts (%s per class or label; %d in train), %d labels, device %s", len(train_ds),
             "all" if per_class is None else per_class, len(splits.train), len(splits.labels), device)

    e = cfg["encoder"]
    source = resolve_model_dir(e["name"])
    model = load_sentence_model(source, str(device), e.get("max_length"))
    chunking = ChunkSettings.from_config(e, auto=True)
    if not chunking.chunk and chunking.pooling == AUTO_POOLING:  # nothing to pool: the model records the default
        chunking = chunking.with_pooling("mean")
    pair_texts, pair_codes = train_ds.texts, y_train
    if chunking.chunk:  # contrastive rows on the windows, each carrying its document's label
        windows = split_windows(model.tokenizer, train_ds.texts, int(model.max_seq_length), chunking)
        pair_texts, pair_codes = windows.texts, y_train[windows.doc]
        log.info("setfit: %d training texts -> %d windows of %d tokens (stride %d, at most %d per text)", len(train_ds),
                 len(pair_texts), int(model.max_seq_length), chunking.stride, chunking.max_chunks)
    contrastive = tune_encoder(model, pair_texts, pair_codes, cfg, device, seed,
                               log_path=output_dir / PROGRESS_FILE if final else None)

    batch = int(e.get("batch_size", 64))
    y_valid = label_codes(splits.valid.labels, splits.labels, splits.multilabel)
    weights = pos_weight(cfg["head"].get("pos_weight"), splits.labels, train_ds.labels, key="head.pos_weight") \
        if splits.multilabel else None

    def new_head(dim: int):
        return make_head(cfg, dim, len(splits.labels), seed, splits.multilabel, weights)

    start = time.monotonic()
    choice = None
    if chunking.chunk and chunking.pooling == AUTO_POOLING:  # pool every way, keep the best head on valid
        choice = choose_pooling(model, train_ds.texts, splits.valid.texts, batch, chunking, new_head, y_train, y_valid)
        chunking, head = choice.chunking, choice.head
        x_train, x_valid, stats_train, stats_valid = choice.x_train, choice.x_valid, choice.stats_train, choice.stats_valid
    else:
        x_train, stats_train = embed_long(model, train_ds.texts, batch, chunking)
        x_valid, stats_valid = embed_long(model, splits.valid.texts, batch, chunking)
    x_test, stats_test = (embed_long(model, splits.test.texts, batch, chunking) if final and splits.test is not None
                          else (None, None))
    embed_seconds = round(time.monotonic() - start - (choice.head_seconds if choice else 0.0), 2)
    log.info("embedded train/valid/test (%d/%d/%d texts) with the tuned encoder in %.1fs", len(x_train), len(x_valid),
             0 if x_test is None else len(x_test), embed_seconds)

    start = time.monotonic()
    if choice is None:
        head = new_head(x_train.shape[1]).fit(x_train, y_train, x_valid, y_valid)
    head_seconds = round(choice.head_seconds if choice else time.monotonic() - start, 2)

    if final:
        save_encoder(model, output_dir)
        head.save(output_dir)
    record = {"name": e["name"], "source": str(source), "base_weights": weight_hash(source), "dir": ENCODER_DIR,
              "max_length": int(model.max_seq_length), "batch_size": batch, "normalize": True, "dim": int(x_train.shape[1]),
              **chunking.record()}
    head_record = head.describe()
    predictor = SetFitPredictor(output_dir, {**fitted_meta(KIND, cfg, splits), "encoder": record, "head": head_record},
                                model, head, batch)
    predictor.remember(splits.valid.texts, x_valid)
    if x_test is not None:
        predictor.remember(splits.test.texts, x_test)
    contrastive.update(per_text=int(cfg["pairs"]["per_text"]), batch_size=int(cfg["train"]["batch_size"]),
                       lr=float(cfg["train"]["lr"]))
    seconds = {"contrastive": contrastive["seconds"], "embed": embed_seconds, "head": head_seconds,
               "total": round(time.monotonic() - started, 2)}
    weights = sorted(str(p.relative_to(output_dir)) for p in (output_dir / ENCODER_DIR).rglob("*.safetensors")) if final else []
    predictor.fit_info = {"model_file": head.file, "encoder": record, "head": head_record, "contrastive": contrastive,
                          "few_shot": {"per_class": per_class, "n_train": len(train_ds), "n_train_full": len(splits.train)},
                          "seconds": seconds, FILES_KEY: [head.file, *weights]}
    if chunking.chunk:
        stats = {"train": stats_train, "valid": stats_valid, **({"test": stats_test} if stats_test else {})}
        predictor.fit_info["long_text"] = {**chunking.record(), "max_length": record["max_length"], "splits": stats,
                                           "contrastive_windows": len(pair_texts),
                                           **({"pooling_choice": choice.record} if choice else {})}
    if context.trial is not None:
        context.trial.set_user_attr("head_best_epoch", getattr(head, "best_epoch", None))
    log.info("setfit: fitted in %.1fs", time.monotonic() - started)
    return predictor

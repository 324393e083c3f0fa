"""The BERT family's hooks for the core (contract v2, :mod:`textclf.core.fit_flow`): ``check`` and ``fit``.

``fit(cfg, splits, context)`` fine-tunes into ``context.output_dir`` (:func:`.train.train_model`:
one or two stages, focal loss, precision and checkpointing for the device, token cache,
``--resume`` from ``context.resume``) and returns the :class:`.model.BertPredictor`, whose
``fit_info`` carries meta.json's ``bert`` and ``training`` blocks and the files loading needs.
During a search every epoch's valid score goes to ``context.report`` (the pruner may stop the
trial). The core searches, refits, evaluates and writes meta.json.

With ``devices > 1`` (outside a DDP job) ``fit`` starts that many DDP workers
(:func:`.workers.launch_workers`); rank 0 saves the model files and its ``fit_info``, and
``fit`` returns the Predictor of those files, so meta.json is still written once, by the core in
this process. Under a ``torchrun`` started by hand every process runs the core's flow; ranks > 0
return no Predictor and the core leaves meta.json to rank 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from textclf.core.errors import ConfigError
from textclf.core.torch_common import resolve_device
from textclf.core.training import Splits
from textclf.core.tuning import wants_search
from textclf.families.bert.distributed import check_devices, world_info
from textclf.families.bert.stages import check_config

log = logging.getLogger(__name__)


def check(cfg: dict) -> None:
    """``Family.check``: :func:`check_config`, and the DDP settings, before anything trains or a search starts."""
    check_config(cfg)
    world = world_info()
    if world.distributed and wants_search(cfg.get("search") or {}):
        raise ConfigError("search under a torchrun started by hand: every process would run its own study; "
                          "use --devices N instead (each trial then trains in N DDP workers)")
    if not world.distributed:
        check_devices(cfg["devices"], resolve_device(cfg["device"]).type)


def fit(cfg: dict, splits: Splits, context):
    """Fine-tune on ``splits.train`` (selection on valid) into ``context.output_dir``; returns the BertPredictor.

    A DDP rank > 0 under a hand-started torchrun returns None (rank 0 returns the model).
    """
    from textclf.families.bert.train import train_model

    world = world_info()
    metric = (cfg.get("search") or {}).get("metric") or cfg["train"]["metric"]
    if not world.distributed and cfg["devices"] > 1:
        return fit_in_workers(cfg, splits, context, metric)
    report = context.report if context.trial is not None else None
    return train_model(cfg, splits, context.output_dir, world=world, resume=context.resume, report=report,
                       report_metric=metric)


def fit_in_workers(cfg: dict, splits: Splits, context, metric: str):
    """``cfg["devices"]`` DDP workers train; the Predictor of the files rank 0 saved, with rank 0's ``fit_info``.

    A search trial's pruner sees every epoch's valid score once the workers are done.
    """
    from textclf.families.bert.model import BertPredictor
    from textclf.families.bert.train import stub_meta
    from textclf.families.bert.workers import launch_workers

    output_dir = Path(context.output_dir)
    info = launch_workers(cfg, splits, output_dir, context.resume)
    predictor = BertPredictor.load(output_dir, stub_meta(splits.labels, info["bert"], splits.task), device=cfg["device"])
    info["training"]["predict_batch_size"] = predictor.batch_size
    info["training"]["predict_precision"] = predictor.precision.name
    predictor.fit_info = info
    if context.trial is not None:
        step = 0
        for stage in info["training"]["stages"]:
            for row in stage["history"]:
                value = (row.get("valid") or {}).get(metric)
                if value is not None:
                    context.report(value, step + row["epoch"])
            step += stage["epochs"]
    return predictor

"""Fine-tuning the BERT family in Catalyst: focal loss, AdamW with warm-up/decay, one or two stages.

Training (:func:`train`) runs one or two Catalyst stages with a focal loss
(:class:`.losses.FocalLoss`), AdamW with linear warm-up/decay, gradient clipping and
accumulation, and an F-beta callback whose selected metric picks the best checkpoint and
stops early. With ``two_stage`` the first stage trains on a class-balanced downsample of
the training set and the second on the full set, starting from the first stage's best
weights. Every stage logs to its own TensorBoard directory (``logs/<stage>/tensorboard``).
``devices > 1`` relaunches the run in that many DDP processes (:mod:`.distributed`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from catalyst import dl
from catalyst.loggers.console import ConsoleLogger
from catalyst.loggers.csv import CSVLogger
from catalyst.loggers.tensorboard import TensorboardLogger
from torch import nn

from textclf.class_weights import class_alpha
from textclf.data import Dataset, balanced_downsample
from textclf.errors import ConfigError
from textclf.families.bert.callbacks import (
    AccumulatedBackwardCallback,
    BestCheckpointCallback,
    FBetaCallback,
    OptimizerStepCallback,
    optimizer_steps,
)
from textclf.families.bert.data import EncodedDataset, encode, load_tokenizer, make_loader
from textclf.families.bert.distributed import WorldInfo, world_info
from textclf.families.bert.losses import FocalLoss
from textclf.families.bert.model import (
    ENCODER_DIR,
    HEAD_FILE,
    KIND,
    BertClassifier,
    BertPredictor,
    load_encoder,
    resolve_model_name,
    save_model_dir,
    state_digest,
)
from textclf.metrics import is_minimized
from textclf.progress import PROGRESS_FILE, append_line
from textclf.torch_common import resolve_device, seed_everything
from textclf.training import Splits, finish_run

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "catalyst", "accelerate", "tokenizers")
STAGE_NAMES = {"stage1": "stage1_balanced", "stage2": "stage2_full"}

# --------------------------------------------------------------------------- Catalyst runner

class BertRunner(dl.Runner):
    """Catalyst runner: forward + loss per batch; callbacks do backward, steps, metrics and checkpoints.

    Each loader's batch sampler gets the epoch number (same order on every process), and the
    loader loss is averaged over all processes' examples.
    """

    def __init__(self, loss_fn: nn.Module, samplers: dict, logdir: Path | None, echo: bool = True,
                 progress_log: Path | None = None, metric: str = "macro_f1"):
        super().__init__()
        self.loss_fn = loss_fn
        self.samplers = samplers
        self.stage_logdir = logdir
        self.echo = echo
        self.progress_log = progress_log
        self.metric = metric
        self._loss_sum = 0.0
        self._loss_n = 0

    def get_loggers(self) -> dict:
        """Console (when echoing), CSV and TensorBoard loggers; Catalyst calls this on the main process only."""
        loggers: dict = {}
        if self.echo:
            loggers["console"] = ConsoleLogger()
        if self.stage_logdir is not None:
            loggers["csv"] = CSVLogger(logdir=str(self.stage_logdir / "csv"))
            loggers["tensorboard"] = TensorboardLogger(logdir=str(self.stage_logdir / "tensorboard"))
        return loggers

    def on_loader_start(self, runner) -> None:
        sampler = self.samplers.get(self.loader_key)
        if sampler is not None:
            sampler.set_epoch(self.epoch_step)
        super().on_loader_start(runner)
        self._loss_sum, self._loss_n = 0.0, 0

    def handle_batch(self, batch) -> None:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        loss = self.loss_fn(logits, batch["targets"])
        self.batch = {**batch, "logits": logits}
        self.batch_metrics["loss"] = loss
        n = len(batch["targets"])
        self._loss_sum += float(loss.detach()) * n
        self._loss_n += n

    def on_loader_end(self, runner) -> None:
        totals = torch.tensor([self._loss_sum, float(self._loss_n)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = totals.to(self.engine.device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        self.loader_metrics["loss"] = float(totals[0] / max(totals[1], 1.0))
        super().on_loader_end(runner)

    def on_epoch_end(self, runner) -> None:
        super().on_epoch_end(runner)
        if self.progress_log is not None:  # one plain line per epoch for batch jobs' logs
            valid = self.epoch_metrics.get("valid", {})
            stage = self.stage_logdir.name if self.stage_logdir else "train"
            append_line(self.progress_log, f"{stage} epoch {self.epoch_step}/{self.num_epochs}: valid {self.metric}="
                                           f"{valid.get(self.metric, float('nan')):.4f} loss={valid.get('loss', float('nan')):.4f}")


# --------------------------------------------------------------------------- training

@dataclass
class StageResult:
    """What one stage did: sizes, epochs, the best checkpoint and its score, per-epoch history."""

    name: str
    train_rows: int
    epochs: int
    lr: float
    best_path: str
    best_epoch: int | None
    best_score: float | None
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    seconds: float
    init_from: str | None = None
    init_sha256: str | None = None
    history: list = field(default_factory=list)

    def as_dict(self, root: Path | None = None) -> dict:
        """JSON-ready summary for meta.json (checkpoint paths relative to ``root`` when given)."""
        out = dict(self.__dict__)
        if root is not None:
            for key in ("best_path", "init_from"):
                if out[key]:
                    out[key] = os.path.relpath(out[key], root)
        return out


def make_engine(device: torch.device, fp16: bool):
    """Catalyst engine (an ``accelerate.Accelerator``) for ``device``; under torchrun it joins the process group."""
    from catalyst.engines.torch import CPUEngine, GPUEngine

    if device.type == "cuda":
        if not world_info().distributed and device.index is not None:
            torch.cuda.set_device(device)
        return GPUEngine(mixed_precision="fp16" if fp16 else "no")
    return CPUEngine()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def run_stage(stage: str, model: BertClassifier, train_ds: EncodedDataset, *, valid_ds: EncodedDataset, cfg: dict,
              labels: list[str], loss_fn: nn.Module, pad_id: int, device: torch.device, output_dir: Path, world: WorldInfo,
              resume: bool, init_from: str | None = None) -> StageResult:
    """Train ``model`` for one stage with Catalyst; returns the stage's summary (best weights in ``best_path``)."""
    from transformers import get_linear_schedule_with_warmup

    t = cfg["train"]
    s = cfg[stage]
    name = STAGE_NAMES[stage]
    seed = cfg["seed"] + (0 if stage == "stage1" else 1000)
    loaders = {"train": make_loader(train_ds, t["batch_size"], pad_id, shuffle=True, seed=seed, num_workers=t["num_workers"]),
               "valid": make_loader(valid_ds, t["eval_batch_size"], pad_id, shuffle=False, num_workers=t["num_workers"])}
    samplers = {key: loader.batch_sampler for key, loader in loaders.items()}
    batches = math.ceil(len(loaders["train"]) / world.world_size)
    steps = optimizer_steps(batches, s["epochs"], t["accumulation_steps"])
    optimizer = make_optimizer(model, s["lr"], t["weight_decay"])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(t["warmup_ratio"] * steps)), steps)
    ckpt = BestCheckpointCallback(output_dir / "checkpoints" / name, t["metric"], "valid", resume=resume,
                                  patience=t["patience"])
    callbacks = {
        "fbeta": FBetaCallback(labels, betas=t["betas"]),
        "backward": AccumulatedBackwardCallback("loss", t["accumulation_steps"]),
        "optimizer": OptimizerStepCallback(t["accumulation_steps"], t["max_grad_norm"]),
        "checkpoint": ckpt,
    }
    progress = t["progress"] if t["progress"] is not None else sys.stderr.isatty()
    if progress and world.is_main:
        callbacks["progress"] = dl.TqdmCallback()
    runner = BertRunner(loss_fn, samplers, output_dir / "logs" / name if world.is_main else None, echo=world.is_main,
                        progress_log=output_dir / PROGRESS_FILE if world.is_main else None, metric=t["metric"])
    engine = make_engine(device, fp16=bool(t["fp16"]) and device.type == "cuda")
    log.info("%s: %d train rows, %d epochs, lr %g, %d optimizer steps", name, len(train_ds), s["epochs"], s["lr"], steps)
    if world.is_main:
        print(f"== {name}: {len(train_ds)} train rows, {s['epochs']} epoch(s), lr {s['lr']:g}, {steps} optimizer steps",
              flush=True)
    start = time.perf_counter()
    runner.train(model=model, engine=engine, loaders=loaders, optimizer=optimizer, scheduler=scheduler,
                 callbacks=callbacks, num_epochs=s["epochs"], seed=seed, valid_loader="valid",
                 valid_metric=t["metric"], minimize_valid_metric=is_minimized(t["metric"]), verbose=False)
    if runner.exception is not None:  # Catalyst re-raises in on_exception; this is a guard
        raise runner.exception
    engine.free_memory()  # drop the engine's references to this stage's model and optimizer
    return StageResult(name=name, train_rows=len(train_ds), epochs=s["epochs"], lr=s["lr"], best_path=str(ckpt.best_path),
                       best_epoch=ckpt.best_epoch, best_score=ckpt.best_score, epochs_run=len(ckpt.history),
                       stopped_early=ckpt.stopped_early, resumed_from_epoch=ckpt.resumed_from_epoch,
                       seconds=round(time.perf_counter() - start, 2), init_from=init_from, history=ckpt.history)


def training_device(spec: str, world: WorldInfo) -> torch.device:
    """The device this process trains on: ``--device`` resolved, and under DDP the local rank's GPU."""
    device = resolve_device(spec)
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    if device.type == "mps":
        return torch.device("cpu")  # accelerate's MPS path is not part of what we support here
    return device


def check_config(cfg: dict) -> None:
    """Refuse settings that cannot train (before any model is loaded)."""
    m, t = cfg["model"], cfg["train"]
    if m["max_length"] < 8:
        raise ConfigError(f"model.max_length must be at least 8, got {m['max_length']}")
    for stage in ("stage1", "stage2") if cfg["two_stage"] else ("stage2",):
        if cfg[stage]["epochs"] < 1 or cfg[stage]["lr"] <= 0:
            raise ConfigError(f"{stage}.epochs must be >= 1 and {stage}.lr > 0 (got {cfg[stage]['epochs']}, {cfg[stage]['lr']})")
    if t["accumulation_steps"] < 1 or t["batch_size"] < 1:
        raise ConfigError("train.batch_size and train.accumulation_steps must be >= 1")


class ModelFactory:
    """Fresh :class:`BertClassifier` objects for each stage (a DDP wrapper leaves hooks on the parameters it wrapped)."""

    def __init__(self, cfg: dict, n_classes: int, device: torch.device):
        self.cfg = cfg
        self.n_classes = n_classes
        self.device = device
        self.model_name = resolve_model_name(cfg["model"]["model_name"])
        self._encoder: nn.Module | None = load_encoder(self.model_name)
        self.config = self._encoder.config

    def __call__(self, state: dict | None = None) -> BertClassifier:
        m = self.cfg["model"]
        enc = self._encoder if self._encoder is not None else load_encoder(self.model_name)
        self._encoder = None
        model = BertClassifier(enc, self.n_classes, m["dropout"], m["pooling"])
        if state is not None:
            model.load_state_dict(state)
        if self.device.type == "cuda" and m["gradient_checkpointing"]:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model


def run_stages(cfg: dict, splits: Splits, factory: ModelFactory, tokenizer, max_length: int, common: dict) -> list[StageResult]:
    """Stage 1 on a class-balanced downsample (when ``two_stage``), then stage 2 on everything from stage 1's best weights."""
    index = {label: i for i, label in enumerate(splits.labels)}

    def encoded(ds: Dataset) -> EncodedDataset:
        return EncodedDataset(encode(tokenizer, ds.texts, max_length), [index[label] for label in ds.labels])

    full_train = encoded(splits.train)
    common = {**common, "valid_ds": encoded(splits.valid)}
    stages: list[StageResult] = []
    init_state, init_from = None, None
    if cfg["two_stage"]:
        idx = balanced_downsample(splits.train.labels, cfg["seed"], cfg["stage1"]["per_class"])
        stage1_train = EncodedDataset([full_train.input_ids[i] for i in idx], [full_train.targets[i] for i in idx])
        stages.append(run_stage("stage1", factory(), stage1_train, **common))
        init_from = stages[0].best_path
        init_state = torch.load(init_from, map_location="cpu", weights_only=True)
    stage2 = run_stage("stage2", factory(init_state), full_train, init_from=init_from, **common)
    if init_state is not None:
        stage2.init_sha256 = state_digest(init_state)
    stages.append(stage2)
    return stages


def save_best(cfg: dict, splits: Splits, output_dir: Path, factory: ModelFactory, tokenizer, max_length: int,
              stages: list[StageResult], device: torch.device, world: WorldInfo, train_seconds: float) -> dict:
    """Load the best stage's best weights, save the model directory and score it; returns meta."""
    m, t = cfg["model"], cfg["train"]
    best = (min if is_minimized(t["metric"]) else max)(stages, key=lambda r: r.best_score)
    model = BertClassifier(load_encoder(factory.model_name), len(splits.labels), m["dropout"], m["pooling"])
    model.load_state_dict(torch.load(best.best_path, map_location="cpu", weights_only=True))
    save_model_dir(output_dir, model, tokenizer)
    info = {"model_name": m["model_name"] or "auto", "resolved_model": factory.model_name, "pooling": m["pooling"],
            "dropout": m["dropout"], "max_length": max_length, "hidden_size": model.encoder.config.hidden_size,
            "predict_batch_size": cfg["output"]["predict_batch_size"], "encoder_dir": ENCODER_DIR, "head_file": HEAD_FILE}
    training = {"device": str(device), "world_size": world.world_size, "fp16": bool(t["fp16"]) and device.type == "cuda",
                "metric": t["metric"], "selected_stage": best.name, "selected_epoch": best.best_epoch,
                "selected_score": best.best_score, "train_seconds": train_seconds,
                "stages": [s.as_dict(output_dir) for s in stages]}
    predictor = BertPredictor(output_dir, {"labels": splits.labels, "kind": KIND, "bert": info}, model, tokenizer, device,
                              max_length, cfg["output"]["predict_batch_size"])
    return finish_run(output_dir, predictor, splits, cfg, PACKAGES, bert=info, training=training)


def train(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False) -> Path:
    """Fine-tune, select the best checkpoint, save the model directory; returns it.

    With ``devices > 1`` outside a DDP run, the run is relaunched in ``devices`` processes
    (:func:`.distributed.launch_workers`); ranks > 0 save nothing.
    """
    from textclf.families.bert.distributed import check_devices, launch_workers

    output_dir = Path(output_dir)
    world = world_info()
    if not world.distributed:
        check_devices(cfg["devices"], resolve_device(cfg["device"]).type)
        if cfg["devices"] > 1:
            launch_workers(cfg, splits, output_dir, resume)
            return output_dir
    device = training_device(cfg["device"], world)
    seed_everything(cfg["seed"])
    check_config(cfg)
    factory = ModelFactory(cfg, len(splits.labels), device)
    tokenizer = load_tokenizer(factory.model_name, factory.config.vocab_size)
    m = cfg["model"]
    max_length = min(m["max_length"], getattr(factory.config, "max_position_embeddings", m["max_length"]))
    alpha = class_alpha(cfg["loss"]["alpha"], splits.labels, splits.train.labels)
    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    common = {"cfg": cfg, "labels": splits.labels, "loss_fn": FocalLoss(cfg["loss"]["gamma"], alpha),
              "pad_id": tokenizer.pad_token_id, "device": device, "output_dir": output_dir, "world": world, "resume": resume}
    started = time.perf_counter()
    stages = run_stages(cfg, splits, factory, tokenizer, max_length, common)
    if not world.is_main:
        return output_dir
    save_best(cfg, splits, output_dir, factory, tokenizer, max_length, stages, device, world,
              round(time.perf_counter() - started, 2))
    if not cfg["output"]["keep_checkpoints"]:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return output_dir

"""Fine-tuning the BERT family in Catalyst: focal loss, AdamW with warm-up/decay, one or two stages.

Training (:func:`train_model`, called by the family's ``fit``, :mod:`.fit`) runs one or two Catalyst stages with a focal loss
(:class:`.losses.FocalLoss`), AdamW with linear warm-up/decay, gradient clipping and
accumulation, and an F-beta callback whose selected metric picks the best checkpoint and
stops early. With ``two_stage`` the first stage trains on a class-balanced downsample of
the training set and the second on the full set, starting from the first stage's best
weights. Every stage logs to its own TensorBoard directory (``logs/<stage>/tensorboard``).
It saves the model files and returns the Predictor, whose ``fit_info`` the core records in meta.json;
during a search every epoch's valid score is reported to the pruner (:class:`.callbacks.ReportCallback`).
``devices > 1`` trains in that many DDP processes (:mod:`.workers`).

Speed: every split is tokenised once, up front, and cached in ``work/`` (:mod:`.data`);
batches are length-bucketed and padded only to their longest text; precision
(``train.precision``) and gradient checkpointing (``model.gradient_checkpointing``) are resolved
for the device by :mod:`textclf.core.precision` and recorded in meta.json; ``train.batch_size``
scales the learning rate by ``train.lr_scaling`` (sqrt by default) relative to
``train.base_batch_size``; ``model.compile`` compiles the encoder. The console shows one line
per epoch (:class:`.callbacks.EpochLineLogger`); TensorBoard and CSV get every metric.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from catalyst import dl
from catalyst.loggers.csv import CSVLogger
from catalyst.loggers.tensorboard import TensorboardLogger
from torch import nn

from textclf.core.class_weights import class_alpha, label_indicator, pos_weight
from textclf.core.decision import decision_settings
from textclf.core.errors import ConfigError
from textclf.core.integrity import FILES_KEY
from textclf.core.long_text import long_text_settings
from textclf.core.metrics import is_minimized
from textclf.core.precision import (
    Checkpointing,
    DeviceInfo,
    MemoryEstimate,
    Precision,
    precision_setting,
    resolve_checkpointing,
    resolve_precision,
    warn_once,
)
from textclf.core.progress import PROGRESS_FILE, append_line
from textclf.core.torch_common import resolve_device, scaled_lr, seed_everything
from textclf.core.training import Splits
from textclf.families.bert.callbacks import (
    AccumulatedBackwardCallback,
    BestCheckpointCallback,
    EpochLineLogger,
    FBetaCallback,
    OptimizerStepCallback,
    ReportCallback,
    optimizer_steps,
)
from textclf.families.bert.data import (
    WORK_DIR,
    ChunkedDataset,
    EncodedDataset,
    cached_encode,
    cached_encode_chunked,
    load_tokenizer,
    make_loader,
    tokenizer_fingerprint,
)
from textclf.families.bert.distributed import WorldInfo, world_info
from textclf.families.bert.losses import FocalBCELoss, FocalLoss
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
from textclf.families.bert.stages import check_config, plan_stages, stage1_indices, staged_config

log = logging.getLogger(__name__)

STAGE_NAMES = {"stage1": "stage1_balanced", "stage2": "stage2_full"}

# --------------------------------------------------------------------------- Catalyst runner

class BertRunner(dl.Runner):
    """Catalyst runner: forward + loss per batch; callbacks do backward, steps, metrics and checkpoints.

    Each loader's batch sampler gets the epoch number (same order on every process), and the
    loader loss is averaged over all processes' examples. The loss is summed on the device (no
    GPU sync per batch); the seconds and rows of every train loader are kept for throughput.
    """

    def __init__(self, loss_fn: nn.Module, samplers: dict, logdir: Path | None, echo: bool = True,
                 progress_log: Path | None = None, metric: str = "macro_f1", stage: str = ""):
        super().__init__()
        self.loss_fn = loss_fn
        self.samplers = samplers
        self.stage_logdir = logdir
        self.echo = echo
        self.progress_log = progress_log
        self.metric = metric
        self.stage = stage
        self._loss_sum: float | torch.Tensor = 0.0
        self._loss_n = 0
        self._loader_t0 = 0.0
        self._loader_cpu0 = 0.0
        self._epoch_t0 = 0.0
        self.epoch_seconds: float | None = None
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.train_rows = 0

    def get_loggers(self) -> dict:
        """One line per epoch on the console (when echoing), CSV and TensorBoard; Catalyst calls this on the main process only."""
        loggers: dict = {}
        if self.echo:
            loggers["console"] = EpochLineLogger(self.stage, extra=self.metric)
        if self.stage_logdir is not None:
            loggers["csv"] = CSVLogger(logdir=str(self.stage_logdir / "csv"))
            loggers["tensorboard"] = TensorboardLogger(logdir=str(self.stage_logdir / "tensorboard"))
        return loggers

    def _sync(self) -> None:
        if self.engine is not None and self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)

    def on_epoch_start(self, runner) -> None:
        super().on_epoch_start(runner)
        self._epoch_t0 = time.perf_counter()

    def on_loader_start(self, runner) -> None:
        sampler = self.samplers.get(self.loader_key)
        if sampler is not None:
            sampler.set_epoch(self.epoch_step)
        super().on_loader_start(runner)
        self._loss_sum, self._loss_n = 0.0, 0
        self._sync()
        self._loader_t0 = time.perf_counter()
        self._loader_cpu0 = time.process_time()

    def handle_batch(self, batch) -> None:
        if "chunk_doc" in batch:  # documents of windows (long_text: chunk, valid): pooled to one row per document
            logits = self.model(batch["input_ids"], batch["attention_mask"], batch["chunk_doc"], len(batch["targets"]))
        else:
            logits = self.model(batch["input_ids"], batch["attention_mask"])
        loss = self.loss_fn(logits, batch["targets"])
        self.batch = {**batch, "logits": logits}
        self.batch_metrics["loss"] = loss
        n = len(batch["targets"])
        self._loss_sum = self._loss_sum + loss.detach().float() * n  # a device tensor: no sync per batch
        self._loss_n += n

    def on_loader_end(self, runner) -> None:
        totals = torch.tensor([float(self._loss_sum), float(self._loss_n)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = totals.to(self.engine.device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        if self.is_train_loader:
            self._sync()
            self.train_seconds += time.perf_counter() - self._loader_t0
            self.train_cpu_seconds += time.process_time() - self._loader_cpu0
            self.train_rows += int(totals[1])
        self.loader_metrics["loss"] = float(totals[0] / max(totals[1], 1.0))
        super().on_loader_end(runner)

    def on_epoch_end(self, runner) -> None:
        self.epoch_seconds = time.perf_counter() - self._epoch_t0
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
    base_lr: float | None = None
    batch_size: int | None = None
    train_loop_seconds: float | None = None
    train_loop_cpu_seconds: float | None = None
    rows_trained: int = 0
    rows_per_s: float | None = None
    compile_state: str = "off"
    history: list = field(default_factory=list)

    def as_dict(self, root: Path | None = None) -> dict:
        """JSON-ready summary for meta.json (checkpoint paths relative to ``root`` when given)."""
        out = dict(self.__dict__)
        if root is not None:
            for key in ("best_path", "init_from"):
                if out[key]:
                    out[key] = os.path.relpath(out[key], root)
        return out


def make_engine(device: torch.device, precision: Precision | bool = False):
    """Catalyst engine (an ``accelerate.Accelerator``) for ``device`` and ``precision``; under torchrun it joins the process group.

    bf16/fp16 become accelerate's autocast (fp16 with its GradScaler). On CUDA, batches are
    copied to the device with ``non_blocking`` (from pinned memory, see :func:`.data.make_loader`).
    A bool ``precision`` is the old ``fp16`` flag.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration
    from catalyst.engines.torch import CPUEngine, GPUEngine

    if isinstance(precision, bool):
        precision = Precision("fp16" if precision and device.type == "cuda" else "fp32", "legacy", "fp16 flag")
    mixed = precision.accelerate if device.type == "cuda" or precision.name == "bf16" else "no"
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed:
        # accelerate keeps one precision per process; a second run in this process (tests, notebooks)
        # with another precision starts from a fresh state (the distributed part is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
    if device.type == "cuda":
        if not world_info().distributed and device.index is not None:
            torch.cuda.set_device(device)
        return GPUEngine(mixed_precision=precision.accelerate, dataloader_config=DataLoaderConfiguration(non_blocking=True))
    return CPUEngine(mixed_precision=mixed)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights (``fused``: one kernel per step, for CUDA)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True) if fused else torch.optim.AdamW(groups, lr=lr)


def effective_batch(cfg: dict, world: WorldInfo) -> int:
    """Examples per optimizer step: batch size x accumulation steps x processes."""
    t = cfg["train"]
    return t["batch_size"] * t["accumulation_steps"] * world.world_size


def stage_lr(cfg: dict, stage: str, world: WorldInfo) -> float:
    """``<stage>.lr`` scaled for the effective batch by ``train.lr_scaling`` relative to ``train.base_batch_size``."""
    t = cfg["train"]
    return scaled_lr(cfg[stage]["lr"], effective_batch(cfg, world), t["base_batch_size"], t["lr_scaling"])


def announce(line: str, world: WorldInfo) -> None:
    """Log a run decision and print it as ``== line`` on the main process (the console's one place for them)."""
    log.info(line)
    if world.is_main:
        print(f"== {line}", flush=True)


def run_stage(stage: str, model: BertClassifier, train_ds: EncodedDataset, *, valid_ds: EncodedDataset | ChunkedDataset,
              cfg: dict, labels: list[str], loss_fn: nn.Module, pad_id: int, device: torch.device, output_dir: Path, world: WorldInfo,
              resume: bool, precision: Precision, init_from: str | None = None, report: Callable | None = None,
              report_metric: str = "macro_f1", step_offset: int = 0) -> StageResult:
    """Train ``model`` for one stage with Catalyst; returns the stage's summary (best weights in ``best_path``).

    ``report(value, step)`` (a search trial's ``context.report``) gets the valid ``report_metric`` after
    every epoch, the step counted from ``step_offset`` (the epochs of earlier stages).
    """
    from transformers import get_linear_schedule_with_warmup

    t = cfg["train"]
    s = cfg[stage]
    name = STAGE_NAMES[stage]
    seed = cfg["seed"] + (0 if stage == "stage1" else 1000)
    pin = device.type == "cuda"
    loaders = {"train": make_loader(train_ds, t["batch_size"], pad_id, shuffle=True, seed=seed, num_workers=t["num_workers"],
                                    pin_memory=pin, pool_batches=int(t["bucket_pool"])),
               "valid": make_loader(valid_ds, t["eval_batch_size"], pad_id, shuffle=False, num_workers=t["num_workers"],
                                    pin_memory=pin)}
    samplers = {key: loader.batch_sampler for key, loader in loaders.items()}
    batches = math.ceil(len(loaders["train"]) / world.world_size)
    steps = optimizer_steps(batches, s["epochs"], t["accumulation_steps"])
    lr = stage_lr(cfg, stage, world)
    if device.type == "cuda":  # on the GPU before the optimizer exists, so fused AdamW sees CUDA parameters
        model.to(device)
    optimizer = make_optimizer(model, lr, t["weight_decay"], fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(t["warmup_ratio"] * steps)), steps)
    ckpt = BestCheckpointCallback(output_dir / "checkpoints" / name, t["metric"], "valid", resume=resume,
                                  patience=t["patience"])
    callbacks = {
        "fbeta": FBetaCallback(labels, betas=t["betas"], threshold=decision_settings({"config": cfg})[0]),
        "backward": AccumulatedBackwardCallback("loss", t["accumulation_steps"]),
        "optimizer": OptimizerStepCallback(t["accumulation_steps"], t["max_grad_norm"]),
        "checkpoint": ckpt,
    }
    if report is not None:
        callbacks["report"] = ReportCallback(report, report_metric, "valid", step_offset)
    progress = t["progress"] if t["progress"] is not None else sys.stderr.isatty()
    if progress and world.is_main:
        callbacks["progress"] = dl.TqdmCallback()
    runner = BertRunner(loss_fn, samplers, output_dir / "logs" / name if world.is_main else None, echo=world.is_main,
                        progress_log=output_dir / PROGRESS_FILE if world.is_main else None, metric=t["metric"], stage=name)
    engine = make_engine(device, precision)
    batch = effective_batch(cfg, world)
    lr_note = f"lr {lr:g}" + (f" ({s['lr']:g} at batch {t['base_batch_size']}, {t['lr_scaling']} rule)" if lr != s["lr"] else "")
    announce(f"{name}: {len(train_ds)} train rows, {s['epochs']} epoch(s), batch {batch}, {lr_note}, "
             f"{steps} optimizer steps", world)
    start = time.perf_counter()
    runner.train(model=model, engine=engine, loaders=loaders, optimizer=optimizer, scheduler=scheduler,
                 callbacks=callbacks, num_epochs=s["epochs"], seed=seed, valid_loader="valid",
                 valid_metric=t["metric"], minimize_valid_metric=is_minimized(t["metric"]), verbose=False)
    if runner.exception is not None:  # Catalyst re-raises in on_exception; this is a guard
        raise runner.exception
    engine.free_memory()  # drop the engine's references to this stage's model and optimizer
    loop_s = runner.train_seconds
    return StageResult(name=name, train_rows=len(train_ds), epochs=s["epochs"], lr=lr, best_path=str(ckpt.best_path),
                       best_epoch=ckpt.best_epoch, best_score=ckpt.best_score, epochs_run=len(ckpt.history),
                       stopped_early=ckpt.stopped_early, resumed_from_epoch=ckpt.resumed_from_epoch,
                       seconds=round(time.perf_counter() - start, 2), init_from=init_from, base_lr=s["lr"],
                       batch_size=batch, train_loop_seconds=round(loop_s, 3), rows_trained=runner.train_rows,
                       train_loop_cpu_seconds=round(runner.train_cpu_seconds, 3),
                       rows_per_s=round(runner.train_rows / loop_s, 2) if loop_s > 0 else None,
                       compile_state=model.compile_state, history=ckpt.history)


def training_device(spec: str, world: WorldInfo) -> torch.device:
    """The device this process trains on: ``--device`` resolved, and under DDP the local rank's GPU."""
    device = resolve_device(spec)
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    if device.type == "mps":
        return torch.device("cpu")  # accelerate's MPS path is not part of what we support here
    return device


def device_batch(cfg: dict, device: torch.device) -> dict:
    """The config with ``train.batch_size_gpu`` (when set) as ``train.batch_size`` on a CUDA device."""
    gpu = cfg["train"].get("batch_size_gpu")
    if device.type != "cuda" or not gpu:
        return cfg
    log.info("train.batch_size_gpu: batch %s on %s (train.batch_size %s elsewhere)", gpu, device, cfg["train"]["batch_size"])
    return {**cfg, "train": {**cfg["train"], "batch_size": int(gpu)}}


def check_memory_choice(ckpt: Checkpointing, encoder: nn.Module) -> Checkpointing:
    """Checkpointing off, with a warning, for an encoder that does not support it."""
    if ckpt.enabled and not getattr(encoder, "supports_gradient_checkpointing", False):
        log.warning("model.gradient_checkpointing: %s does not support it; training without", type(encoder).__name__)
        return Checkpointing(False, ckpt.setting, f"{ckpt.reason}; unsupported by {type(encoder).__name__}",
                             ckpt.need_bytes, ckpt.free_bytes)
    return ckpt


def enable_checkpointing(encoder: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every layer (transformers >= 5.2x names it activation_checkpointing)."""
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class ModelFactory:
    """Fresh :class:`BertClassifier` objects for each stage (a DDP wrapper leaves hooks on the parameters it wrapped).

    ``checkpointing`` and ``compile`` (set by :func:`train` once resolved) apply to every model it makes.
    """

    def __init__(self, cfg: dict, n_classes: int, device: torch.device):
        self.cfg = cfg
        self.n_classes = n_classes
        self.device = device
        self.model_name = resolve_model_name(cfg["model"]["model_name"])
        self._encoder: nn.Module | None = load_encoder(self.model_name)
        self.config = self._encoder.config
        self.n_params = sum(p.numel() for p in self._encoder.parameters())
        self.checkpointing = False
        self.compile = False

    def memory_estimate(self, batch_size: int, max_length: int, precision: Precision) -> MemoryEstimate:
        """The training-memory estimate of this encoder for one batch (see :class:`textclf.core.precision.MemoryEstimate`)."""
        assert self._encoder is not None, "estimate before the first model is made"
        return MemoryEstimate.for_encoder(self._encoder, batch_size, max_length, precision.activation_bytes)

    def __call__(self, state: dict | None = None) -> BertClassifier:
        m = self.cfg["model"]
        enc = self._encoder if self._encoder is not None else load_encoder(self.model_name)
        self._encoder = None
        model = BertClassifier(enc, self.n_classes, m["dropout"], m["pooling"], long_text_settings(m).pooling)
        if state is not None:
            model.load_state_dict(state)
        if self.checkpointing:
            enable_checkpointing(enc)
        if self.compile:
            model.compile_encoder()
        return model


def label_targets(labels, splits: Splits, index: dict) -> list:
    """Class indices, or (multi-label) one 0/1 row a text in ``splits.labels`` order."""
    return list(label_indicator(labels, splits.labels)) if splits.multilabel else [index[label] for label in labels]


def loss_function(cfg: dict, splits: Splits) -> nn.Module:
    """Focal loss with ``loss.alpha``; multi-label: focal BCE with ``loss.pos_weight`` (``"balanced"``: from label frequencies)."""
    loss = cfg["loss"]
    if splits.multilabel:
        if loss.get("alpha"):
            raise ConfigError("loss.alpha weighs exclusive classes; on multi-label data set loss.pos_weight "
                              "(\"balanced\": negatives/positives of each label) instead")
        return FocalBCELoss(loss["gamma"], pos_weight(loss.get("pos_weight"), splits.labels, splits.train.labels,
                                                      key="loss.pos_weight"))
    return FocalLoss(loss["gamma"], class_alpha(loss["alpha"], splits.labels, splits.train.labels))


def encode_splits(cfg: dict, splits: Splits, tokenizer, max_length: int, output_dir: Path) -> tuple[dict, dict]:
    """Tokenise train and valid once (from the ``work/`` token cache when it has them): datasets with targets, cache status.

    With ``model.long_text: chunk`` they are :class:`.data.ChunkedDataset` objects, and the test
    split (when there is one) is tokenised too, for its chunk statistics in meta.json.
    """
    index = {label: i for i, label in enumerate(splits.labels)}
    fingerprint = tokenizer_fingerprint(tokenizer)
    work = output_dir / WORK_DIR if cfg["train"]["token_cache"] else None
    long_text = long_text_settings(cfg["model"], max_length)
    data, status = {}, {}
    start = time.perf_counter()
    names = ("train", "valid", "test") if long_text.chunk and splits.test is not None else ("train", "valid")
    for name in names:
        ds = getattr(splits, name)
        if long_text.chunk:
            encoded, status[name] = cached_encode_chunked(tokenizer, ds.texts, max_length, long_text, work, name,
                                                          fingerprint)
        else:
            encoded, status[name] = cached_encode(tokenizer, ds.texts, max_length, work, name, fingerprint)
        data[name] = encoded.with_targets(label_targets(ds.labels, splits, index))
    status["seconds"] = round(time.perf_counter() - start, 3)
    return data, status


def long_text_info(cfg: dict, max_length: int, data: dict) -> dict:
    """meta.json's ``bert.long_text``: the settings, and with ``chunk`` each split's :class:`textclf.core.long_text.ChunkStats`."""
    settings = long_text_settings(cfg["model"], max_length)
    info = settings.as_dict()
    if settings.chunk:
        info["splits"] = {name: ds.stats.as_dict() for name, ds in data.items() if getattr(ds, "stats", None)}
    return info


def run_stages(cfg: dict, splits: Splits, factory: ModelFactory, data: dict, common: dict) -> list[StageResult]:
    """Stage 1 on a class-balanced downsample (when ``two_stage``), then stage 2 on everything from stage 1's best weights.

    ``cfg`` is the staged config (:func:`.stages.staged_config`): ``two_stage`` already resolved to a boolean.
    """
    chunked = isinstance(data["train"], ChunkedDataset)  # long_text: chunk trains on the windows
    full_train = data["train"].training_windows() if chunked else data["train"]
    common = {**common, "valid_ds": data["valid"]}
    stages: list[StageResult] = []
    init_state, init_from = None, None
    if cfg["two_stage"]:
        idx = stage1_indices(cfg, splits.train.labels)
        stage1_rows = data["train"].training_windows(idx) if chunked else full_train.subset(idx)
        stages.append(run_stage("stage1", factory(), stage1_rows, **common))
        init_from = stages[0].best_path
        init_state = torch.load(init_from, map_location="cpu", weights_only=True)
    offset = cfg["stage1"]["epochs"] if cfg["two_stage"] else 0
    stage2 = run_stage("stage2", factory(init_state), full_train, init_from=init_from, step_offset=offset, **common)
    if init_state is not None:
        stage2.init_sha256 = state_digest(init_state)
    stages.append(stage2)
    return stages


def predict_config(cfg: dict) -> dict:
    """``predict.*`` with the deprecated ``output.predict_batch_size`` (when set) as the batch size on every device."""
    p = dict(cfg["predict"])
    legacy = cfg["output"].get("predict_batch_size")
    if legacy is not None:
        warn_once("output.predict_batch_size", "output.predict_batch_size is deprecated; use predict.batch_size_cpu "
                                               "and predict.batch_size_gpu")
        p["batch_size_cpu"] = p["batch_size_gpu"] = legacy
    return p


def model_files(output_dir: Path) -> list[str]:
    """The files loading needs (``encoder/*`` and ``head.pt``), relative to ``output_dir``: meta.json's ``files`` block.

    Checkpoints, logs and the token cache are not among them (they are not needed to predict).
    """
    encoder = sorted(p.name for p in (output_dir / ENCODER_DIR).iterdir() if p.is_file())
    return [f"{ENCODER_DIR}/{name}" for name in encoder] + [HEAD_FILE]


def best_predictor(cfg: dict, splits: Splits, output_dir: Path, factory: ModelFactory, tokenizer, max_length: int,
                   stages: list[StageResult], device: torch.device, world: WorldInfo, train_seconds: float,
                   speed: dict | None = None, long_text: dict | None = None) -> BertPredictor:
    """Load the best stage's best weights, save the model directory; returns its Predictor.

    ``predictor.fit_info`` holds what the core records in meta.json: the ``bert`` block (what
    loading, ONNX export and serving read), the ``training`` block (stages, selection, speed
    choices) and ``files`` (:func:`model_files`).
    """
    m, t = cfg["model"], cfg["train"]
    speed = speed or {}
    best = (min if is_minimized(t["metric"]) else max)(stages, key=lambda r: r.best_score)
    settings = long_text_settings(m, max_length)
    model = BertClassifier(load_encoder(factory.model_name), len(splits.labels), m["dropout"], m["pooling"],
                           settings.pooling)
    model.load_state_dict(torch.load(best.best_path, map_location="cpu", weights_only=True))
    save_model_dir(output_dir, model, tokenizer)
    predict = predict_config(cfg)
    info = {"model_name": m["model_name"] or "auto", "resolved_model": factory.model_name, "pooling": m["pooling"],
            "dropout": m["dropout"], "max_length": max_length, "hidden_size": model.encoder.config.hidden_size,
            "predict": predict, "encoder_dir": ENCODER_DIR, "head_file": HEAD_FILE,
            "long_text": long_text or settings.as_dict()}
    precision = speed.get("precision")
    rows = sum(s.rows_trained for s in stages)
    loop_s = sum(s.train_loop_seconds or 0.0 for s in stages)
    cpu_s = sum(s.train_loop_cpu_seconds or 0.0 for s in stages)
    training = {"device": str(device), "world_size": world.world_size,
                "fp16": bool(precision and precision["name"] == "fp16"),
                "metric": t["metric"], "selected_stage": best.name, "selected_epoch": best.best_epoch,
                "selected_score": best.best_score, "train_seconds": train_seconds,
                "train_loop_seconds": round(loop_s, 3), "train_loop_cpu_seconds": round(cpu_s, 3), "rows_trained": rows,
                "rows_per_s": round(rows / loop_s, 2) if loop_s > 0 else None,
                **{k: v for k, v in speed.items()},
                "stages": [s.as_dict(output_dir) for s in stages]}
    if device.type == "cuda":
        training["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    predictor = BertPredictor(output_dir, stub_meta(splits.labels, info, splits.task), model, tokenizer, device, max_length,
                              long_text=settings)
    training["predict_batch_size"] = predictor.batch_size
    training["predict_precision"] = predictor.precision.name
    predictor.fit_info = {"bert": info, "training": training, FILES_KEY: model_files(output_dir)}
    return predictor


def stub_meta(labels: list[str], info: dict, task: str = "multiclass") -> dict:
    """What a BertPredictor needs of meta.json before the core writes it: labels, kind, task and the ``bert`` block."""
    return {"labels": list(labels), "kind": KIND, "bert": info, "task": task}


def resolve_speed(cfg: dict, factory: ModelFactory, device: torch.device, max_length: int,
                  world: WorldInfo) -> tuple[Precision, Checkpointing]:
    """Precision and gradient checkpointing for this device, logged (and printed on the main process)."""
    t, m = cfg["train"], cfg["model"]
    info = DeviceInfo.of(device)
    precision = resolve_precision(precision_setting(t), info)
    estimate = factory.memory_estimate(t["batch_size"], max_length, precision)
    ckpt = check_memory_choice(resolve_checkpointing(m["gradient_checkpointing"], info, estimate), factory._encoder)
    factory.checkpointing = ckpt.enabled
    factory.compile = bool(m["compile"])
    line = (f"precision {precision.name} ({precision.reason}); gradient checkpointing "
            f"{'on' if ckpt.enabled else 'off'} ({ckpt.reason})" + ("; torch.compile on" if factory.compile else ""))
    announce(line, world)
    return precision, ckpt


def train_model(cfg: dict, splits: Splits, output_dir: str | Path, *, world: WorldInfo, resume: bool = False,
                report: Callable | None = None, report_metric: str = "macro_f1") -> BertPredictor | None:
    """Fine-tune in this process (one of the DDP processes under torchrun), save the model files; returns the Predictor.

    ``cfg`` is recorded in meta.json as the user gave it (``two_stage`` unresolved; the choice is in
    ``training.stage_plan``). Ranks > 0 of a DDP job train with the others and return None: rank 0
    saves the model. ``report`` (a search trial's ``context.report``) gets the valid ``report_metric``
    after every epoch.
    """
    output_dir = Path(output_dir)
    device = training_device(cfg["device"], world)
    cfg = device_batch(cfg, device)
    seed_everything(cfg["seed"])
    plan = plan_stages(cfg, splits.train.labels, splits.multilabel)
    user_cfg, cfg = cfg, staged_config(cfg, plan)
    check_config(cfg)
    factory = ModelFactory(cfg, len(splits.labels), device)
    tokenizer = load_tokenizer(factory.model_name, factory.config.vocab_size)
    m = cfg["model"]
    max_length = min(m["max_length"], getattr(factory.config, "max_position_embeddings", m["max_length"]))
    loss_fn = loss_function(cfg, splits)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume and world.is_main:  # a new run: an interrupted run's checkpoints here must not be resumed later
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    precision, ckpt = resolve_speed(cfg, factory, device, max_length, world)
    announce(f"{'two stages' if plan.two_stage else 'one stage'} ({plan.reason})", world)
    data, token_cache = encode_splits(cfg, splits, tokenizer, max_length, output_dir)
    long_text = long_text_info(cfg, max_length, data)
    if "splits" in long_text:
        announce("long_text chunk: " + "; ".join(
            f"{name} {s['cut_share']:.1%} of {s['documents']} documents cut, {s['mean_chunks']:.2f} windows each"
            for name, s in long_text["splits"].items()), world)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    common = {"cfg": cfg, "labels": splits.labels, "loss_fn": loss_fn,
              "pad_id": tokenizer.pad_token_id, "device": device, "output_dir": output_dir, "world": world, "resume": resume,
              "precision": precision, "report": report, "report_metric": report_metric}
    started = time.perf_counter()
    stages = run_stages(cfg, splits, factory, data, common)
    if not world.is_main:
        return None
    speed = {"precision": precision.as_dict(), "gradient_checkpointing": ckpt.as_dict(),
             "compile": {"asked": factory.compile, "stages": [st.compile_state for st in stages]},
             "lr_scaling": {"rule": cfg["train"]["lr_scaling"], "base_batch_size": cfg["train"]["base_batch_size"],
                            "batch_size": effective_batch(cfg, world)},
             "token_cache": token_cache, "stage_plan": plan.as_dict()}
    predictor = best_predictor(user_cfg, splits, output_dir, factory, tokenizer, max_length, stages, device, world,
                               round(time.perf_counter() - started, 2), speed, long_text)
    if not cfg["output"]["keep_checkpoints"]:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return predictor

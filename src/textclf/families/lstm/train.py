"""Training the BiLSTM with Lightning: the best epoch by ``train.metric`` (macro F0.5 by default) is kept.

:func:`fit` is the family's entry (contract v2: the core's :mod:`textclf.core.fit_flow` searches with
the hooks of :mod:`.search`, refits, evaluates and writes meta.json); :func:`train_model` trains
one model in named steps: data, module, trainer, run, restore best.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from textclf.core.atomic import atomic_write_json
from textclf.core.class_weights import class_alpha, label_indicator, pos_weight
from textclf.core.decision import decision_settings
from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import FILES_KEY, checkpoint_globals, load_checkpoint
from textclf.core.metrics import MULTILABEL_AVERAGES, beta_name, classification_metrics, is_minimized, multilabel_metrics
from textclf.core.precision import DeviceInfo, Precision, precision_setting, resolve_precision
from textclf.core.progress import PROGRESS_FILE, append_line
from textclf.core.torch_common import lightning_device_args, resolve_device, seed_everything, torch_threads
from textclf.core.training import Splits, fitted_meta
from textclf.families.lstm.model import (
    KIND,
    MODEL_FILE,
    EncodedTexts,
    LSTMClassifier,
    LSTMPredictor,
    build_model,
    build_vocab,
    make_encoder,
    make_loader,
    predict_batch,
    preprocess_config,
    save_model,
)
from textclf.families.lstm.text import VOCAB_FILE, Vocab

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
TB_DIR = "tensorboard"
VAL_PREFIX = "val/"
AVERAGES = ("macro", "micro", "weighted")
#: the selection metric on multi-label data when the config names none (``train.metric_multilabel``)
DEFAULT_MULTILABEL_METRIC = "micro_f1"

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # their info lines are noise here
    logging.getLogger(_name).setLevel(logging.WARNING)
for _message in (r".*does not have many workers.*", r".*Checkpoint directory .* exists and is not empty.*", r".*LeafSpec.*",
                 r".*The `srun` command is available.*"):
    warnings.filterwarnings("ignore", message=_message)


def class_weights(spec, labels: list[str], train_labels: Sequence[str]) -> torch.Tensor | None:
    """Loss weights per class from ``train.class_weights``: null, ``"balanced"``, a list, or ``{label: weight}``."""
    weights = class_alpha(spec, labels, train_labels, key="train.class_weights")
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def loss_function(cfg: dict, splits: Splits) -> nn.Module:
    """Cross-entropy weighted by ``train.class_weights``; multi-label: ``BCEWithLogitsLoss`` with ``train.pos_weight`` (null: none)."""
    t = cfg["train"]
    if splits.multilabel:
        weights = pos_weight(t.get("pos_weight"), splits.labels, splits.train.labels)
        return nn.BCEWithLogitsLoss(pos_weight=None if weights is None else torch.tensor(weights, dtype=torch.float32))
    return nn.CrossEntropyLoss(weight=class_weights(t["class_weights"], splits.labels, splits.train.labels))


def metric_betas(cfg: dict) -> tuple[float, ...]:
    """The F-betas validation reports: 1, 0.5 and ``train.beta``."""
    return tuple(dict.fromkeys((1.0, 0.5, float(cfg["train"]["beta"]))))


def metric_names(cfg: dict, multilabel: bool = False) -> list[str]:
    """The validation metrics an epoch reports (multi-label: also samples averages and Hamming loss)."""
    if multilabel:
        return ["accuracy", "loss", "hamming_loss"] + [f"{avg}_{beta_name(b)}" for b in metric_betas(cfg)
                                                       for avg in MULTILABEL_AVERAGES]
    return ["accuracy", "loss"] + [f"{avg}_{beta_name(b)}" for b in metric_betas(cfg) for avg in AVERAGES]


def selection_metric(cfg: dict, multilabel: bool = False, key: str = "train.metric") -> str:
    """The validation metric that picks the best epoch and drives early stopping (``train.metric``).

    On multi-label data :func:`textclf.families.lstm.search.prepare` has put ``train.metric_multilabel`` there.
    """
    metric = cfg["train"].get(key.split(".", 1)[1], DEFAULT_MULTILABEL_METRIC)
    valid = metric_names(cfg, multilabel)
    if metric not in valid:
        raise ConfigError(f"{key} {metric!r}: choose one of {', '.join(valid)} (set train.beta for another F-beta)")
    return metric


# --------------------------------------------------------------------------- Lightning module


class LSTMModule(L.LightningModule):
    """Trains an :class:`LSTMClassifier`; validation metrics come from :mod:`textclf.core.metrics`."""

    def __init__(self, model: LSTMClassifier, cfg: dict, labels: list[str], loss_fn: nn.Module, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.labels = labels
        self.multilabel = multilabel
        self.threshold = decision_settings({"config": cfg})[0]  # multi-label: the global decision threshold
        self.betas = metric_betas(cfg)
        self.metric = selection_metric(cfg, multilabel)
        self.every = max(1, cfg["train"]["log_every_n_steps"])
        self.loss_fn = loss_fn
        self.val_metrics: dict = {}
        self.train_time = 0.0
        self._train_loss, self._train_n, self._train_tokens, self._epoch_start = 0.0, 0, 0, 0.0
        self._preds: list[torch.Tensor] = []
        self._gold: list[torch.Tensor] = []
        self._val_loss = 0.0

    def training_step(self, batch, batch_idx):
        ids, lengths, y = batch
        loss = self.loss_fn(self.model(ids, lengths), y)
        n = y.size(0)
        value = float(loss.detach())
        if (self.global_step + 1) % self.every == 0:  # Lightning writes step logs only on these steps: skip the rest
            self.log("train/loss_step", value, on_step=True, on_epoch=False, batch_size=n)
            self.log("lr_step", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
        self._train_loss += value * n
        self._train_n += n
        self._train_tokens += int(lengths.sum())
        return loss

    def on_train_epoch_start(self):
        self._train_loss, self._train_n, self._train_tokens = 0.0, 0, 0
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self):
        self.log("train/loss_epoch", self._train_loss / max(1, self._train_n), on_epoch=True)
        self.log("lr_epoch", self.optimizers().param_groups[0]["lr"], on_epoch=True)

    def on_validation_epoch_start(self):
        if self._epoch_start:
            self.train_time = time.perf_counter() - self._epoch_start
        self._preds, self._gold, self._val_loss = [], [], 0.0

    def validation_step(self, batch, batch_idx):
        ids, lengths, y = batch
        logits = self.model(ids, lengths)
        if self.multilabel:  # summed over texts, averaged over labels (as the training loss), unweighted
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").mean(dim=1).sum()
            self._preds.append((torch.sigmoid(logits.float()) >= self.threshold).cpu())
        else:
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            self._preds.append(logits.argmax(dim=1).cpu())
        self._val_loss += float(loss)
        self._gold.append(y.cpu())

    def _epoch_metrics(self) -> dict:
        """The validation metrics of the epoch's predictions (:mod:`textclf.core.metrics`)."""
        preds, gold, labels = torch.cat(self._preds), torch.cat(self._gold), self.labels
        if self.multilabel:
            def sets(rows):
                return [tuple(labels[j] for j in row.nonzero().flatten().tolist()) for row in rows]

            return multilabel_metrics(sets(gold), sets(preds), labels, self.betas)
        return classification_metrics([labels[i] for i in gold.tolist()], [labels[i] for i in preds.tolist()], labels,
                                      self.betas)

    def on_validation_epoch_end(self):
        m = self._epoch_metrics()
        n = int(sum(len(g) for g in self._gold))
        out = {name: m[name] for name in metric_names(self.cfg, self.multilabel) if name != "loss"}
        out["loss"] = self._val_loss / max(1, n)
        self.val_metrics = out
        shown = ["loss", "accuracy", "macro_f1", "macro_f0.5", self.metric] + [f"macro_{beta_name(b)}" for b in self.betas]
        for name in dict.fromkeys(shown):
            self.log(VAL_PREFIX + name, out[name], on_epoch=True, prog_bar=name == self.metric)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["textclf_config"] = self.cfg  # lets --resume refuse a checkpoint of another architecture

    def configure_optimizers(self):
        tcfg = self.cfg["train"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
        if tcfg["scheduler"] == "plateau":
            mode = "min" if is_minimized(self.metric) else "max"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": VAL_PREFIX + self.metric, "interval": "epoch"}}
        if tcfg["scheduler"] not in ("none", "", None):
            raise ConfigError(f"train.scheduler {tcfg['scheduler']!r}: choose none or plateau")
        return opt


class History(L.Callback):
    """Appends one row per epoch to ``history`` (kept in checkpoints, so a resume keeps it) and logs it."""

    def __init__(self, path: Path | None, metric: str):
        self.path = path
        self.metric = metric
        self.history: list[dict] = []
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def on_fit_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        self.history = [h for h in self.history if h["epoch"] < epoch]
        n = max(1, pl_module._train_n)
        row = {"epoch": epoch, "step": trainer.global_step, "train_loss": pl_module._train_loss / n,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "train_time_s": round(pl_module.train_time, 4),
               "train_tokens": pl_module._train_tokens, "elapsed_s": round(time.perf_counter() - self.t0, 4),
               "cpu_s": round(time.process_time() - self.cpu0, 4)}
        row.update({f"valid_{k}": v for k, v in pl_module.val_metrics.items()})
        self.history.append(row)
        text = (f"epoch {epoch + 1}/{trainer.max_epochs}: valid {self.metric}={pl_module.val_metrics[self.metric]:.4f} "
                f"loss={pl_module.val_metrics['loss']:.4f} (train loss {row['train_loss']:.4f}, {row['train_time_s']:.1f}s)")
        log.info(text)
        if self.path is not None and trainer.is_global_zero:
            atomic_write_json(self.path, self.history)
            append_line(self.path.parent / PROGRESS_FILE, text)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict.get("history", []))


class Pruning(L.Callback):
    """Report the selection metric to the search every epoch (``context.report``); stop training when the pruner says so.

    The pruned trial stops cleanly at the end of the epoch (``trainer.should_stop``); the caller raises
    :attr:`pruned` (``optuna.TrialPruned``) after ``trainer.fit`` returns.
    """

    def __init__(self, context, metric: str):
        self.context = context
        self.metric = metric
        self.pruned_at: int | None = None
        self.pruned: Exception | None = None  # the optuna.TrialPruned that context.report raised

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.pruned is not None:
            return
        import optuna  # only a search trial has a Pruning callback

        try:
            self.context.report(pl_module.val_metrics[self.metric], trainer.current_epoch)
        except optuna.TrialPruned as exc:
            self.pruned_at, self.pruned = trainer.current_epoch, exc
            trainer.should_stop = True


# --------------------------------------------------------------------------- one run

RESUME_KEYS = ("seed", "text", "model")


def check_resumable(saved: dict | None, cfg: dict, path: Path) -> None:
    """Raise ModelError when a checkpoint was trained with other model/text settings than ``cfg``."""
    if not saved:
        return
    diffs = [f"{section}.{k}: {saved[section].get(k)!r} -> {v!r}" for section in RESUME_KEYS[1:]
             for k, v in cfg[section].items() if saved.get(section, {}).get(k) != v]
    if saved.get("seed") != cfg["seed"]:
        diffs.append(f"seed: {saved.get('seed')!r} -> {cfg['seed']!r}")
    if diffs:
        raise ModelError(f"{path}: cannot resume, the checkpoint was trained with other settings ({'; '.join(diffs)}); "
                         "rerun without --resume to start over")


@dataclass
class FitResult:
    """What one training run produced."""

    model: LSTMClassifier
    vocab: Vocab
    history: list[dict]
    best_epoch: int
    best_score: float
    resumed_from_epoch: int | None = None
    embedding_info: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)


def best_epoch(history: list[dict], metric: str) -> tuple[int, float]:
    """The best epoch of ``history`` by ``metric`` (the earliest on ties) and its score."""
    key = f"valid_{metric}"
    if not history:
        raise RuntimeError("training produced no validation epoch")
    sign = -1.0 if is_minimized(metric) else 1.0
    best = max(history, key=lambda h: (sign * h[key], -h["epoch"]))
    return best["epoch"], best[key]


def _resume_point(output_dir: Path, resume: bool) -> Path | None:
    """``last.ckpt`` when resuming and it exists; otherwise None, after clearing a previous run's checkpoints/logs."""
    last = output_dir / CKPT_DIR / LAST_CKPT
    if resume and last.exists():
        return last
    if resume:
        log.warning("--resume: no %s yet; starting a new run", last)
    for stale in (output_dir / CKPT_DIR, output_dir / TB_DIR):
        if stale.exists():
            shutil.rmtree(stale)
    return None


def _data(cfg: dict, splits: Splits, output_dir: Path, resumed: bool, pin: bool):
    """The vocabulary (reloaded on resume) and the train/valid loaders."""
    vocab_path = output_dir / VOCAB_FILE
    if resumed and vocab_path.exists():
        vocab = Vocab.load(vocab_path)
    else:
        vocab = build_vocab(cfg, splits.train.texts)
        vocab.save(vocab_path)
    encoder = make_encoder(cfg, vocab)
    train_data = EncodedTexts(encoder(splits.train.texts), targets(splits.train.labels, splits))
    valid_data = EncodedTexts(encoder(splits.valid.texts), targets(splits.valid.labels, splits))
    tcfg = cfg["train"]
    return vocab, (make_loader(train_data, tcfg["batch_size"], True, cfg["seed"], pin),
                   make_loader(valid_data, tcfg["eval_batch_size"], False, cfg["seed"], pin))


def targets(labels: Sequence, splits: Splits) -> list:
    """Training targets: label indices, or (multi-label) one 0/1 float32 row a text in ``splits.labels`` order."""
    if splits.multilabel:
        return list(label_indicator(labels, splits.labels))
    index = {label: i for i, label in enumerate(splits.labels)}
    return [index[y] for y in labels]


def training_precision(cfg: dict, device: torch.device) -> Precision:
    """``train.precision`` resolved for ``device`` (auto: bf16 on Ampere+ GPUs, fp16 + scaler on older ones, fp32 on CPU)."""
    return resolve_precision(precision_setting(cfg["train"]), DeviceInfo.of(device))


def _trainer(cfg: dict, output_dir: Path, device: torch.device, callbacks: list, checkpoints: bool,
             progress: bool, precision: Precision | None = None, multilabel: bool = False) -> L.Trainer:
    """A Lightning Trainer with early stopping, checkpoints (best + last), TensorBoard logs and ``precision``."""
    tcfg = cfg["train"]
    metric = selection_metric(cfg, multilabel)
    mode = "min" if is_minimized(metric) else "max"
    cbs = list(callbacks)
    if tcfg["patience"]:
        cbs.append(EarlyStopping(monitor=VAL_PREFIX + metric, mode=mode, patience=tcfg["patience"], check_on_train_epoch_end=False))
    if checkpoints:
        cbs.append(ModelCheckpoint(dirpath=output_dir / CKPT_DIR, filename="best", monitor=VAL_PREFIX + metric, mode=mode,
                                   save_top_k=1, save_last=True, auto_insert_metric_name=False, enable_version_counter=False))
    tb = TensorBoardLogger(str(output_dir), name=TB_DIR, version="", default_hp_metric=False)
    return L.Trainer(max_epochs=tcfg["epochs"], logger=tb, callbacks=cbs, enable_checkpointing=checkpoints,
                     enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                     log_every_n_steps=tcfg["log_every_n_steps"], gradient_clip_val=tcfg["grad_clip"] or None,
                     default_root_dir=str(output_dir), precision=(precision or training_precision(cfg, device)).lightning,
                     **lightning_device_args(device))


def _run(trainer: L.Trainer, module: LSTMModule, loaders, resume_path: Path | None, cfg: dict) -> int | None:
    """Fit (from ``resume_path`` when given) with ``train.num_threads`` for this run only; returns the resumed epoch."""
    resumed_from = None
    if resume_path is not None:
        saved = load_checkpoint(resume_path)  # weights_only: a planted pickle does not run
        check_resumable(saved.get("textclf_config"), cfg, resume_path)
        resumed_from = int(saved["epoch"]) + 1
        log.info("resuming %s at epoch %d", resume_path, resumed_from)
    # the cap is for this run only, not for the rest of the process
    with torch_threads(cfg["train"]["num_threads"]), torch.serialization.safe_globals(checkpoint_globals()):
        trainer.fit(module, *loaders, ckpt_path=str(resume_path) if resume_path else None, weights_only=True)
    return resumed_from


def _restore_best(model: LSTMClassifier, output_dir: Path, epoch: int, checkpoints: bool) -> None:
    """Load the best epoch's weights from ``best.ckpt`` (checked against the history) into ``model``."""
    best_path = output_dir / CKPT_DIR / BEST_CKPT
    if checkpoints and best_path.exists():
        state = load_checkpoint(best_path)
        if int(state["epoch"]) != epoch:
            raise RuntimeError(f"{best_path} holds epoch {state['epoch']}, history says the best is epoch {epoch}")
        model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")})
    model.cpu().eval()


def train_model(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False, checkpoints: bool = True,
                callbacks: Sequence = (), progress: bool | None = None) -> FitResult:
    """Train one model on ``cfg["device"]``; the best epoch by ``train.metric`` is kept, ``patience`` epochs without gain stop it.

    Writes TensorBoard logs to ``output_dir/tensorboard``, ``history.json``, ``progress.log`` and
    (with ``checkpoints``) ``checkpoints/last.ckpt`` + ``best.ckpt``. ``resume`` continues from
    ``last.ckpt`` (model, optimiser, scheduler, epoch, early-stopping state, history).
    """
    output_dir = Path(output_dir)
    metric = selection_metric(cfg, splits.multilabel)
    device = resolve_device(cfg["device"])
    resume_path = _resume_point(output_dir, resume)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    vocab, loaders = _data(cfg, splits, output_dir, resume_path is not None, device.type == "cuda")
    model, emb_info = build_model(cfg, vocab, len(splits.labels))
    module = LSTMModule(model, cfg, splits.labels, loss_function(cfg, splits), splits.multilabel)
    history = History(output_dir / HISTORY_FILE, metric)
    precision = training_precision(cfg, device)
    log.info("precision %s (%s)", precision.name, precision.reason)
    trainer = _trainer(cfg, output_dir, device, [history, *callbacks], checkpoints,
                       sys.stderr.isatty() if progress is None else progress, precision, splits.multilabel)
    resumed_from = _run(trainer, module, loaders, resume_path, cfg)
    epoch, score = best_epoch(history.history, metric)
    _restore_best(model, output_dir, epoch, checkpoints)
    return FitResult(model, vocab, history.history, epoch, score, resumed_from, emb_info, precision.as_dict())


def fit(cfg: dict, splits: Splits, context, callbacks: Sequence = ()) -> LSTMPredictor:
    """Train once and return the fitted :class:`LSTMPredictor` (family contract v2; the core searches, refits, evaluates).

    During a search trial (``context.trial``) the epochs are reported to the pruner through
    ``context.report`` (:class:`Pruning`): a pruned trial stops at the end
    of its epoch and ``optuna.TrialPruned`` is raised after training; trials keep no checkpoints and
    select epochs on the search metric. The final fit resumes from ``checkpoints/last.ckpt`` with
    ``context.resume`` and saves ``model.pt``; ``fit_info["files"]`` names what loading needs
    (``model.pt``, ``vocab.json``), not the checkpoints, TensorBoard logs, ``history.json`` or ``progress.log``.
    """
    output_dir = Path(context.output_dir)
    cfg = {**cfg, "seed": context.seed}
    pruning = None
    if context.trial is not None:
        cfg = {**cfg, "train": {**cfg["train"], "metric": cfg["search"].get("metric") or cfg["train"]["metric"]}}
        pruning = Pruning(context, selection_metric(cfg, splits.multilabel))
        callbacks = [*callbacks, pruning]
    start = time.perf_counter()
    result = train_model(cfg, splits, output_dir, context.resume and context.final, checkpoints=context.final,
                         callbacks=callbacks, progress=None if context.final else False)
    wall = time.perf_counter() - start
    epochs = len(result.history)
    train_times = [h["train_time_s"] for h in result.history]
    if context.trial is not None:
        trial = context.trial
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("valid_accuracy", result.history[-1]["valid_accuracy"])
        trial.set_user_attr("train_time_per_epoch_s", sum(train_times) / max(1, epochs))
        if pruning is not None and pruning.pruned is not None:
            raise pruning.pruned
    else:
        save_model(output_dir, result.model)
    meta_stub = {**fitted_meta(KIND, cfg, splits), "preprocess": preprocess_config(cfg)}
    predictor = LSTMPredictor(output_dir, meta_stub, result.model, make_encoder(cfg, result.vocab), cfg["device"],
                              predict_batch(cfg, resolve_device(cfg["device"])))
    tokens = sum(h["train_tokens"] for h in result.history)
    info = {"best_epoch": result.best_epoch, "best_valid_score": result.best_score,
            "selection_metric": selection_metric(cfg, splits.multilabel),
            "epochs_trained": epochs, "resumed_from_epoch": result.resumed_from_epoch,
            "train_time_per_epoch_s": round(sum(train_times) / max(1, epochs), 4),
            "train_tokens_per_s": round(tokens / max(1e-9, sum(train_times)), 1), "wall_time_s": round(wall, 2),
            "device": str(predictor.device), "vocab_size": len(result.vocab), "precision": result.precision,
            "predict_batch_size": predictor.batch_size, **result.embedding_info}
    predictor.fit_info = {"model_file": MODEL_FILE, "preprocess": preprocess_config(cfg), "params": result.model.arch,
                          "training": info, FILES_KEY: [MODEL_FILE, VOCAB_FILE]}
    return predictor


def train_once(cfg: dict, splits: Splits, output_dir: str | Path, resume: bool = False, callbacks: Sequence = ()) -> dict:
    """One run without search through the core's flow (fit, evaluate, meta.json) with extra Lightning ``callbacks``; returns meta."""
    import dataclasses
    import functools

    from textclf.core.fit_flow import train_family
    from textclf.core.meta import read_meta
    from textclf.families.lstm import FAMILY

    family = dataclasses.replace(FAMILY, fit=functools.partial(fit, callbacks=tuple(callbacks)))
    cfg = {**cfg, "search": {**cfg["search"], "n_trials": 0, "timeout": None}}
    return read_meta(train_family(family, cfg, splits, output_dir, resume))

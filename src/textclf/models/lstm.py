"""BiLSTM text classifier: the model, Lightning training selected on macro F0.5, an Optuna search, and the Predictor.

The model directory holds ``model.pt`` (architecture + best weights; loading needs only torch),
``vocab.json``, ``history.json`` (one row per epoch), ``checkpoints/{best,last}.ckpt``
(Lightning, for ``--resume``), ``tensorboard/`` event files and ``meta.json``.
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

import numpy as np
import optuna
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader

from textclf.atomic import atomic_replace_file, atomic_write_json
from textclf.config import merge
from textclf.errors import ConfigError, ModelError
from textclf.metrics import classification_metrics
from textclf.predictor import Predictor
from textclf.text_vocab import PAD_ID, VOCAB_FILE, TextEncoder, Tokenizer, Vocab
from textclf.torch_common import BucketBatchSampler, resolve_device, seed_everything
from textclf.training import Splits, finish_run
from textclf.tuning import best_trial, export_trials, make_storage, open_study, record_worker, run_search, save_plots, suggest

log = logging.getLogger(__name__)

KIND = "lstm"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
TB_DIR = "tensorboard"
PACKAGES = ("torch", "lightning", "tensorboard")
POOLINGS = ("max", "mean", "last")
VAL_PREFIX = "val/"


# --------------------------------------------------------------------------- model


class LSTMClassifier(nn.Module):
    """Embedding -> (Bi)LSTM over packed sequences -> max/mean/last pooling -> dropout -> linear.

    ``forward(ids, lengths)`` never reads padding: the LSTM runs on a packed batch and
    pooling masks every position past a text's length, so a text's logits do not depend
    on the other texts of its batch.
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 100, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.0, pooling: str = "max",
                 freeze_embeddings: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.arch = {"vocab_size": vocab_size, "num_classes": num_classes, "embedding_dim": embedding_dim,
                     "hidden_size": hidden_size, "num_layers": num_layers, "bidirectional": bidirectional,
                     "dropout": dropout, "pooling": pooling, "freeze_embeddings": freeze_embeddings}
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.embedding.weight.requires_grad = not freeze_embeddings
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def load_embeddings(self, matrix: np.ndarray) -> None:
        """Copy pretrained vectors (shape ``(vocab_size, embedding_dim)``) into the embedding table."""
        with torch.no_grad():
            self.embedding.weight.copy_(torch.from_numpy(matrix))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for padded ``ids`` ``(batch, time)`` with true ``lengths`` (>= 1)."""
        emb = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)
        if self.pooling == "last":
            feats = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        else:
            padded, _ = pad_packed_sequence(out, batch_first=True)
            steps = torch.arange(padded.size(1), device=padded.device)
            mask = (steps[None, :] < lengths.to(padded.device)[:, None]).unsqueeze(-1)
            if self.pooling == "max":
                feats = padded.masked_fill(~mask, float("-inf")).max(dim=1).values
            else:
                feats = padded.masked_fill(~mask, 0.0).sum(dim=1) / lengths.to(padded.device)[:, None].to(padded.dtype)
        return self.head(self.dropout(feats))


def build_model(cfg: dict, vocab: Vocab, num_classes: int) -> tuple[LSTMClassifier, dict]:
    """The model a config describes, with pretrained vectors loaded when ``model.pretrained_vectors`` names a file."""
    m = cfg["model"]
    info: dict = {}
    matrix = None
    dim = m["embedding_dim"]
    if m["pretrained_vectors"]:
        from textclf.embeddings import embedding_matrix

        matrix, coverage = embedding_matrix(m["pretrained_vectors"], vocab, seed=cfg["seed"])
        if matrix.shape[1] != dim:
            log.info("model.embedding_dim %d replaced by the vectors' dimension %d", dim, matrix.shape[1])
            dim = matrix.shape[1]
        info = {"pretrained_vectors": m["pretrained_vectors"], "coverage": round(coverage, 4)}
    elif m["freeze_embeddings"]:
        raise ConfigError("model.freeze_embeddings needs model.pretrained_vectors (freezing random vectors is never useful)")
    model = LSTMClassifier(len(vocab), num_classes, dim, m["hidden_size"], m["num_layers"], m["bidirectional"],
                           m["dropout"], m["pooling"], m["freeze_embeddings"])
    if matrix is not None:
        model.load_embeddings(matrix)
    return model, info


# --------------------------------------------------------------------------- data


def collate(batch: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad id lists to the longest in the batch: ``(ids, lengths, labels)``."""
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.long)
    ids = torch.full((len(batch), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, (row, _) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    labels = torch.tensor([y for _, y in batch], dtype=torch.long)
    return ids, lengths, labels


class EncodedTexts(torch.utils.data.Dataset):
    """Encoded texts and their label indices (-1 when unlabelled)."""

    def __init__(self, ids: list[list[int]], labels: list[int] | None = None):
        self.ids = ids
        self.labels = labels if labels is not None else [-1] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def make_loader(data: EncodedTexts, batch_size: int, shuffle: bool, seed: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over length buckets (seeded; ``set_epoch`` reshuffles)."""
    sampler = BucketBatchSampler(data.lengths(), batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=0, pin_memory=pin_memory)


def make_encoder(cfg: dict, vocab: Vocab) -> TextEncoder:
    """Tokenizer + vocabulary + max length from a config."""
    t = cfg["text"]
    return TextEncoder(Tokenizer(t["lowercase"], t["pattern"]), vocab, cfg["train"]["max_length"] or None)


def build_vocab(cfg: dict, texts: Sequence[str]) -> Vocab:
    """The vocabulary of the training texts (``text.min_count``, ``text.max_size``)."""
    t = cfg["text"]
    tok = Tokenizer(t["lowercase"], t["pattern"])
    return Vocab.build((tok(x) for x in texts), t["min_count"], t["max_size"] or None)


def class_weights(spec, labels: list[str], train_labels: Sequence[str]) -> torch.Tensor | None:
    """Loss weights per class from ``train.class_weights``: null, ``"balanced"``, a list, or ``{label: weight}``."""
    if spec in (None, "", "none", False):
        return None
    if spec == "balanced":
        counts = np.array([sum(1 for y in train_labels if y == label) for label in labels], dtype=np.float64)
        return torch.tensor(len(train_labels) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)
    if isinstance(spec, list):
        if len(spec) != len(labels):
            raise ConfigError(f"train.class_weights has {len(spec)} weights for {len(labels)} classes ({', '.join(labels)})")
        return torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if isinstance(spec, dict):
        unknown = set(spec) - set(labels)
        if unknown:
            raise ConfigError(f"train.class_weights: unknown label(s) {', '.join(sorted(unknown))}; labels: {', '.join(labels)}")
        return torch.tensor([float(spec.get(label, 1.0)) for label in labels], dtype=torch.float32)
    raise ConfigError(f"train.class_weights {spec!r}: use null, \"balanced\", a list of weights or {{label: weight}}")


def metric_betas(cfg: dict) -> tuple[float, ...]:
    """The F-betas validation reports: 1, 0.5 and ``train.beta``."""
    return tuple(dict.fromkeys((1.0, 0.5, float(cfg["train"]["beta"]))))


def selection_metric(cfg: dict) -> str:
    """The validation metric that picks the best epoch and drives early stopping (``train.metric``)."""
    metric = cfg["train"]["metric"]
    valid = ["accuracy", "loss"] + [f"{avg}_f{b:g}" for b in metric_betas(cfg) for avg in ("macro", "micro", "weighted")]
    if metric not in valid:
        raise ConfigError(f"train.metric {metric!r}: choose one of {', '.join(valid)} (set train.beta for another F-beta)")
    return metric


# --------------------------------------------------------------------------- Lightning


def _lightning():
    """Import Lightning quietly (its info lines go to the log at DEBUG level)."""
    import lightning as L  # noqa: N812

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available.*")
    return L


def make_module(model: LSTMClassifier, cfg: dict, labels: list[str], weights: torch.Tensor | None):
    """A LightningModule that trains ``model`` and computes validation metrics with :mod:`textclf.metrics`."""
    L = _lightning()  # noqa: N806
    tcfg = cfg["train"]
    betas = metric_betas(cfg)
    metric = selection_metric(cfg)
    every = max(1, tcfg["log_every_n_steps"])

    class LSTMModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.loss_fn = nn.CrossEntropyLoss(weight=weights)
            self.val_metrics: dict = {}
            self._train_loss = 0.0
            self._train_n = 0
            self._train_tokens = 0
            self._epoch_start = 0.0
            self.train_time = 0.0
            self._preds: list[torch.Tensor] = []
            self._gold: list[torch.Tensor] = []
            self._val_loss = 0.0

        def training_step(self, batch, batch_idx):
            ids, lengths, y = batch
            loss = self.loss_fn(self.model(ids, lengths), y)
            n = y.size(0)
            value = float(loss.detach())
            if (self.global_step + 1) % every == 0:  # Lightning writes step logs only on these steps: skip the rest
                self.log("train/loss_step", value, on_step=True, on_epoch=False, batch_size=n)
                self.log("lr_step", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
            self._train_loss += value * n
            self._train_n += n
            self._train_tokens += int(lengths.sum())
            return loss

        def on_train_epoch_end(self):
            self.log("train/loss_epoch", self._train_loss / max(1, self._train_n), on_epoch=True)
            self.log("lr_epoch", self.optimizers().param_groups[0]["lr"], on_epoch=True)

        def on_train_epoch_start(self):
            self._train_loss, self._train_n, self._train_tokens = 0.0, 0, 0
            self._epoch_start = time.perf_counter()

        def on_validation_epoch_start(self):
            if self._epoch_start:
                self.train_time = time.perf_counter() - self._epoch_start
            self._preds, self._gold, self._val_loss = [], [], 0.0

        def validation_step(self, batch, batch_idx):
            ids, lengths, y = batch
            logits = self.model(ids, lengths)
            self._val_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            self._preds.append(logits.argmax(dim=1).cpu())
            self._gold.append(y.cpu())

        def on_validation_epoch_end(self):
            preds = torch.cat(self._preds).tolist()
            gold = torch.cat(self._gold).tolist()
            m = classification_metrics([labels[i] for i in gold], [labels[i] for i in preds], labels, betas)
            out = {"loss": self._val_loss / max(1, len(gold)), "accuracy": m["accuracy"]}
            for b in betas:
                for avg in ("macro", "micro", "weighted"):
                    out[f"{avg}_f{b:g}"] = m[f"{avg}_f{b:g}"]
            self.val_metrics = out
            shown = ["loss", "accuracy", "macro_f1", "macro_f0.5", metric] + [f"macro_f{b:g}" for b in betas]
            for name in dict.fromkeys(shown):
                self.log(VAL_PREFIX + name, out[name], on_epoch=True, prog_bar=name == metric)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["textclf_config"] = cfg  # lets --resume refuse a checkpoint of another architecture

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
            if tcfg["scheduler"] == "plateau":
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min" if metric == "loss" else "max", factor=0.5,
                                                                   patience=1)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": VAL_PREFIX + metric, "interval": "epoch"}}
            if tcfg["scheduler"] not in ("none", "", None):
                raise ConfigError(f"train.scheduler {tcfg['scheduler']!r}: choose none or plateau")
            return opt

    return LSTMModule()


def _history_callback(path: Path | None, metric: str):
    """A callback that appends one row per epoch to ``history`` (saved in checkpoints, so resume keeps it)."""
    L = _lightning()  # noqa: N806

    class History(L.Callback):
        def __init__(self):
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
            log.info("epoch %d: valid %s=%.4f loss=%.4f (train loss %.4f, %.1fs)", epoch, metric,
                     pl_module.val_metrics[metric], pl_module.val_metrics["loss"], row["train_loss"], row["train_time_s"])
            if path is not None and trainer.is_global_zero:
                atomic_write_json(path, self.history)

        def state_dict(self):
            return {"history": self.history}

        def load_state_dict(self, state_dict):
            self.history = list(state_dict.get("history", []))

    return History()


def _pruning_callback(trial: optuna.Trial, metric: str):
    """Report the selection metric to an Optuna trial every epoch; stop training when the pruner says so."""
    L = _lightning()  # noqa: N806

    class Pruning(L.Callback):
        def __init__(self):
            self.pruned_at: int | None = None

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            value = pl_module.val_metrics[metric]
            trial.report(value, trainer.current_epoch)
            if trial.should_prune():
                self.pruned_at = trainer.current_epoch
                trainer.should_stop = True

    return Pruning()


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
    callbacks: list = field(default_factory=list)


def _best(history: list[dict], metric: str) -> tuple[int, float]:
    key = f"valid_{metric}"
    if not history:
        raise RuntimeError("training produced no validation epoch")
    sign = -1.0 if metric == "loss" else 1.0
    best = max(history, key=lambda h: (sign * h[key], -h["epoch"]))
    return best["epoch"], best[key]


def fit(cfg: dict, splits: Splits, output_dir: str | Path, device: str | None = None, resume: bool = False,
        checkpoints: bool = True, callbacks: Sequence = (), progress: bool | None = None) -> FitResult:
    """Train one model with Lightning; the best epoch by ``train.metric`` is kept, ``patience`` epochs without gain stop it.

    Writes TensorBoard logs to ``output_dir/tensorboard``, ``history.json`` and (with
    ``checkpoints``) ``checkpoints/last.ckpt`` + ``best.ckpt``. ``resume`` continues from
    ``last.ckpt`` (model, optimiser, scheduler, epoch, early-stopping state, history).
    """
    L = _lightning()  # noqa: N806
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from textclf.torch_common import lightning_device_args

    output_dir = Path(output_dir)
    tcfg = cfg["train"]
    metric = selection_metric(cfg)
    torch_device = resolve_device(device)
    ckpt_dir = output_dir / CKPT_DIR
    last = ckpt_dir / LAST_CKPT
    resume_path = None
    if resume:
        if last.exists():
            resume_path = last
        else:
            log.warning("--resume: no %s yet; starting a new run", last)
    if resume_path is None:
        for stale in (ckpt_dir, output_dir / TB_DIR):
            if stale.exists():
                shutil.rmtree(stale)
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])

    vocab_path = output_dir / VOCAB_FILE
    if resume_path is not None and vocab_path.exists():
        vocab = Vocab.load(vocab_path)
    else:
        vocab = build_vocab(cfg, splits.train.texts)
        vocab.save(vocab_path)
    encoder = make_encoder(cfg, vocab)
    index = {label: i for i, label in enumerate(splits.labels)}
    train_data = EncodedTexts(encoder(splits.train.texts), [index[y] for y in splits.train.labels])
    valid_data = EncodedTexts(encoder(splits.valid.texts), [index[y] for y in splits.valid.labels])
    pin = torch_device.type == "cuda"
    train_loader = make_loader(train_data, tcfg["batch_size"], True, cfg["seed"], pin)
    valid_loader = make_loader(valid_data, tcfg["eval_batch_size"], False, cfg["seed"], pin)

    model, emb_info = build_model(cfg, vocab, len(splits.labels))
    module = make_module(model, cfg, splits.labels, class_weights(tcfg["class_weights"], splits.labels, splits.train.labels))
    mode = "min" if metric == "loss" else "max"
    history_cb = _history_callback(output_dir / HISTORY_FILE, metric)
    cbs = [history_cb, *callbacks]
    if tcfg["patience"]:
        cbs.append(EarlyStopping(monitor=VAL_PREFIX + metric, mode=mode, patience=tcfg["patience"], check_on_train_epoch_end=False))
    ckpt_cb = None
    if checkpoints:
        ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=VAL_PREFIX + metric, mode=mode, save_top_k=1,
                                  save_last=True, auto_insert_metric_name=False, enable_version_counter=False)
        cbs.append(ckpt_cb)
    if progress is None:
        progress = sys.stderr.isatty()
    tb = TensorBoardLogger(str(output_dir), name=TB_DIR, version="", default_hp_metric=False)
    trainer = L.Trainer(max_epochs=tcfg["epochs"], logger=tb, callbacks=cbs, enable_checkpointing=checkpoints,
                        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=tcfg["log_every_n_steps"], gradient_clip_val=tcfg["grad_clip"] or None,
                        default_root_dir=str(output_dir), **lightning_device_args(torch_device))
    resumed_from = None
    if resume_path is not None:
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        check_resumable(saved.get("textclf_config"), cfg, resume_path)
        resumed_from = int(saved["epoch"]) + 1
        log.info("resuming %s at epoch %d", resume_path, resumed_from)
    threads = torch.get_num_threads()
    if tcfg["num_threads"]:
        torch.set_num_threads(tcfg["num_threads"])
    try:
        trainer.fit(module, train_loader, valid_loader, ckpt_path=str(resume_path) if resume_path else None)
    finally:
        torch.set_num_threads(threads)  # the cap is for this run only, not for the rest of the process

    history = history_cb.history
    best_epoch, best_score = _best(history, metric)
    best_path = ckpt_dir / BEST_CKPT
    if checkpoints and best_path.exists():
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        if int(state["epoch"]) != best_epoch:
            raise RuntimeError(f"{best_path} holds epoch {state['epoch']}, history says the best is epoch {best_epoch}")
        model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")})
    model.cpu().eval()
    return FitResult(model, vocab, history, best_epoch, best_score, resumed_from, emb_info, cbs)


# --------------------------------------------------------------------------- predictor


class LSTMPredictor(Predictor):
    """A trained BiLSTM behind the shared Predictor interface (needs only torch, not Lightning)."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, model: LSTMClassifier, encoder: TextEncoder,
                 device: str | None = None, batch_size: int = 256):
        super().__init__(model_dir, meta)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.encoder = encoder
        self.batch_size = batch_size

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> LSTMPredictor:
        """Load ``model.pt`` and ``vocab.json`` from a model directory (device: ``$TEXTCLF_DEVICE`` or auto)."""
        from textclf.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file and Path(model_file).suffix == ".pt" else Path(model_dir) / MODEL_FILE
        if not path.exists():
            raise ModelError(f"{path}: LSTM model file not found")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = LSTMClassifier(**saved["arch"])
        model.load_state_dict(saved["state_dict"])
        pre = meta["preprocess"]
        encoder = TextEncoder(Tokenizer(pre["lowercase"], pre["pattern"]), Vocab.load(Path(model_dir) / VOCAB_FILE),
                              pre["max_length"] or None)
        return cls(model_dir, meta, model, encoder, device, meta.get("config", {}).get("train", {}).get("eval_batch_size", 256))

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities; texts are batched by length, results come back in input order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if len(texts) == 0:
            return out
        encoded = self.encoder(texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, lengths, _ = collate([(encoded[i], -1) for i in idx])
            logits = self.model(ids.to(self.device), lengths)
            out[idx] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return out


def save_model(output_dir: str | Path, result: FitResult) -> None:
    """Write ``model.pt`` (architecture + weights, loadable with ``weights_only=True``) atomically."""
    payload = {"arch": result.model.arch, "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()}}
    atomic_replace_file(lambda p: torch.save(payload, p), Path(output_dir) / MODEL_FILE)


def preprocess_config(cfg: dict) -> dict:
    """What prediction needs to encode text exactly like training did."""
    return {"lowercase": cfg["text"]["lowercase"], "pattern": cfg["text"]["pattern"], "max_length": cfg["train"]["max_length"]}


def train(cfg: dict, splits: Splits, output_dir: str | Path, device: str | None = None, resume: bool = False,
          echo: bool = True, callbacks: Sequence = (), extra: dict | None = None) -> dict:
    """Train, keep the best epoch, write the model directory (``model.pt``, vocab, history, meta.json); return meta."""
    output_dir = Path(output_dir)
    start = time.perf_counter()
    result = fit(cfg, splits, output_dir, device, resume, callbacks=callbacks)
    wall = time.perf_counter() - start
    save_model(output_dir, result)
    meta_stub = {"labels": splits.labels, "kind": KIND, "preprocess": preprocess_config(cfg), "config": cfg}
    predictor = LSTMPredictor(output_dir, meta_stub, result.model, make_encoder(cfg, result.vocab), device)
    epochs = len(result.history)
    train_times = [h["train_time_s"] for h in result.history]
    tokens = sum(h["train_tokens"] for h in result.history)
    info = {"best_epoch": result.best_epoch, "best_valid_score": result.best_score, "selection_metric": selection_metric(cfg),
            "epochs_trained": epochs, "resumed_from_epoch": result.resumed_from_epoch,
            "train_time_per_epoch_s": round(sum(train_times) / max(1, epochs), 4),
            "train_tokens_per_s": round(tokens / max(1e-9, sum(train_times)), 1), "wall_time_s": round(wall, 2),
            "device": str(predictor.device), "vocab_size": len(result.vocab), **result.embedding_info}
    return finish_run(output_dir, predictor, splits, cfg, PACKAGES, echo=echo, model_file=MODEL_FILE,
                      preprocess=preprocess_config(cfg), params=result.model.arch, training=info, **(extra or {}))


# --------------------------------------------------------------------------- search


SEARCH_SECTIONS = ("model", "train", "text")


def param_section(cfg: dict, name: str) -> str:
    """The config section (model, train or text) that holds a search-space name such as ``hidden_size``."""
    for section in SEARCH_SECTIONS:
        if name in cfg[section]:
            return section
    keys = [k for section in SEARCH_SECTIONS for k in cfg[section]]
    raise ConfigError(f"search.space {name!r} is not a model/train/text setting; valid names: {', '.join(keys)}")


def apply_params(cfg: dict, params: dict) -> dict:
    """A config with sampled values (search-space names like ``lr``, ``hidden_size``) put in their sections."""
    update: dict = {}
    for name, value in params.items():
        update.setdefault(param_section(cfg, name), {})[name] = value
    return merge(cfg, update, source="search.space")


def make_pruner(s: dict, max_epochs: int) -> optuna.pruners.BasePruner:
    """``search.pruner``: ``median`` (MedianPruner), ``hyperband`` (HyperbandPruner) or ``none``."""
    kind = (s["pruner"] or "none").lower()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s["pruner_startup_trials"], n_warmup_steps=s["pruner_warmup_epochs"])
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s["pruner_warmup_epochs"]), max_resource=max_epochs)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"search.pruner {s['pruner']!r}: choose median, hyperband or none")


def search(cfg: dict, splits: Splits, output_dir: str | Path, device: str | None = None) -> optuna.Study:
    """Run (or resume) the study; every trial trains into ``trials/trial_NNNN`` and reports each epoch to the pruner."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    s = cfg["search"]
    metric = s["metric"] or cfg["train"]["metric"]
    cfg = merge(cfg, {"train": {"metric": metric}})
    for name in s["space"]:
        param_section(cfg, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(s["storage"], output_dir)
    study = open_study(s["study_name"], storage, seed=cfg["seed"], direction="minimize" if metric == "loss" else "maximize",
                       pruner=make_pruner(s, cfg["train"]["epochs"]))

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        tcfg = apply_params(cfg, suggest(trial, s["space"]))
        tcfg = merge(tcfg, {"seed": cfg["seed"] + trial.number})
        pruning = _pruning_callback(trial, metric)
        result = fit(tcfg, splits, output_dir / "trials" / f"trial_{trial.number:04d}", device, checkpoints=False,
                     callbacks=[pruning], progress=False)
        last = result.history[-1]
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("valid_accuracy", last["valid_accuracy"])
        trial.set_user_attr("train_time_per_epoch_s", sum(h["train_time_s"] for h in result.history) / len(result.history))
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        return result.best_score

    run_search(study, objective, s["n_trials"], s["timeout"])
    return study


def tune(cfg: dict, splits: Splits, output_dir: str | Path, device: str | None = None, refit: bool = True,
         echo: bool = True) -> dict | None:
    """Search, export ``trials.csv`` and plots, then refit the best params into ``output_dir``; return meta (None without refit)."""
    output_dir = Path(output_dir)
    study = search(cfg, splits, output_dir, device)
    export_trials(study, output_dir)
    save_plots(study, output_dir)
    if not refit:
        return None
    best = best_trial(study)
    best_cfg = apply_params(cfg, best.params)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    s = cfg["search"]
    extra = {"search": {"study_name": study.study_name, "storage": s["storage"] or str(output_dir / "study.journal"),
                        "n_trials": len(study.trials), "states": states, "best_trial": best.number, "best_value": best.value,
                        "metric": s["metric"] or cfg["train"]["metric"], "best_params": best.params}}
    return train(best_cfg, splits, output_dir, device, echo=echo, extra=extra)


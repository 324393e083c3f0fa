"""The BiLSTM model, its data plumbing and its Predictor (loading needs only torch, not Lightning).

The model directory holds ``model.pt`` (architecture + best weights), ``vocab.json``,
``history.json`` (one row per epoch), ``checkpoints/{best,last}.ckpt`` (Lightning, for
``--resume``), ``tensorboard/`` event files and ``meta.json``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader

from textclf.core.atomic import atomic_replace_file
from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import load_torch_weights
from textclf.core.model_checks import check_label_count
from textclf.core.precision import DeviceInfo, predict_batch_size
from textclf.core.predictor import Predictor
from textclf.core.torch_common import bucket_loader, pad_ids, predict_by_length, resolve_device, torch_threads
from textclf.families.lstm.text import PAD_ID, VOCAB_FILE, TextEncoder, Tokenizer, Vocab

log = logging.getLogger(__name__)

KIND = "lstm"
MODEL_FILE = "model.pt"
POOLINGS = ("max", "mean", "last")
#: ``predict.num_threads`` when the config has none (models trained before it existed too): one thread, because a
#: BiLSTM's many small operations gain about 10 % from a second thread on an idle CPU and run 100x slower beside
#: another busy process (benchmarks/README.md, BiLSTM)
DEFAULT_PREDICT_THREADS = 1

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
        from textclf.families.lstm.vectors import embedding_matrix

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


def collate(batch: Sequence[tuple[list[int], object]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad id lists to the longest in the batch: ``(ids, lengths, labels)``.

    Labels are class indices (a long vector) or, multi-label, 0/1 rows (a float ``(batch, L)`` matrix).
    """
    ids, lengths = pad_ids([row for row, _ in batch], PAD_ID)
    targets = [y for _, y in batch]
    if targets and isinstance(targets[0], np.ndarray):
        return ids, lengths, torch.from_numpy(np.stack(targets)).float()
    return ids, lengths, torch.tensor(targets, dtype=torch.long)


class EncodedTexts(torch.utils.data.Dataset):
    """Encoded texts and their label indices (-1 when unlabelled), or multi-label 0/1 rows (numpy float32)."""

    def __init__(self, ids: list[list[int]], labels: Sequence | None = None):
        self.ids = ids
        self.labels = labels if labels is not None else [-1] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], object]:
        return self.ids[i], self.labels[i]

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def make_loader(data: EncodedTexts, batch_size: int, shuffle: bool, seed: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over length buckets (seeded; ``set_epoch`` reshuffles)."""
    return bucket_loader(data, data.lengths(), batch_size, collate, shuffle, seed, pin_memory=pin_memory)


def make_encoder(cfg: dict, vocab: Vocab) -> TextEncoder:
    """Tokenizer + vocabulary + max length from a config."""
    t = cfg["text"]
    return TextEncoder(Tokenizer(t["lowercase"], t["pattern"]), vocab, cfg["train"]["max_length"] or None)


def build_vocab(cfg: dict, texts: Sequence[str]) -> Vocab:
    """The vocabulary of the training texts (``text.min_count``, ``text.max_size``)."""
    t = cfg["text"]
    tok = Tokenizer(t["lowercase"], t["pattern"])
    return Vocab.build((tok(x) for x in texts), t["min_count"], t["max_size"] or None)


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
        self.threads = predict_threads(meta.get("config") or {}) if self.device.type == "cpu" else None

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> LSTMPredictor:
        """Load ``model.pt`` and ``vocab.json`` from a model directory (device: ``$TEXTCLF_DEVICE`` or auto)."""
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file and Path(model_file).suffix == ".pt" else Path(model_dir) / MODEL_FILE
        if not path.exists():
            raise ModelError(f"{path}: LSTM model file not found")
        saved = load_torch_weights(path)
        check_label_count(path, saved["arch"]["num_classes"], meta["labels"])
        model = LSTMClassifier(**saved["arch"])
        model.load_state_dict(saved["state_dict"])
        pre = meta["preprocess"]
        encoder = TextEncoder(Tokenizer(pre["lowercase"], pre["pattern"]), Vocab.load(Path(model_dir) / VOCAB_FILE),
                              pre["max_length"] or None)
        resolved = resolve_device(device)
        return cls(model_dir, meta, model, encoder, str(resolved), predict_batch(meta.get("config", {}), resolved))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities (multi-label: a sigmoid per label); texts are batched by length, results in input order."""
        encoded = self.encoder(texts)
        activation = torch.sigmoid if self.multilabel else functools.partial(torch.softmax, dim=1)

        def forward(idx: list[int]) -> torch.Tensor:
            ids, lengths = pad_ids([encoded[i] for i in idx], PAD_ID)
            return activation(self.model(ids.to(self.device), lengths).float())

        with torch_threads(self.threads):
            return predict_by_length(encoded, self.batch_size, len(self.labels), forward, dtype=np.float64)


def predict_threads(cfg: dict) -> int | None:
    """Torch threads for CPU prediction: ``$TEXTCLF_THREADS`` (``serve --threads``) when set, else
    ``predict.num_threads`` (default 1; 0: torch's own default, one a core)."""
    from textclf.core.onnx_runtime import threads_from_env

    return threads_from_env() or int((cfg.get("predict") or {}).get("num_threads", DEFAULT_PREDICT_THREADS)) or None


def predict_batch(cfg: dict, device: torch.device) -> int:
    """Prediction batch size on ``device``: ``predict.batch_size_cpu``/``batch_size_gpu`` (older models: ``train.eval_batch_size``)."""
    legacy = (cfg.get("train") or {}).get("eval_batch_size", 256)
    p = cfg.get("predict") or {}
    return predict_batch_size(p.get("batch_size_cpu", legacy), p.get("batch_size_gpu", legacy), DeviceInfo(device.type))


def save_model(output_dir: str | Path, model: LSTMClassifier) -> None:
    """Write ``model.pt`` (architecture + weights, loadable with ``weights_only=True``) atomically."""
    payload = {"arch": model.arch, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_replace_file(lambda p: torch.save(payload, p), Path(output_dir) / MODEL_FILE)


def preprocess_config(cfg: dict) -> dict:
    """What prediction needs to encode text exactly like training did."""
    return {"lowercase": cfg["text"]["lowercase"], "pattern": cfg["text"]["pattern"], "max_length": cfg["train"]["max_length"]}

"""The SetFit model directory: the tuned encoder in ``encoder/``, the head, and the Predictor that loads them.

Layout::

    MODEL_DIR/encoder/      SentenceTransformer.save of the contrastively tuned encoder
    MODEL_DIR/head.pt       torch head state dict (head.type torch), or head.joblib (logreg)
    MODEL_DIR/meta.json     kind "setfit", labels, the encoder and head blocks, metrics

``encoder/`` is written to a temp directory beside it and renamed into place, so a reader never
sees a half-written encoder; meta.json, written last by :func:`textclf.core.training.finish_run`,
marks the directory complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textclf.core.errors import ModelError
from textclf.core.model_checks import check_label_count
from textclf.core.predictor import Predictor
from textclf.families.common.chunking import ChunkSettings, Windows, encode_windows, encoded_windows
from textclf.families.setfit.head import LogregHead, TorchHead, load_head

log = logging.getLogger(__name__)

KIND = "setfit"
ENCODER_DIR = "encoder"


@contextlib.contextmanager
def _quiet_hf():
    """No Hugging Face progress bars ("Loading weights", "Writing model shards") inside the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_sentence_model(path: str | Path, device: str | None = None, max_length: int | None = None) -> Any:
    """A SentenceTransformer from a local directory on ``device`` (auto: ``$TEXTCLF_DEVICE`` or the best there is)."""
    from sentence_transformers import SentenceTransformer

    from textclf.core.torch_common import resolve_device

    device = resolve_device(device)
    try:
        with _quiet_hf():
            model = SentenceTransformer(str(path), device=str(device))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load sentence encoder from {path}: {str(exc).splitlines()[0]}") from None
    if max_length:
        model.max_seq_length = int(max_length)
    return model


def save_encoder(model: Any, model_dir: str | Path) -> Path:
    """``model.save`` into ``model_dir/encoder`` through a temp directory and a rename (an old one is replaced)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / ENCODER_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{ENCODER_DIR}.", suffix=".tmp", dir=model_dir))
    old = None
    try:
        with _quiet_hf():
            model.save(str(tmp), create_model_card=False)
        if target.exists():
            old = target.with_name(f".{ENCODER_DIR}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _plain_permissions(target)
    return target


def _plain_permissions(root: Path) -> None:
    """The permissions a plain ``mkdir``/``open`` would give (mkdtemp and some savers make 0700/0600)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def embed(model: Any, texts: Sequence[str], batch_size: int = 64, chunking: ChunkSettings | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts``; with ``long_text: chunk`` each text's pooled windows."""
    return embed_long(model, texts, batch_size, chunking)[0]


def embed_long(model: Any, texts: Sequence[str], batch_size: int = 64,
               chunking: ChunkSettings | None = None) -> tuple[np.ndarray, dict | None]:
    """``(embeddings, chunk statistics)``: truncated texts (statistics None), or with ``long_text: chunk`` every
    window of every text encoded in one call and pooled per text, normalised again (:mod:`..common.chunking`)."""
    if chunking is None or not chunking.chunk:
        return _embed_texts(model, texts, batch_size), None
    return encode_windows(texts, model.tokenizer, int(model.max_seq_length), chunking,
                          lambda windows: _embed_texts(model, windows, batch_size), normalize=True)


def embed_windows(model: Any, texts: Sequence[str], batch_size: int, chunking: ChunkSettings) -> tuple[Windows, np.ndarray]:
    """``(windows, their L2-normalised vectors)`` of ``texts`` cut by ``chunking``, every window encoded in one call;
    pool them with :func:`..common.chunking.pool_windows` (``chunk_pooling: auto`` pools them every way)."""
    return encoded_windows(texts, model.tokenizer, int(model.max_seq_length), chunking,
                           lambda windows: _embed_texts(model, windows, batch_size))


def _embed_texts(model: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (eval mode; sentence-transformers sorts batches by length)."""
    texts = list(texts)
    if not texts:
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, getter() or 0), dtype=np.float32)
    model.eval()
    out = model.encode(texts, batch_size=int(batch_size), show_progress_bar=False, convert_to_numpy=True,
                       normalize_embeddings=True)
    return np.asarray(out, dtype=np.float32)


class SetFitPredictor(Predictor):
    """A contrastively tuned sentence encoder + head behind the shared Predictor interface."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, encoder: Any, head: TorchHead | LogregHead, batch_size: int = 64):
        super().__init__(model_dir, meta)
        self.chunking = ChunkSettings.from_config(meta.get("encoder"))  # a model from before long_text: truncate
        self.encoder = encoder
        self.head = head
        self.batch_size = int(batch_size)
        self.known: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None,
             device: str | None = None) -> SetFitPredictor:
        """Load ``encoder/`` and the head (``model_file`` overrides the head file) of a setfit model directory.

        The device is ``device``, else ``$TEXTCLF_DEVICE``, else auto.
        """
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        if "encoder" not in meta or "head" not in meta:
            raise ModelError(f"{Path(model_dir) / 'meta.json'}: no encoder/head block; not a setfit model directory")
        record = meta["encoder"]
        path = Path(model_dir) / record.get("dir", ENCODER_DIR)
        if not path.is_dir():
            raise ModelError(f"{path}: setfit encoder directory not found")
        encoder = load_sentence_model(path, device, record.get("max_length"))
        head = load_head(model_dir, meta["head"], model_file)
        check_label_count(Path(model_file or Path(model_dir) / meta["head"].get("file", head.file)), head.params["n_classes"],
                          meta["labels"])
        return cls(model_dir, meta, encoder, head, record.get("batch_size", 64))

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Reuse these already computed vectors for these texts (training evaluates valid/test without re-encoding)."""
        self.known.update(zip(texts, vectors, strict=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The embeddings of ``texts``: remembered rows reused, the rest encoded."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.known]
        if not self.known:
            return embed(self.encoder, texts, self.batch_size, self.chunking)
        if missing:
            fresh = embed(self.encoder, missing, self.batch_size, self.chunking)
            lookup = {**self.known, **dict(zip(missing, fresh, strict=True))}
        else:
            lookup = self.known
        return np.stack([lookup[t] for t in texts])

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``self.labels`` order."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return self.head.predict_proba(self.embed(texts))

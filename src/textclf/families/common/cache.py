"""A disk cache of sentence embeddings, keyed by everything that changes the vectors.

An entry is ``<root>/<key>.npy`` (the float32 matrix, one row per text) plus
``<root>/<key>.json`` (a small sidecar: encoder, weight hash, n, dim, created, ...). The key
is the sha256 of a JSON document holding the encoder id, its weight hash (or revision), the
sha256 of the texts, the maximum length, the pooling and the normalisation, so a different
text list, model or length never reuses stale vectors. Both files are written to a temp
file beside the target and renamed over it (``os.replace``), the ``.npy`` first and the
sidecar last: a reader that finds the sidecar finds a complete matrix, and two processes
writing the same key at once each rename a complete file, so the last one simply wins.

The root is ``$TEXTCLF_CACHE`` when set, else ``~/.cache/textclf/embeddings``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from textclf.core.atomic import atomic_replace_file, atomic_write_json
from textclf.core.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_ENV = "TEXTCLF_CACHE"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack")
_weight_hashes: dict[tuple, str] = {}


def cache_root(root: str | Path | None = None) -> Path:
    """The cache directory: ``root``, else ``$TEXTCLF_CACHE``, else ``~/.cache/textclf/embeddings``."""
    if root:
        return Path(root)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "textclf" / "embeddings"


def sha256_texts(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (each prefixed by its byte length, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def weight_hash(model_dir: str | Path) -> str:
    """sha256 over a model directory's weight files (name + content), memoised per (path, size, mtime) in this process."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp in _weight_hashes:
        return _weight_hashes[stamp]
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    _weight_hashes[stamp] = digest
    return digest


def cache_key(encoder_id: str, weights: str, texts_sha256: str, max_length: int | None, pooling: str,
              normalize: bool, extra: dict | None = None) -> str:
    """The sha256 key of one embedding matrix (every input that changes the vectors is part of it).

    ``extra`` (the chunk settings of ``long_text: chunk``) joins the key only when given, so every
    key computed without it stays what it was.
    """
    doc = {"encoder": encoder_id, "weights": weights, "texts": texts_sha256, "max_length": max_length,
           "pooling": pooling, "normalize": bool(normalize)}
    if extra:
        doc["chunking"] = extra
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Embedding matrices on disk under :func:`cache_root`."""

    def __init__(self, root: str | Path | None = None):
        self.root = cache_root(root)

    def paths(self, key: str) -> tuple[Path, Path]:
        """The ``.npy`` and sidecar ``.json`` of ``key``."""
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ConfigError(f"embedding cache: {key!r} is not a cache key (64 hex digits)")
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def artifact(self, key: str, suffix: str) -> Path:
        """The path of another file cached under ``key`` (a fitted transformer: ``.skops``)."""
        return self.paths(key)[0].with_suffix(suffix)

    def load(self, key: str) -> np.ndarray | None:
        """The cached matrix of ``key``, or None when absent (or unreadable: then it is treated as a miss)."""
        npy, side = self.paths(key)
        if not (npy.exists() and side.exists()):
            return None
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
            vectors = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("embedding cache entry %s unreadable (%s): recomputing", key[:12], exc)
            return None
        if vectors.shape != (info.get("n"), info.get("dim")):
            log.warning("embedding cache entry %s has shape %s, sidecar says (%s, %s): recomputing",
                        key[:12], vectors.shape, info.get("n"), info.get("dim"))
            return None
        return vectors

    def save(self, key: str, vectors: np.ndarray, info: dict) -> Path:
        """Write ``vectors`` and its sidecar atomically (matrix first, sidecar last); returns the ``.npy`` path."""
        npy, side = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_replace_file(write, npy)
        meta = {"key": key, **info, "n": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        atomic_write_json(side, meta)
        return npy

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray], info: dict) -> tuple[np.ndarray, bool]:
        """The matrix of ``key`` from disk, or ``compute()`` saved under it; returns ``(vectors, hit)``."""
        cached = self.load(key)
        if cached is not None:
            log.info("embedding cache hit %s (%d x %d)", key[:12], *cached.shape)
            return cached, True
        vectors = compute()
        self.save(key, vectors, info)
        return np.asarray(vectors, dtype=np.float32), False

    def entries(self) -> list[dict]:
        """Every complete entry's sidecar plus its size in bytes, newest first."""
        out = []
        if not self.root.is_dir():
            return out
        for side in self.root.glob("*.json"):
            npy = side.with_suffix(".npy")
            if not npy.exists():
                continue
            try:
                info = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            info.setdefault("key", side.stem)
            info["size"] = npy.stat().st_size + side.stat().st_size
            out.append(info)
        return sorted(out, key=lambda e: e.get("created", ""), reverse=True)

    def remove(self, key: str) -> bool:
        """Delete one entry (a unique prefix of its key is enough); returns whether something was removed."""
        matches = [e["key"] for e in self.entries() if e["key"].startswith(key)] if key else []
        if len(matches) > 1:
            raise ConfigError(f"embedding cache: prefix {key!r} matches {len(matches)} entries; give more of the key")
        if not matches:
            return False
        npy, side = self.paths(matches[0])
        for path in (side, npy):  # sidecar first: a half-removed entry is a miss, never a wrong hit
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True

    def clear(self) -> int:
        """Delete every entry (and stray temp files); returns how many entries were removed."""
        n = 0
        for entry in self.entries():
            n += self.remove(entry["key"])
        if self.root.is_dir():
            for pattern in ("*.skops", "*.joblib"):  # .joblib: pickles cached by older versions
                for artifact in self.root.glob(pattern):
                    artifact.unlink(missing_ok=True)
            for tmp in self.root.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return n


def format_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

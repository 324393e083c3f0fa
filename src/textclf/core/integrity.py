"""Model-file integrity: a size and SHA-256 recorded in meta.json at training, checked before loading.

A model library handed a truncated or overwritten weight file can fail in odd ways (fastText
allocates for minutes and dies with ``std::bad_alloc``); checking the recorded size first turns
that into a one-line :class:`~textclf.core.errors.ModelError` naming the file. ``meta.json`` holds
``"files": {"model.bin": {"bytes": N, "sha256": "..."}}`` (paths relative to the model
directory). ``TEXTCLF_VERIFY_SHA256=0`` skips the hash (the size is still checked): hashing
reads the whole file once, about 0.3 s per 100 MB on a slow CPU.

Paths stay inside the model directory: a file name that meta.json (``model_file``,
``plugin_code``, ``stacker_file``) or onnx.json (``default``) gives must be relative, without
``..``, not a symlink out of the directory, and listed in the ``files`` block when the model has
one (:func:`listed_path`); no symlink in the directory may point out of it (:func:`check_links`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from textclf.core.errors import ModelError
from textclf.core.meta import META_FILE

FILES_KEY = "files"


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 4 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file, for meta.json's ``files`` block."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def files_block(model_dir: str | Path, names: list[str]) -> dict:
    """The ``files`` block for the named files (relative to ``model_dir``) that exist."""
    model_dir = Path(model_dir)
    return {name: file_record(model_dir / name) for name in names if (model_dir / name).is_file()}


def verify_hashes() -> bool:
    """Whether SHA-256 checks run (``TEXTCLF_VERIFY_SHA256=0`` turns them off; sizes are always checked)."""
    return os.environ.get("TEXTCLF_VERIFY_SHA256", "1") not in ("0", "false", "no")


def verify_file(path: str | Path, record: dict, hash_it: bool | None = None) -> None:
    """Raise ModelError naming ``path`` when it is missing, or its size or SHA-256 differ from ``record``."""
    path = Path(path)
    if hash_it is None:
        hash_it = verify_hashes()
    if not path.is_file():
        raise ModelError(f"{path}: model file missing (meta.json records it)")
    size = path.stat().st_size
    want = record.get("bytes")
    if isinstance(want, int) and size != want:
        what = "truncated" if size < want else "larger than written"
        raise ModelError(f"{path}: {what}: {size} bytes, meta.json records {want}; the model directory is damaged "
                         "(copy it again or retrain)")
    if hash_it and isinstance(record.get("sha256"), str) and sha256_file(path) != record["sha256"]:
        raise ModelError(f"{path}: SHA-256 differs from the one meta.json records; the file was changed or damaged")


def inside_path(model_dir: str | Path, name, key: str, where: str | Path | None = None) -> Path:
    """``model_dir/name``, or a one-line ModelError when ``name`` (the value of ``key`` in ``where``) leaves the directory.

    Refused: a non-string or empty name, one with a NUL byte, an absolute path, a ``..`` part, and a path whose resolved
    target (symlinks followed) is outside ``model_dir``.
    """
    model_dir = Path(model_dir)
    where = where or model_dir / META_FILE
    if not isinstance(name, str) or not name.strip() or "\x00" in name:  # a NUL byte: no file has that name
        raise ModelError(f"{where}: '{key}' must be a file name inside the model directory, got {str(name)[:80]!r}")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or Path(name).is_absolute() or ".." in pure.parts:
        raise ModelError(f"{where}: '{key}' {name[:200]!r} points outside the model directory (absolute paths and "
                         "'..' are refused)")
    path = model_dir / pure
    try:
        escapes = not path.resolve().is_relative_to(model_dir.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        escapes = True
    if escapes:
        raise ModelError(f"{where}: '{key}' {name[:200]!r} is a symlink out of the model directory")
    return path


def listed_path(model_dir: str | Path, name, key: str, files: dict | None, where: str | Path | None = None) -> Path:
    """:func:`inside_path`, and also listed in ``files`` (the ``files`` block, verified before) when there is one."""
    path = inside_path(model_dir, name, key, where)
    if isinstance(files, dict) and PurePosixPath(name).as_posix() not in {PurePosixPath(n).as_posix() for n in files}:
        raise ModelError(f"{where or Path(model_dir) / META_FILE}: '{key}' {name[:200]!r} is not listed (size and "
                         f"SHA-256) in '{FILES_KEY}'; the model directory was edited")
    return path


#: meta.json keys naming a file of the model directory that loading reads
PATH_KEYS = ("model_file", "plugin_code", "stacker_file")


def check_meta_paths(model_dir: str | Path, meta: dict) -> None:
    """Every file name meta.json gives (:data:`PATH_KEYS`) stays inside the directory and is listed in ``files``."""
    for key in PATH_KEYS:
        if key in meta:
            listed_path(model_dir, meta[key], key, meta.get(FILES_KEY))


def check_links(model_dir: str | Path) -> None:
    """A one-line ModelError when a symlink in the model directory (any depth) points out of it."""
    root = Path(model_dir).resolve()
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            try:
                outside = not path.resolve().is_relative_to(root)
            except (OSError, RuntimeError):
                outside = True
            if outside:
                raise ModelError(f"{path}: a symlink out of the model directory ({os.readlink(path)}); refused")


def verify_recorded_files(model_dir: str | Path, meta: dict) -> None:
    """Check every file of meta.json's ``files`` block (nothing to do for models trained before it existed)."""
    block = meta.get(FILES_KEY)
    if block is None:
        return
    if not isinstance(block, dict):
        raise ModelError(f"{Path(model_dir) / META_FILE}: '{FILES_KEY}' must be an object of file records")
    for name, record in block.items():
        path = inside_path(model_dir, name, f"{FILES_KEY}: {name}")
        if not isinstance(record, dict):
            raise ModelError(f"{Path(model_dir) / META_FILE}: bad '{FILES_KEY}' entry {name!r} (expected an object "
                             "with bytes and sha256)")
        verify_file(path, record)


def check_meta(model_dir: str | Path, meta: dict) -> None:
    """A one-line ModelError naming meta.json when it lacks what every Predictor needs (``kind``, ``labels``)."""
    where = Path(model_dir) / META_FILE
    if not isinstance(meta, dict):
        raise ModelError(f"{where}: expected a JSON object")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        found = "missing" if labels is None else f"{type(labels).__name__} {str(labels)[:60]}"
        raise ModelError(f"{where}: 'labels' must be a non-empty list of label names ({found}); "
                         "the model directory is damaged or not a textclf model")
    if not isinstance(meta.get("kind"), str):
        raise ModelError(f"{where}: 'kind' (the model family) is missing")


def guarded_load(cls, model_dir: str | Path, meta: dict, model_file: str | Path | None):
    """``cls.load(...)`` where any failure of the model library becomes a one-line ModelError naming the directory.

    A TextclfError passes unchanged (it is already one clear line); anything else (a torch
    unpickling error on truncated weights, a library's ValueError) is summarised with its type.
    """
    from textclf.core.errors import TextclfError

    try:
        return cls.load(model_dir, meta=meta, model_file=model_file)
    except TextclfError:
        raise
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - every library failure becomes one line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = Path(model_file) if model_file else Path(model_dir)
        raise ModelError(f"{where}: cannot load the {meta.get('kind')} model ({type(exc).__name__}: {first}); "
                         "the model directory is damaged or incomplete") from None


def load_torch_weights(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU (no arbitrary unpickling); a damaged file is a ModelError naming it.

    A file holding anything but tensors, containers, numbers and the allow-listed globals (a
    pickle planted to run code) is refused with one line naming the global it asked for.
    """
    import pickle
    import re

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: weights file not found") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(f"{path}: refused: it holds objects other than weights{what}, which loading would run as "
                         "code; the file was not written by textclf or was replaced") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... on bad files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: cannot read the weights ({type(exc).__name__}: {first}); the file is truncated or "
                         "damaged") from None


def checkpoint_globals() -> list:
    """The globals a training checkpoint may hold beyond tensors and containers: numpy scalars (logged metrics)."""
    import numpy as np

    scalar = np._core.multiarray.scalar
    return [scalar, np.dtype, *(getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType"))]


def load_checkpoint(path: str | Path):
    """A training checkpoint for ``--resume``: :func:`load_torch_weights` with :func:`checkpoint_globals` allowed."""
    import torch

    with torch.serialization.safe_globals(checkpoint_globals()):
        return load_torch_weights(path)


_quiet: ContextVar[bool] = ContextVar("textclf_quiet_pickles", default=False)


@contextlib.contextmanager
def quiet_pickles(quiet: bool = True) -> Iterator[None]:
    """Within the block, :func:`announce_pickle` prints nothing (a caller that already unpickled more than the model)."""
    token = _quiet.set(quiet or _quiet.get())
    try:
        yield
    finally:
        _quiet.reset(token)


def announce_pickle(path: str | Path) -> None:
    """One line on stderr naming the file about to be unpickled (a legacy model, loaded with ``--trust-code``)."""
    if _quiet.get():
        return
    import click

    click.echo(f"note: unpickling {path} (trusted with --trust-code; pickle can run code)", err=True)

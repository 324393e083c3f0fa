"""Atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path, tag: str = "") -> tuple[int, str]:
    """A temp file ``.<name>.<tag>.<random>.tmp`` next to ``path`` (no ``<tag>.`` when ``tag`` is empty).

    It gets the permissions a plain ``open`` would give (mkstemp makes 0600). Should that chmod
    fail, the temp file is closed and removed before the error propagates.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{tag + '.' if tag else ''}", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", *,
                tag: str = "") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync and rename it to ``path``.

    On any exception the temp file is removed and ``path`` is left untouched, so a
    reader never sees a half-written file. ``tag`` goes into the temp file's name
    (``.<name>.<tag>.<random>.tmp``), so that a caller can recognise its own kind of
    temporaries later (:func:`textclf.core.tempfiles.atomic_output` puts the owner's pid and
    host there, to sweep those a killed run left behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path, tag)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_replace_file(produce: Any, path: str | Path) -> None:
    """Call ``produce(tmp_path)`` to write a file (e.g. a library's ``save_model``), then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        produce(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

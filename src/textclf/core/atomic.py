"""File output that never damages anything else: atomic for files, in place for streams.

Where an output goes depends on what its path names (:func:`output_target`):

- a regular file, or a path that does not exist yet: a temporary file beside the target, fsynced
  and renamed over it, so a reader never sees a half-written file and a failed write leaves the
  old file as it was;
- a symlink: the same, on the file the link points to (followed to the end); the link itself
  stays (a dangling link gets its target created);
- ``-``: standard output;
- a character or block device (``/dev/null``, ``/dev/full``), a FIFO, a Unix socket, or a path
  that names an open descriptor (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``): written in
  place, streamed; nothing is renamed over it. A write error there (``ENOSPC`` on ``/dev/full``)
  is an ``OSError`` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: the output path that means standard output
STDOUT = "-"
#: :func:`output_target` kinds
FILE, STREAM, STDOUT_KIND = "file", "stream", "stdout"


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


def _names_descriptor(path: Path) -> bool:
    """Whether ``path`` (or the link chain from it) goes through ``/proc/`` or ``/dev/fd/``: an open descriptor."""
    current = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on a link chain
        if str(current).startswith(("/proc/", "/dev/fd/")):
            return True
        if not current.is_symlink():
            return False
        current = Path(os.path.normpath(current.parent / os.readlink(current)))
    return False


def output_target(path: str | Path) -> tuple[str, Path]:
    """What writing ``path`` means: ``("file", where to rename to)``, ``("stream", path)`` or ``("stdout", -)``.

    See the module docstring. A symlink resolves to its final target (``file``), unless that
    target is a device, FIFO or socket (``stream``); a directory stays a ``file`` target, so the
    rename fails with ``IsADirectoryError`` naming it.
    """
    if str(path) == STDOUT:
        return STDOUT_KIND, Path(STDOUT)
    path = Path(path)
    if _names_descriptor(path):
        return STREAM, path
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:  # not there yet, or a parent is a file (the write then says so); a link loop is refused
        if exc.errno == errno.ELOOP:
            raise
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return STREAM, path
    if path.is_symlink():
        return FILE, Path(os.path.realpath(path))
    return FILE, path


def is_stream(path: str | Path) -> bool:
    """Whether ``path`` is written in place (``-``, a device, FIFO, socket or open descriptor), not atomically."""
    try:
        return output_target(path)[0] != FILE
    except OSError:
        return False


def _named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (a write error on a stream names no file)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def _open_in_place(kind: str, path: Path, binary: bool, text_args: dict) -> IO[Any]:
    """A new file object on ``path`` itself: a duplicate of stdout, a socket connection or ``open``."""
    if kind == STDOUT_KIND:
        sys.stdout.flush()
        return os.fdopen(os.dup(sys.stdout.fileno()), "wb" if binary else "w", **text_args)
    if stat.S_ISSOCK(os.stat(path).st_mode):
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            return sock.makefile("wb" if binary else "w", **text_args)  # keeps the connection until closed
    return open(path, "wb" if binary else "w", **text_args)  # noqa: SIM115 - the caller closes it


@contextlib.contextmanager
def _stream_open(kind: str, path: Path, mode: str, encoding: str | None) -> Iterator[IO[Any]]:
    """Write ``path`` in place: standard output, a device, a FIFO (waits for a reader) or a Unix socket.

    An ``OSError`` without a file name (a failed write or flush) gets the path (``stdout`` for ``-``).
    Where ``sys.stdout`` has no descriptor (a test runner's stand-in), it is written as it is.
    """
    binary = "b" in mode
    name = "stdout" if kind == STDOUT_KIND else path
    try:
        fh = _open_in_place(kind, path, binary, {} if binary else {"encoding": encoding, "newline": ""})
    except ValueError:  # sys.stdout.fileno() of a stand-in (io.UnsupportedOperation)
        stand_in = getattr(sys.stdout, "buffer", sys.stdout) if binary else sys.stdout
        yield stand_in
        stand_in.flush()
        return
    except OSError as exc:
        raise _named(exc, name) from None
    try:
        with fh:
            yield fh
    except OSError as exc:
        raise _named(exc, name) from None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", *,
                tag: str = "") -> Iterator[IO[Any]]:
    """Open ``path`` for writing the safe way for what it is (:func:`output_target`).

    A file: a temp file next to the target; on success it is fsynced and renamed to the target.
    On any exception the temp file is removed and the target is left untouched, so a reader
    never sees a half-written file. ``tag`` goes into the temp file's name
    (``.<name>.<tag>.<random>.tmp``), so that a caller can recognise its own kind of
    temporaries later (:func:`textclf.core.tempfiles.atomic_output` puts the owner's pid and
    host there, to sweep those a killed run left behind). ``-``, a device, FIFO or socket: written
    in place (what was written before an error stays written).
    """
    kind, target = output_target(path)
    if kind != FILE:
        with _stream_open(kind, target, mode, encoding) as fh:
            yield fh
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(target, tag)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (in place for a stream, see :func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON to ``path`` atomically (in place for a stream)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_replace_file(produce: Any, path: str | Path) -> None:
    """Call ``produce(tmp_path)`` to write a file (e.g. a library's ``save_model``), then rename it to ``path``.

    A stream target (``-``, a device, FIFO or socket) gets the produced file copied into it instead.
    """
    kind, target = output_target(path)
    if kind == FILE:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(target)
    else:
        fd, tmp = tempfile.mkstemp(prefix=".textclf-out.", suffix=".tmp")
    os.close(fd)
    try:
        produce(tmp)
        if kind == FILE:
            os.replace(tmp, target)
        else:
            with open(tmp, "rb") as src, _stream_open(kind, target, "wb", None) as sink:
                shutil.copyfileobj(src, sink)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

"""Temporaries a killed run could leave behind: tagged with their owner, removed on SIGTERM, swept by the next run.

A temp file written beside a target (``.out.txt.tc<pid>@<host>.<random>.tmp``) or a temp
directory (``textclf-ft-<pid>@<host>-<random>`` in the temp folder) names the process that
made it. ``kill -9`` gives that process no chance to clean up, so the next run that writes the
same target (or makes the same kind of temp directory) removes the ones whose process is gone
on this host (the one liveness rule, :func:`textclf.core.claims.owner_alive`). :func:`sigterm_as_exit`
turns SIGTERM into ``SystemExit(143)``, so the ``finally``/``except`` blocks that remove temporaries
run when a job is stopped politely.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from textclf.core.atomic import FILE, atomic_open, output_target
from textclf.core.claims import HOST, owner_gone

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"\.tc(?P<pid>\d+)@(?P<host>[^/]*)\.[A-Za-z0-9_]+\.tmp")
_DIR_RE = re.compile(r"(?P<pid>\d+)@(?P<host>[^/]*)-[A-Za-z0-9_]+")


def _host() -> str:
    return HOST.replace("/", "_")


def _owner_tag() -> str:
    return f"{os.getpid()}@{_host()}"


def _stale(pid: str, host: str) -> bool:
    """Whether the temp of ``pid@host`` is left by a gone process (:func:`textclf.core.claims.owner_gone`)."""
    return owner_gone({"host": host, "pid": int(pid)})


def sweep_stale_temps(target: str | Path) -> list[Path]:
    """Remove the temp files of ``target`` (beside it) whose process on this host is gone; returns them."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}.tc"
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    for path in candidates:
        m = _FILE_RE.fullmatch(path.name[len(target.name) + 1:])
        if m and _stale(m["pid"], m["host"]):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        log.warning("removed %d temp file(s) of %s left by a killed run", len(removed), target)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write ``path`` through an owner-tagged temp file beside it, fsync and rename it over ``path``.

    Stale temp files of the same target are swept first. On any exception (SIGTERM included, see
    :func:`sigterm_as_exit`) the temp file is removed and ``path`` keeps its old content, if any.
    The temp+rename itself is :func:`textclf.core.atomic.atomic_open`'s; this adds the owner tag and the sweep.
    A stream (``-``, a device, FIFO or socket) is written in place, with no temp file to sweep.
    """
    kind, target = output_target(path)
    if kind == FILE:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(target)
    with atomic_open(path, mode, encoding, tag=f"tc{_owner_tag()}") as fh:
        yield fh


def sweep_stale_dirs(prefix: str, parent: str | Path | None = None) -> list[Path]:
    """Remove ``prefix<pid>@<host>-*`` directories in ``parent`` (the temp folder) whose process is gone."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
    for path in candidates:
        m = _DIR_RE.fullmatch(path.name[len(prefix):])
        if m and _stale(m["pid"], m["host"]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.warning("removed %d temp folder(s) %s* left by a killed run", len(removed), parent / prefix)
    return removed


def make_owned_temp_dir(prefix: str) -> Path:
    """A new temp directory named for this process (the caller removes it); stale ones of the same prefix are swept first."""
    sweep_stale_dirs(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_owner_tag()}-"))


@contextlib.contextmanager
def owned_temp_dir(prefix: str) -> Iterator[Path]:
    """A temp directory named for this process, removed on exit; stale ones of the same prefix are swept first."""
    path = make_owned_temp_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: the signals :func:`sigterm_as_exit`'s handler received (see :func:`exit_requested`)
_received: list[int] = []


def exit_requested() -> int | None:
    """The exit status a SIGTERM (143) or Ctrl-C (SIGINT, 130) asked for inside :func:`sigterm_as_exit`, or None.

    The handler's ``SystemExit`` (or ``KeyboardInterrupt``) can be lost in library code: Optuna's
    journal lock, hit while it releases its lock file, replaces it with a ``FileNotFoundError``,
    which the search records as a failed trial before going on. Loops that must stop check this
    between steps (:func:`textclf.core.tuning.run_search` does after every trial).
    """
    return 128 + _received[-1] if _received else None


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While inside: SIGTERM raises ``SystemExit(143)`` in the main thread, so cleanup code runs.

    Ctrl-C still raises ``KeyboardInterrupt`` as Python's own handler does, and both are recorded for
    :func:`exit_requested`. Does nothing outside the main thread; a signal whose handler is not the
    default one (a server's own) is left alone. The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    except (ValueError, OSError):
        yield
        return
    defaults = {signal.SIGTERM: (signal.SIG_DFL, None), signal.SIGINT: (signal.default_int_handler,)}
    ours = [signum for signum, handler in previous.items() if handler in defaults[signum]]

    def handler(signum, frame):
        _received.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    _received.clear()
    for signum in ours:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in ours:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, previous[signum])

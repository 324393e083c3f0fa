"""Run a call in a forked process that is killed at a deadline: the search's wall-clock budget for training that
cannot be interrupted from Python (fastText's C++ loop).

The core's search (:mod:`textclf.core.fit_flow`) uses it for families that declare
``Family.fork_trials``: once the study holds a complete trial, every further trial (fit and
scoring) runs in a child forked from the search process; a child still running at the
``search.timeout`` deadline is killed and the trial is PRUNED, so the search keeps its budget like
fastText's own autotune. The child sends its result back through a pipe (pickled); an exception in
the child comes back as a RuntimeError with its message.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any


def _child(conn, fn: Callable[[], Any]) -> None:
    try:
        conn.send((True, fn()))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def call_before_deadline(fn: Callable[[], Any], deadline: float) -> Any:
    """``fn()`` run in a forked child; killed at ``deadline`` (``time.monotonic``), which raises ``optuna.TrialPruned``."""
    import optuna

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(max(0.0, deadline - time.monotonic())):
            raise optuna.TrialPruned("search timeout reached: trial killed")
        ok, value = recv.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"trial process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    if not ok:
        raise RuntimeError(value)
    return value

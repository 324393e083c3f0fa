"""Consent to run code that a model directory carries (like Hugging Face's ``trust_remote_code``).

Loading a model directory never runs code from it unless the user agreed, in one of three ways:

* ``--trust-code`` on a command that loads a model (:func:`textclf.core.options.trust_code_option`);
* ``TEXTCLF_TRUST_CODE=1`` in the environment (inherited by worker processes);
* ``trust_code=True`` in :func:`textclf.load_predictor` / :func:`textclf.load`.

Code a model directory can carry: a plug-in family's file (``meta.json`` ``plugin_code``) and
pickles written by older textclf versions (``*.joblib``; new models save scikit-learn objects
with skops, which needs no consent: :mod:`textclf.core.skops_io`). Without consent, loading stops
with one line (exit 2) naming the file and how to allow it (:func:`require_trust`).

The consent lives in a :class:`~contextvars.ContextVar`, so nested loads (an ensemble's members)
and ``asyncio.to_thread`` see it, and a command's flag ends with the command (``ctx.call_on_close``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from textclf.core.errors import ModelError

TRUST_ENV = "TEXTCLF_TRUST_CODE"
TRUST_FLAG = "--trust-code"

_trusted: ContextVar[bool | None] = ContextVar("textclf_trust_code", default=None)


def code_trusted() -> bool:
    """Whether the user agreed to run code from model directories (flag or ``trust_code=`` first, then the env)."""
    chosen = _trusted.get()
    if chosen is not None:
        return chosen
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def trusting(trust: bool | None) -> Iterator[None]:
    """Within the block, :func:`code_trusted` is ``trust`` (None: unchanged, the flag or the env decide)."""
    if trust is None:
        yield
        return
    token = _trusted.set(bool(trust))
    try:
        yield
    finally:
        _trusted.reset(token)


def allow() -> Callable[[], None]:
    """Trust code from now on in this context (``--trust-code``); returns the function that undoes it."""
    token = _trusted.set(True)

    def undo() -> None:
        with contextlib.suppress(ValueError):  # undone in another context: nothing of ours to reset there
            _trusted.reset(token)

    return undo


def trust_env() -> dict[str, str]:
    """The environment a child process needs to inherit this process's consent (empty when not trusted)."""
    return {TRUST_ENV: "1"} if code_trusted() else {}


def require_trust(path: str | Path, what: str) -> None:
    """Raise a one-line ModelError unless code is trusted: ``path`` would ``what`` (e.g. "run as plug-in code")."""
    if code_trusted():
        return
    raise ModelError(f"{path}: loading this model would {what}, which can run arbitrary code; if you trust the model "
                     f"directory, pass {TRUST_FLAG} (or set {TRUST_ENV}=1, or trust_code=True in Python)")

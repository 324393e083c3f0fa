"""Progress and logging for every long-running step, in one place.

:func:`setup_logging` configures logging once (the ``textclf`` command and the subproject
scripts call it alike): textclf's own lines at INFO, other libraries at WARNING, more with
``-v``. :class:`Progress` shows a tqdm bar on a terminal and writes one plain line per step
(trial, epoch, batch of documents) to the log and, when given, to a ``progress.log`` file in
the model directory, so a batch job's log says how far it got. :func:`search_callback` is the
Optuna callback every family's search uses.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("textclf.core.progress")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_FILE = "progress.log"
_configured: list[int] = []


def setup_logging(verbose: int = 0) -> None:
    """Log textclf's lines at INFO (``-v``: every library at INFO, ``-vv``: DEBUG) to stderr; idempotent."""
    root = logging.getLogger()
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        _configured.append(verbose)
    elif verbose <= _configured[0]:
        return
    _configured[0] = verbose
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    logging.getLogger("textclf").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``None`` -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """A step counter: a bar on a terminal, else one plain line per :meth:`update` in the log; always a line in ``log_path``.

    ``total`` may be None (unknown). ``enabled`` forces the bar on/off (default: stderr is a terminal).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", log_path: str | Path | None = None,
                 enabled: bool | None = None, done: int = 0):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = done
        self.start_done = done
        self.start = time.monotonic()
        self.log_path = Path(log_path) if log_path else None
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def eta(self) -> float | None:
        """Seconds left at the current rate (None when unknown)."""
        ran = self.done - self.start_done
        if not self.total or ran <= 0:
            return None
        return (time.monotonic() - self.start) / ran * max(0, self.total - self.done)

    def line(self, **info: Any) -> str:
        """The plain progress line for the current state plus ``info``."""
        of = f"/{self.total}" if self.total else ""
        parts = [f"{self.desc} {self.unit} {self.done}{of}"]
        parts += [f"{k}={_fmt(v)}" for k, v in info.items() if v is not None]
        parts.append(f"elapsed {format_seconds(time.monotonic() - self.start)}")
        if self.total:
            parts.append(f"eta {format_seconds(self.eta())}")
        return " ".join(parts)

    def update(self, n: int = 1, **info: Any) -> str:
        """Advance by ``n`` and report; returns the line written."""
        self.done += n
        text = self.line(**info)
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix({k: _fmt(v) for k, v in info.items() if v is not None}, refresh=False)
        # on a terminal the bar says it; in a batch job's log (no terminal) the plain line does
        log.log(logging.DEBUG if self.bar is not None else logging.INFO, text)
        if self.log_path is not None:
            append_line(self.log_path, text)
        return text

    def close(self) -> None:
        """Close the bar (the lines already written stay)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def append_line(path: str | Path, text: str) -> None:
    """Append one line with a timestamp (a log file, not an output: appending is the point)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def search_callback(n_trials: int | None, output_dir: str | Path | None, desc: str = "search"):
    """An Optuna callback reporting ``trial i/N, value, best so far, elapsed, ETA`` after every trial.

    ``i`` counts the study's finished trials (so a resumed or shared study shows the total).
    Returns ``(callback, progress)``; close the progress when the search ends.
    """
    from optuna.trial import TrialState

    progress: list[Progress] = []

    def callback(study, trial) -> None:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if not progress:
            progress.append(Progress(n_trials, desc, "trial", Path(output_dir) / PROGRESS_FILE if output_dir else None,
                                     done=max(0, done - 1)))
        p = progress[0]
        try:
            best = study.best_value
        except ValueError:
            best = None
        p.update(done - p.done, number=trial.number, state=trial.state.name.lower(), value=trial.value, best=best)

    def close() -> None:
        for p in progress:
            p.close()

    callback.close = close  # type: ignore[attr-defined]
    return callback

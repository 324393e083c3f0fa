"""Errors that the CLI reports as one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import click


class TextclfError(click.ClickException):
    """Base class of every error a user can fix by changing their input or config.

    Click prints it as ``Error: <message>`` on stderr and exits with code 2, no traceback.
    """

    exit_code = 2


class DataError(TextclfError):
    """Bad input data: names the file, the line (when known) and the problem."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(TextclfError):
    """A bad config file or `--set` override."""


class ModelError(TextclfError):
    """A model directory that cannot be loaded (missing files, unknown kind)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during work that the same command resumes: the CLI prints the message alone, exit 130.

    A ``KeyboardInterrupt``, so what handles one (the experiment store marks the run KILLED) still does.
    """

    exit_code = 130

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

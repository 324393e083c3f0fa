"""The ``textclf`` command: a click group whose subcommands are imported only when used.

``textclf train <family>`` and ``textclf tune <family>`` are built from the family registry
(:mod:`textclf.core.registry`), so a family from a package or a ``--code`` file needs no change here.
"""

from __future__ import annotations

import importlib

import click

from textclf.cli.options import code_option

#: top-level command -> "module:attribute", imported on first use so `textclf --help` never imports torch.
#: A family adds its own commands (``textclf embed``, ``textclf sweep``) through ``Family.commands``.
COMMANDS: dict[str, str] = {
    "predict": "textclf.cli.predict_cmd:predict",
    "evaluate": "textclf.cli.predict_cmd:evaluate",
    "make-dataset": "textclf.cli.data_cmd:make_dataset",
    "stats": "textclf.cli.data_cmd:stats",
    "families": "textclf.cli.families_cmd:families",
    "runs": "textclf.cli.runs_cmd:runs",
    "queue": "textclf.cli.queue_cmd:queue",
    "worker": "textclf.cli.queue_cmd:worker",
    "leaderboard": "textclf.cli.compare_cmd:leaderboard",
    "report": "textclf.cli.compare_cmd:report",
    "ensemble": "textclf.cli.compare_cmd:ensemble",
    "tune-thresholds": "textclf.cli.compare_cmd:tune_thresholds",
    "calibrate": "textclf.cli.compare_cmd:calibrate",
    "serve": "textclf.cli.serve_cmd:serve",
    "export": "textclf.cli.export_cmd:export",
    "card": "textclf.cli.card_cmd:card",
    "explain": "textclf.cli.explain_cmd:explain",
    "distill": "textclf.cli.distill_cmd:distill",
    "cascade": "textclf.cli.distill_cmd:cascade",
    "audit": "textclf.cli.audit_cmd:audit",
    "serve-audit": "textclf.cli.audit_cmd:serve_audit",
}


class OneLineUsageError(click.ClickException):
    """A click usage error shown as one line (``Error: ... (see 'textclf predict --help')``), exit code 2."""

    exit_code = 2

    def __init__(self, error: click.UsageError):
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        super().__init__(" ".join(error.format_message().split("\n")) + hint)
        self.exit_code = error.exit_code


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming its file: ``out/p.txt: Permission denied``."""
    where = f"{exc.filename}: " if exc.filename else ""
    also = f" ({exc.filename2})" if getattr(exc, "filename2", None) else ""
    return f"{where}{exc.strerror or exc}{also}"


class LazyGroup(click.Group):
    """A group whose commands are ``module:attr`` strings, imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def all_lazy(self) -> dict[str, str]:
        """The group's own lazy commands plus every registered family's (``Family.commands``)."""
        from textclf.core.registry import family_commands

        return {**family_commands(), **self.lazy}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.all_lazy()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        lazy = self.lazy if name in self.lazy else self.all_lazy()
        if name in lazy:
            module, attr = lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None

    def invoke(self, ctx: click.Context):
        """Run the subcommand; usage errors and file-system errors become one line (exit 2), SIGTERM cleans up.

        Ctrl-C during a search (:class:`textclf.core.errors.Interrupted`) prints its one line, exit 130; Ctrl-C
        elsewhere prints ``Interrupted: textclf CMD stopped (Ctrl-C)``, exit 130.

        SIGTERM raises SystemExit(143) while a command runs, so temp files and folders are removed
        (:mod:`textclf.core.tempfiles`); an OSError (no permission, disk full, a parent that is a file)
        is reported as ``Error: PATH: reason`` instead of a traceback.
        """
        import errno

        from textclf.core.errors import Interrupted, TextclfError
        from textclf.core.tempfiles import sigterm_as_exit

        try:
            with sigterm_as_exit():
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except Interrupted as exc:  # Ctrl-C in resumable work: its one line, exit 130
            click.echo(exc.message, err=True)
            raise click.exceptions.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C anywhere else (serve, predict, ...): one line, exit 130, not click's "Aborted!"
            click.echo(f"Interrupted: textclf {ctx.invoked_subcommand or ''} stopped (Ctrl-C)".replace("  ", " "), err=True)
            raise click.exceptions.Exit(130) from None
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            raise TextclfError(os_error_line(exc)) from None


class FamilyGroup(click.Group):
    """``train``/``tune``: one subcommand per registered family (``tune``: families with a search space)."""

    def __init__(self, *args, tune: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tune = tune

    def list_commands(self, ctx: click.Context) -> list[str]:
        from textclf.core.registry import all_families

        return [name for name, fam in all_families().items() if fam.searchable or not self.tune]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from textclf.cli.family_cmd import train_command
        from textclf.core.errors import ConfigError
        from textclf.core.registry import get_family

        family = get_family(name)
        if self.tune and not family.searchable:
            tunable = ", ".join(self.list_commands(ctx))
            raise ConfigError(f"family {name!r} has no search space to tune; families with one: {tunable}")
        return train_command(name, tune=self.tune)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@code_option
@click.version_option(package_name="textclf")
def cli(verbose: int) -> None:
    """Train, tune, evaluate and serve text classifiers (fastText, BiLSTM, BERT and your own families)."""
    from textclf.core.progress import setup_logging

    setup_logging(verbose)


@cli.group(cls=FamilyGroup)
@code_option
def train() -> None:
    """Train a model family on labelled files (`textclf families` lists them)."""


@cli.group(cls=FamilyGroup, tune=True)
@code_option
def tune() -> None:
    """Hyper-parameter search with Optuna (resumable, shareable between workers), then refit the best."""


def main() -> None:
    """Console-script entry point."""
    cli()

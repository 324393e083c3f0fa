"""The ``textclf`` command: a click group whose subcommands are imported only when used.

``textclf train <family>`` and ``textclf tune <family>`` are built from the family registry
(:mod:`textclf.registry`), so a family from a package or a ``--code`` file needs no change here.
"""

from __future__ import annotations

import importlib

import click

from textclf.cli.options import code_option

#: top-level command -> "module:attribute", imported on first use so `textclf --help` never imports torch
COMMANDS: dict[str, str] = {
    "predict": "textclf.cli.predict_cmd:predict",
    "evaluate": "textclf.cli.predict_cmd:evaluate",
    "make-dataset": "textclf.cli.data_cmd:make_dataset",
    "stats": "textclf.cli.data_cmd:stats",
    "families": "textclf.cli.families_cmd:families",
    "runs": "textclf.cli.runs_cmd:runs",
    "queue": "textclf.cli.queue_cmd:queue",
    "worker": "textclf.cli.queue_cmd:worker",
    "embed": "textclf.families.embeddings.cli:embed",
    "sweep": "textclf.families.embeddings.sweep_cli:sweep",
}


class LazyGroup(click.Group):
    """A group whose commands are ``module:attr`` strings, imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


class FamilyGroup(click.Group):
    """``train``/``tune``: one subcommand per registered family (``tune``: families with a search space)."""

    def __init__(self, *args, tune: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tune = tune

    def list_commands(self, ctx: click.Context) -> list[str]:
        from textclf.registry import all_families

        return [name for name, fam in all_families().items() if fam.searchable or not self.tune]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from textclf.cli.family_cmd import train_command
        from textclf.errors import ConfigError
        from textclf.registry import get_family

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
    from textclf.progress import setup_logging

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

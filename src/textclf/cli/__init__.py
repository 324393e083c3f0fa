"""The ``textclf`` command: a click group whose subcommands are imported only when used."""

from __future__ import annotations

import importlib
import logging

import click

#: command path -> "module:attribute"; families register here so `textclf --help` never imports torch.
COMMANDS: dict[str, dict[str, str]] = {
    "": {
        "predict": "textclf.cli.predict_cmd:predict",
        "evaluate": "textclf.cli.predict_cmd:evaluate",
        "make-dataset": "textclf.cli.data_cmd:make_dataset",
        "stats": "textclf.cli.data_cmd:stats",
    },
    "train": {
        "fasttext": "textclf.cli.fasttext_cmd:train_fasttext",
        "lstm": "textclf.cli.lstm_cmd:train_lstm",
        "bert": "textclf.cli.bert_cmd:train_bert",
    },
    "tune": {
        "fasttext": "textclf.cli.fasttext_cmd:train_fasttext",
        "lstm": "textclf.cli.lstm_cmd:tune_lstm",
    },
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


@click.group(cls=LazyGroup, lazy=COMMANDS[""], context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="textclf")
def cli(verbose: int) -> None:
    """Train, tune, evaluate and serve text classifiers (fastText, BiLSTM, BERT)."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.group(cls=LazyGroup, lazy=COMMANDS["train"])
def train() -> None:
    """Train a model family on labelled files (fastText runs an Optuna search)."""


@cli.group(cls=LazyGroup, lazy=COMMANDS["tune"])
def tune() -> None:
    """Hyper-parameter search with Optuna (resumable, shareable between workers)."""


def main() -> None:
    """Console-script entry point."""
    cli()

"""The click options every command shares (the family commands in ``families/*/`` use them too), and flags as overrides.

They live in the core so that a family's own commands (``textclf embed``, ``textclf sweep``) can
use them without importing the CLI layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click


def _load_code(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Import every ``--code`` file as soon as the flag is parsed (before the subcommand is looked up)."""
    from textclf.core.registry import load_code

    for path in value or ():
        load_code(path)
    return value


def code_option(fn: Callable) -> Callable:
    """``--code FILE`` (repeatable): import a Python file that registers families or readers."""
    return click.option("--code", "code", multiple=True, type=click.Path(dir_okay=False), callback=_load_code,
                        is_eager=True, expose_value=False,
                        help="Python file registering your own families, formats or readers (imported first). Repeatable.")(fn)


def _trust_code(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Record the consent for this command (:mod:`textclf.core.trust`); it ends when the command does."""
    from textclf.core.trust import allow

    if value:
        ctx.call_on_close(allow())
    return value


def trust_code_option(fn: Callable) -> Callable:
    """``--trust-code``: allow the code a model directory carries (plug-in file, pickles of older versions).

    Every command that loads a model has it; ``TEXTCLF_TRUST_CODE=1`` does the same.
    """
    return click.option("--trust-code", "--trust_code", "trust_code", is_flag=True, default=False, expose_value=False,
                        callback=_trust_code, is_eager=True,
                        help="Allow code the model directory carries: its plug-in file (meta.json plugin_code) and "
                        "pickles written by older versions. Only for models you trust. Also: TEXTCLF_TRUST_CODE=1.")(fn)


class FormatChoice(click.Choice):
    """The names of the registered formats that can do ``capability``, read from the format registry when used.

    So a format from a ``--code`` file (imported first: the flag is eager) is a valid choice, and
    ``--help`` lists it; an unknown name is the registry's one-line error listing the known ones.
    """

    name = "format"

    def __init__(self, capability: str):
        self.capability = capability
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from textclf.core.registry import format_names

        return tuple(format_names(self.capability))

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it; the registry is the source
        pass

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        from textclf.core.registry import unknown_format_message

        return unknown_format_message(str(value), self.capability)


def data_options(fn: Callable) -> Callable:
    """``--train_path --valid_path --test_path --output_dir`` (the original repository's flag names)."""
    fn = click.option("--output_dir", required=True, type=click.Path(file_okay=False),
                      help="Model directory to write (created if missing; a rerun resumes its study).")(fn)
    fn = click.option("--test_path", type=click.Path(dir_okay=False), default=None,
                      help="Optional labelled test file, scored once after training.")(fn)
    fn = click.option("--valid_path", required=True, type=click.Path(dir_okay=False), help="Labelled validation file.")(fn)
    fn = click.option("--train_path", required=True, multiple=True, type=click.Path(dir_okay=False),
                      help="Labelled training file (.csv/.tsv/.jsonl, or fastText .txt). Repeatable: the files are "
                      "concatenated (the embeddings search also picks which of them to train on).")(fn)
    return fn


def config_options(fn: Callable) -> Callable:
    """``--config PATH`` and repeatable ``--set key.sub=value``."""
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override a config value, e.g. --set model.lr=0.1 (JSON value, else string). Repeatable.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="JSON config (full or partial) merged over the family default (and your config/<family>.json).")(fn)
    return fn


def flag_overrides(mapping: dict[str, Any]) -> list[str]:
    """Turn explicitly given flags into ``key=json`` overrides (None means not given)."""
    return [f"{key}={json.dumps(value)}" for key, value in mapping.items() if value is not None]

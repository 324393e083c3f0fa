"""``textclf card MODEL_DIR``: write the model directory's ``MODEL_CARD.md`` again from its meta.json."""

from __future__ import annotations

import click


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--print", "show", is_flag=True, help="Also print the card.")
def card(model_dir: str, show: bool) -> None:
    """Write MODEL_DIR/MODEL_CARD.md from its meta.json (every training writes one; this refreshes it).

    The text between the card's ``<!-- textclf:begin NAME -->`` / ``<!-- textclf:end NAME -->``
    markers (Intended use, Limitations) is kept. docs/model_card.md describes every section.
    """
    from textclf.core.card import write_card
    from textclf.core.meta import read_meta

    path = write_card(model_dir, read_meta(model_dir))
    if show:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
    else:
        click.echo(f"model card: {path}")

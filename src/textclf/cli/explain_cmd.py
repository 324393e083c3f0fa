"""``textclf explain``: token attributions toward the predicted label (or ``--label``) for any model directory."""

from __future__ import annotations

import json
import sys

import click

from textclf.cli.options import FormatChoice, code_option, trust_code_option


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory.")
@click.option("--text", "texts", multiple=True, help="A text to explain (repeatable).")
@click.option("--input_path", type=click.Path(dir_okay=False), default=None,
              help="Texts to explain (plain text one a line, .csv/.tsv/.jsonl with a text column); needs --output_path.")
@click.option("--output_path", type=click.Path(dir_okay=False), default=None,
              help="JSONL out, line i for input record i: text, label, predicted, probability, method, tokens, "
              "attributions (atomically; - for stdout). Also with --text.")
@click.option("--label", default=None, help="Explain this label instead of the predicted one.")
@click.option("--method", type=click.Choice(["auto", "occlusion"]), default="auto", show_default=True,
              help="auto: the family's own (integrated gradients, exact linear contributions), else occlusion.")
@click.option("--input_format", type=FormatChoice("texts"), default=None, help="Input format (default: from the extension).")
@click.option("--text_column", default="text", help="Text column/key for CSV/JSONL input.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the --text explanations as a self-contained HTML page.")
@click.option("--color/--no-color", default=None, help="Colour the tokens (default: on a terminal).")
@click.option("--thresholds/--no-thresholds", default=True, help="Predicted label with the tuned thresholds (default) or argmax.")
def explain(model_path, texts, input_path, output_path, label, method, input_format, text_column, html_path, color,
            thresholds):
    """Which words pushed the model toward its label: coloured tokens on the terminal, or JSONL with --input_path."""
    from textclf.core.atomic import atomic_write_text
    from textclf.core.loading import load_predictor
    from textclf.services.explain import explain_file, explain_texts, format_terminal, html_section

    if bool(texts) == bool(input_path):
        raise click.UsageError("give --text (repeatable) or --input_path, not both" if texts else
                               "give --text TEXT or --input_path FILE")
    if input_path and not output_path:
        raise click.UsageError("--input_path needs --output_path (JSONL, one line a text; - for stdout)")
    if input_path and html_path:
        raise click.UsageError("--html goes with --text")
    predictor = load_predictor(model_path, thresholds=thresholds)
    if input_path:
        n = explain_file(predictor, input_path, output_path, label, method, input_format, text_column)
        click.echo(f"wrote {n} explanations to {output_path}", err=True)
        return
    explanations = explain_texts(predictor, list(texts), label, method)
    if output_path:
        from textclf.core.tempfiles import atomic_output

        with atomic_output(output_path) as fh:
            for e in explanations:
                fh.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
    if html_path:
        atomic_write_text(html_path, '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>textclf explain'
                          f"</title></head><body>{html_section(explanations)}</body></html>\n")
        click.echo(f"wrote {html_path}", err=True)
    if output_path == "-":
        return
    color = sys.stdout.isatty() if color is None else color
    click.echo("\n\n".join(format_terminal(e, color) for e in explanations), color=color)

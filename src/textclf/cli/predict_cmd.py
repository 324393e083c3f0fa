"""``textclf predict`` and ``textclf evaluate``: work with any family's model directory."""

from __future__ import annotations

import json

import click

from textclf.cli.options import FormatChoice, code_option, trust_code_option
from textclf.core.data import read_labelled, unknown_label_note
from textclf.core.loading import load_predictor
from textclf.core.metrics import format_report
from textclf.core.predictor import evaluate_predictor, predict_file

#: ``--backend torch|onnx`` (default: onnx when the model directory holds an export from ``textclf export``)
backend_option = click.option(
    "--backend", type=click.Choice(["torch", "onnx"]), default=None,
    help="torch: the family's own model; onnx: the ONNX export (textclf export). Default: onnx when exported.")


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory (or a model file inside one).")
@click.option("--input_path", required=True, type=click.Path(dir_okay=False),
              help="Texts: plain text (one a line), .csv/.tsv/.jsonl with a text column, fastText, or what a "
              "format from --code reads (e.g. DB::TABLE with --input_format sqlite).")
@click.option("--output_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write predictions: a file (atomically; a symlink's target), - for stdout, a device or "
              "FIFO (streamed).")
@click.option("--format", "output_format", type=FormatChoice("predictions"), default=None,
              help="txt: one label a line; csv/jsonl: label plus one probability per class. Default: from the extension.")
@click.option("--input_format", type=FormatChoice("texts"), default=None,
              help="Input format (default: from the extension; .txt is plain text).")
@click.option("--text_column", default="text", help="Text column/key for CSV/JSONL input.")
@click.option("--batch_size", type=int, default=1024, help="Documents per batch (memory stays flat).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--thresholds/--no-thresholds", default=True,
              help="Apply the decision thresholds tuned by `textclf tune-thresholds` (default) or the plain argmax.")
@backend_option
def predict(model_path, input_path, output_path, output_format, input_format, text_column, batch_size, progress, thresholds,
            backend):
    """Label every document of INPUT; output line i belongs to input line i."""
    predictor = load_predictor(model_path, thresholds=thresholds, backend=backend)
    n = predict_file(predictor, input_path, output_path, output_format, batch_size, input_format, text_column, progress)
    click.echo(f"wrote {n} predictions to {output_path}", err=True)


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory.")
@click.option("--data_path", required=True, type=click.Path(dir_okay=False),
              help="Labelled file to score (or what --data_format reads, e.g. DB::TABLE for sqlite).")
@click.option("--beta", type=float, multiple=True, help="F-beta to report (repeatable; default 1 and 0.5).")
@click.option("--text_column", default="text")
@click.option("--label_column", default="label")
@click.option("--data_format", type=FormatChoice("read"), default=None, help="Format of the labelled data (default: from the extension).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--batch_size", type=int, default=1024)
@click.option("--thresholds/--no-thresholds", default=True,
              help="Apply the decision thresholds tuned by `textclf tune-thresholds` (default) or the plain argmax.")
@backend_option
def evaluate(model_path, data_path, beta, text_column, label_column, data_format, as_json, batch_size, thresholds, backend):
    """Score a model on a labelled file: per-class and averaged metrics, confusion matrix (multi-label: label-set metrics)."""
    predictor = load_predictor(model_path, thresholds=thresholds, backend=backend)
    ds = read_labelled(data_path, data_format, text_column, label_column, min_classes=0, task=predictor.task,
                       label_separator=predictor.label_separator)
    note = unknown_label_note(ds, predictor.labels)
    if note:
        click.echo(note, err=True)
    metrics = evaluate_predictor(predictor, ds.texts, ds.labels, batch_size, betas=beta or (1.0, 0.5))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(format_report(metrics, title=f"== {data_path} ({predictor.kind} model {model_path})"))

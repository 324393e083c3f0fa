"""``textclf export``: write a neural model as ONNX for fast CPU inference (:mod:`textclf.services.export`)."""

from __future__ import annotations

import click

from textclf.cli.options import code_option, trust_code_option


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory (BERT or BiLSTM family).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="Export format.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write model.int8.onnx (dynamic int8 weights; the ONNX backend then loads it by default).")
def export(model_path, fmt, quantize):
    """Export a model to ONNX beside its weights; `predict`/`serve` then use ONNX Runtime (--backend torch: not)."""
    from textclf.services.export import export_onnx

    info = export_onnx(model_path, quantize=quantize)
    for name, check in info["check"].items():
        click.echo(f"wrote {model_path}/{name} ({info['files'][name]['bytes'] / 1e6:.1f} MB): max |p_onnx - p_torch| "
                   f"{check['max_abs_diff']:.2e}, labels agree on {check['label_agreement']:.0%} of {check['texts']} "
                   "sample texts", err=True)
    click.echo(f"default backend file: {info['default']} (onnx.json)", err=True)

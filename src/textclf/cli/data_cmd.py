"""``textclf make-dataset`` and ``textclf stats``: split, downsample and describe labelled data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from textclf.cli.options import FormatChoice, code_option
from textclf.core.atomic import atomic_write_json
from textclf.core.data import TASKS, balanced_downsample, format_label_stats, label_stats, read_labelled, stratified_split, write_labelled
from textclf.core.registry import get_format


def task_options(fn):
    """``--task`` and ``--label_separator``: how labels are read (``data.task``, ``data.label_separator``)."""
    fn = click.option("--label_separator", default=None,
                      help="Split a CSV/TSV label cell into a label set at this string (multi-label data).")(fn)
    return click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
                        help="auto: multi-label when the data holds label sets (docs/multilabel.md).")(fn)


@click.command("make-dataset")
@code_option
@click.option("--input_path", required=True, type=click.Path(dir_okay=False), help="One labelled file (.csv/.tsv/.jsonl/.txt).")
@click.option("--output_dir", required=True, type=click.Path(file_okay=False), help="Where train/valid/test files go.")
@click.option("--valid_frac", type=float, default=0.1, show_default=True)
@click.option("--test_frac", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--downsample", is_flag=True, help="Also write train_balanced: every class cut to the smallest class size.")
@click.option("--output_format", type=FormatChoice("write"), default="csv", show_default=True)
@click.option("--text_column", default="text")
@click.option("--label_column", default="label")
@click.option("--input_format", type=FormatChoice("read"), default=None)
@task_options
def make_dataset(input_path, output_dir, valid_frac, test_frac, seed, downsample, output_format, text_column, label_column,
                 input_format, task, label_separator):
    """Deterministic stratified train/valid/test split, optional balanced downsample, label statistics.

    Multi-label data is split by a seeded shuffle (no stratification) and written with its label sets
    (CSV/TSV: joined by ``|``).
    """
    ds = read_labelled(input_path, input_format, text_column, label_column, task=task, label_separator=label_separator)
    if downsample and ds.multilabel:
        raise click.UsageError("--downsample balances classes; multi-label data has none to cut to one size")
    train, valid, test = stratified_split(ds, valid_frac, test_frac, seed)
    out = Path(output_dir)
    ext = get_format(output_format, "write").suffix.lstrip(".")
    parts = {"train": train, "valid": valid, "test": test}
    if downsample:
        parts["train_balanced"] = train.subset(balanced_downsample(train.labels, seed))
    report = {}
    for name, part in parts.items():
        if len(part) == 0:
            continue
        part.path = str(out / f"{name}.{ext}")
        write_labelled(part.path, part, output_format)
        report[name] = label_stats(part)
        click.echo(format_label_stats(report[name]))
    atomic_write_json(out / "stats.json", report)
    click.echo(f"wrote {', '.join(report)} and stats.json to {out}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.option("--text_column", default="text")
@click.option("--label_column", default="label")
@task_options
@click.option("--tokens/--no-tokens", default=True, show_default=True,
              help="Token lengths (the default encoder's tokenizer) against each family's max_length: how much would be cut.")
def stats(paths, as_json, text_column, label_column, task, label_separator, tokens):
    """Label counts, shares and text lengths of labelled files (multi-label: texts per label and labels per text);
    token lengths against each family's max_length."""
    datasets = [read_labelled(p, None, text_column, label_column, min_classes=0, task=task, label_separator=label_separator)
                for p in paths]
    reports = [label_stats(ds) for ds in datasets]
    if tokens:
        from textclf.services.token_lengths import default_tokenizer, family_limits, token_report

        tokenizer, limits = default_tokenizer(), family_limits()
        for report, ds in zip(reports, datasets, strict=True):
            report["tokens"] = token_report(ds.texts, tokenizer, limits)
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        from textclf.services.token_lengths import format_length_report

        click.echo("\n".join(format_label_stats(r) + (f"\n{format_length_report(r['tokens'])}" if "tokens" in r else "")
                             for r in reports))

"""``textclf leaderboard``, ``report``, ``ensemble``, ``tune-thresholds`` and ``calibrate``: compare and combine model directories."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from textclf.cli.options import FormatChoice, code_option, trust_code_option
from textclf.services.compare.ensemble import DEFAULT_BAGS
from textclf.services.compare.thresholds import DEFAULT_BETA, DEFAULT_CV


def data_format_options(fn: Callable) -> Callable:
    """``--text_column``, ``--label_column``, ``--data_format`` for labelled input."""
    fn = click.option("--data_format", type=FormatChoice("read"), default=None,
                      help="Format of the labelled file(s) (default: from the extension; a format from --code reads "
                      "what it understands, e.g. DB::TABLE for sqlite).")(fn)
    fn = click.option("--label_column", default="label", show_default=True, help="Label column/key (CSV/JSONL).")(fn)
    fn = click.option("--text_column", default="text", show_default=True, help="Text column/key (CSV/JSONL).")(fn)
    return fn


@click.command()
@code_option
@trust_code_option
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--data_path", type=click.Path(dir_okay=False), default=None,
              help="Rescore every model on this labelled file (needed when they were trained on different data). "
              "Default: the test split their meta.json records.")
@data_format_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML page with the table and a chart comparing the models (the chart also as .png beside it).")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON instead of a markdown table.")
@click.option("--n_boot", type=int, default=1000, show_default=True, help="Bootstrap resamples of the macro-F1 CI.")
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of the bootstrap.")
@click.option("--batch_size", type=int, default=1024, show_default=True)
@click.option("--thresholds/--no-thresholds", default=True, help="Apply tuned decision thresholds (default) or not.")
@click.option("--isolate/--no-isolate", default=True,
              help="Score each model in a fresh process (default; gives its own peak RSS) or in this one (no RSS).")
def leaderboard(model_dirs, data_path, text_column, label_column, data_format, html_path, as_json, n_boot, seed, batch_size,
                thresholds, isolate):
    """Compare MODEL_DIRS of any family on one test split: accuracy, macro-F1 (95 % CI), F0.5, speed, size, memory."""
    from textclf.services.compare.leaderboard import format_markdown, leaderboard, write_html

    board = leaderboard(model_dirs, data_path, data_format, text_column, label_column, n_boot, seed, batch_size, thresholds,
                        isolate, progress=lambda msg: click.echo(msg, err=True))
    if html_path:
        page, png = write_html(board, html_path)
        click.echo(f"wrote {page} and {png}", err=True)
    click.echo(json.dumps(board, indent=2) if as_json else format_markdown(board))


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory.")
@click.option("--data_path", required=True, type=click.Path(dir_okay=False), help="Labelled file to report on (e.g. test).")
@click.option("--out_dir", required=True, type=click.Path(file_okay=False), help="Folder for report.html, the PNGs and report.json.")
@data_format_options
@click.option("--beta", type=float, default=0.5, show_default=True, help="F-beta shown next to F1 in the per-class figure.")
@click.option("--top_errors", type=int, default=25, show_default=True, help="Worst misclassified examples to list.")
@click.option("--thresholds/--no-thresholds", default=True, help="Apply tuned decision thresholds (default) or not.")
@click.option("--batch_size", type=int, default=1024, show_default=True)
@click.option("--explain", type=int, default=0, show_default=True,
              help="Add an explanations section: token attributions of the first N texts (textclf explain).")
@click.option("--frontier", "frontier", multiple=True, type=click.Path(),
              help="Another model directory for the speed/quality frontier figure (repeatable; a cascade adds its members).")
def report(model_path, data_path, out_dir, text_column, label_column, data_format, beta, top_errors, thresholds, batch_size,
           explain, frontier):
    """Write an HTML report with figures: confusion matrix, per-class bars, PR curves, learning curves, search, errors."""
    from textclf.services.compare.report import write_report

    out = write_report(model_path, data_path, out_dir, beta, data_format, text_column, label_column, thresholds,
                       top_errors, batch_size, frontier, explain=explain)
    for key, why in out["skipped"].items():
        click.echo(f"skipped {key}: {why}", err=True)
    click.echo(f"wrote {out['html']} ({len(out['figures'])} figures: {', '.join(out['figures'].values())})")


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", "model_paths", required=True, multiple=True, type=click.Path(),
              help="A member model directory (repeat for every member; any family, same label set).")
@click.option("--valid_path", required=True, type=click.Path(dir_okay=False), help="Labelled file the weights/stacker learn on.")
@click.option("--output_dir", required=True, type=click.Path(file_okay=False), help="The ensemble's model directory.")
@click.option("--method", type=click.Choice(["auto", "weighted", "stacking"]), default="auto", show_default=True,
              help="weighted: simplex weights searched on valid; stacking: logistic regression on the members' probabilities; "
              "auto: the best single member, unless weighted or stacking beats it clearly out of fold (--cv folds on valid, "
              "paired bootstrap).")
@click.option("--beta", type=float, default=1.0, show_default=True, help="Maximise valid macro F-beta (1: macro-F1).")
@click.option("--objective", type=click.Choice(["fbeta", "logloss"]), default="fbeta", show_default=True,
              help="weighted: maximise valid macro F-beta, or minimise the valid log-loss of the average.")
@click.option("--copy", is_flag=True, help="Copy the members into OUTPUT_DIR/members/ (default: reference them by relative path).")
@click.option("--test_path", type=click.Path(dir_okay=False), default=None, help="Optional labelled test file, scored once.")
@click.option("--step", type=float, default=0.05, show_default=True, help="Weight grid step of the weighted search.")
@click.option("--bags", type=int, default=DEFAULT_BAGS, show_default=True,
              help="Bag the weight search: average the weights found on this many stratified bootstrap resamples of valid "
              "(0: the plain grid search).")
@click.option("--cv", type=int, default=5, show_default=True, help="Cross-validation folds of auto and of the stacker.")
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--max_model_mb", type=float, default=None,
              help="Size budget: the members' sizes summed (MB) stay within it; the best members alone on valid are kept "
              "first, the others skipped with a message.")
@click.option("--member_calibration", type=click.Choice(["temperature", "none"]), default="temperature", show_default=True,
              help="Scale each member's probabilities by a temperature fitted on valid before averaging them (one scale of "
              "confidence for every family; a member's own decisions do not change; stacking reads them as they are), "
              "or average them as they are.")
@data_format_options
@click.option("--batch_size", type=int, default=1024, show_default=True)
def ensemble(model_paths, valid_path, output_dir, method, beta, objective, copy, test_path, step, bags, cv, seed, max_model_mb,
             member_calibration, text_column, label_column, data_format, batch_size):
    """Combine model directories of any families into one ensemble model directory (kind ``ensemble``)."""
    from textclf.services.compare.ensemble import build_ensemble, weights_table

    meta = build_ensemble(model_paths, valid_path, output_dir, method, beta, copy, test_path, step, cv, seed, data_format,
                          text_column, label_column, batch_size, echo=True, objective=objective, bags=bags,
                          max_model_mb=max_model_mb, member_calibration=member_calibration)
    s = meta["ensemble_search"]
    click.echo(f"\n{weights_table(meta)}\n\nvalid {s['metric']}: {s['valid_score']:.4f} ({s.get('strategy') or 'cross-validated'})"
               f"; best single member on valid: {max(s['single']):.4f}")


@click.command("tune-thresholds")
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory (its meta.json gets the offsets).")
@click.option("--valid_path", type=click.Path(dir_okay=False), default=None, help="Labelled validation file.")
@click.option("--beta", type=float, default=DEFAULT_BETA, show_default=True,
              help="Maximise macro F-beta on valid (0.5 favours precision, 1 is macro-F1).")
@data_format_options
@click.option("--max_rounds", type=int, default=20, show_default=True, help="Rounds of coordinate search over the classes.")
@click.option("--cv", type=int, default=DEFAULT_CV, show_default=True,
              help="Keep the offsets only when the search, cross-validated on this many stratified folds of valid, beats "
              "the plain argmax out of fold (0: no check, keep any valid improvement).")
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of the folds.")
@click.option("--reset", is_flag=True, help="Remove the stored offsets instead (predict goes back to the plain argmax).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored thresholds block as JSON.")
def tune_thresholds(model_path, valid_path, beta, text_column, label_column, data_format, max_rounds, cv, seed, reset, as_json):
    """Tune per-class offsets on log-probabilities for macro F-beta on valid; store them in meta.json.

    A multi-label model gets a global and per-label probability thresholds for micro F-beta instead.
    """
    from textclf.core.loading import _resolve
    from textclf.services.compare.thresholds import save_thresholds, tune_thresholds

    if reset:
        save_thresholds(_resolve(model_path)[0], None)
        click.echo(f"removed the decision thresholds of {model_path}")
        return
    if not valid_path:
        raise click.UsageError("--valid_path is required (unless --reset)")
    block = tune_thresholds(model_path, valid_path, beta, data_format, text_column, label_column, max_rounds, cv=cv, seed=seed)
    if as_json:
        click.echo(json.dumps(block, indent=2))
        return
    if block.get("task") == "multilabel":
        click.echo(label_thresholds_summary(block, _resolve(model_path)[0]))
        return
    check = block.get("cv")
    if check:
        verdict = "kept" if check["accepted"] else "rejected: the model keeps the plain argmax"
        click.echo(f"out-of-fold check ({check['folds']}-fold CV on valid): {block['metric']} {check['oof_before']:.4f} "
                   f"untuned -> {check['oof_after']:.4f} tuned on the other folds; offsets {verdict}")
    offsets = ", ".join(f"{k} {v:+.3f}" for k, v in block["offsets"].items())
    click.echo(f"valid {block['metric']}: {block['valid_before']:.4f} -> {block['valid_after']:.4f} "
               f"(accuracy {block['valid_accuracy_before']:.4f} -> {block['valid_accuracy_after']:.4f}; "
               f"{block['moves']} move(s) in {block['rounds']} round(s))")
    click.echo(f"offsets on log-probabilities: {offsets}; stored in {_resolve(model_path)[0]}/meta.json "
               "(predict applies them; --no-thresholds turns them off)")


def label_thresholds_summary(block: dict, model_dir) -> str:
    """What ``tune-thresholds`` says about a multi-label model's thresholds block."""
    lines = []
    check = block.get("cv")
    if check:
        lines.append(f"out-of-fold check ({check['folds']}-fold CV on valid): {block['metric']} {check['oof_before']:.4f} "
                     f"untuned -> {check['oof_global']:.4f} global -> {check['oof_after']:.4f} per label; global "
                     f"{'kept' if check['global_accepted'] else 'rejected'}, per-label {'kept' if check['accepted'] else 'rejected'}")
    per_label = ", ".join(f"{k} {v:.3f}" for k, v in block["per_label"].items())
    lines.append(f"valid {block['metric']}: {block['valid_before']:.4f} -> {block['valid_after']:.4f} "
                 f"(subset accuracy {block['valid_accuracy_before']:.4f} -> {block['valid_accuracy_after']:.4f})")
    lines.append(f"global threshold {block['global']:.3f} (untuned {block['untuned_threshold']:g}); per label: {per_label}; "
                 f"stored in {model_dir}/meta.json (predict applies them; --no-thresholds turns them off)")
    return "\n".join(lines)


@click.command()
@code_option
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory (gets the calibration file).")
@click.option("--valid_path", type=click.Path(dir_okay=False), default=None, help="Labelled validation file.")
@click.option("--method", type=click.Choice(["auto", "temperature", "bcts", "isotonic", "none"]), default="auto",
              show_default=True,
              help="temperature scaling, bcts (temperature plus a bias per class: Platt scaling for two classes), isotonic "
              "regression, auto (the lowest cross-validated log-loss on valid, none included), or none (remove the "
              "calibration).")
@data_format_options
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of auto's folds.")
@click.option("--batch_size", type=int, default=1024, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the stored calibration block as JSON.")
def calibrate(model_path, valid_path, method, text_column, label_column, data_format, seed, batch_size, as_json):
    """Fit a probability calibrator on valid for an existing model; predict_proba then returns calibrated probabilities."""
    from textclf.core.loading import _resolve
    from textclf.core.meta import read_meta
    from textclf.services.calibrate import calibrate_model, summary

    if not valid_path and method != "none":
        raise click.UsageError("--valid_path is required (unless --method none)")
    block = calibrate_model(model_path, valid_path, method, data_format, text_column, label_column, seed, batch_size)
    model_dir = _resolve(model_path)[0]
    if as_json:
        click.echo(json.dumps(block, indent=2))
        return
    click.echo(summary(block, model_dir, bool(read_meta(model_dir).get("thresholds")) and method != "none"))

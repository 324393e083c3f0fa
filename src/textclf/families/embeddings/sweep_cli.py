"""``textclf sweep``: every encoder x classifier of the embeddings family, each with a small Optuna study; ranked table.

The logic (claims, resuming, workers, the table) is in :mod:`textclf.families.embeddings.sweep`.
"""

from __future__ import annotations

import click

from textclf.core.options import config_options, data_options, flag_overrides

DEFAULT_CLASSIFIERS = "logreg,linear_svm,knn,mlp,hgb"


@click.command("sweep")
@click.option("--encoders", default="minilm,tfidf_svd", show_default=True,
              help="Comma-separated encoders: minilm, mpnet, tfidf_svd, a sentence-transformers id or a local path.")
@click.option("--classifiers", default=DEFAULT_CLASSIFIERS, show_default=True, help="Comma-separated classifiers.")
@data_options
@config_options
@click.option("--n_trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Optuna trials per combination (the classifier's space + balance). Raising it later resumes each study.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes; each claims combinations until none is left.")
@click.option("--task_index", type=int, default=None,
              help="Run only combination N (0-based, encoder-major; a SLURM array passes $SLURM_ARRAY_TASK_ID); no table.")
@click.option("--report_only", is_flag=True, help="Only build sweep.csv from the finished results (and name the missing ones).")
@click.option("--list", "list_only", is_flag=True, help="Print 'index encoder classifier state' per combination and exit.")
@click.option("--storage", default=None,
              help="Optuna storage of the combinations' studies: a journal file or an RDB URL (default: a journal file "
              "per combination under OUTPUT_DIR/combos/).")
@click.option("--study_name", default="sweep", show_default=True, help="Prefix of the studies' names (<prefix>.<encoder>__<classifier>).")
@click.option("--bench_docs", type=click.IntRange(min=0), default=256, show_default=True,
              help="Valid texts timed end to end (encode + classify) for predict docs/s; 0: skip.")
@click.option("--seed", type=int, default=None, help="Seed of the whole run.")
@click.option("--device", default=None, help="Encoder device: auto (default), cpu, cuda, cuda:N or mps.")
@click.pass_context
def sweep(ctx: click.Context, encoders: str, classifiers: str, train_path: tuple[str, ...], valid_path: str, test_path: str | None,
          output_dir: str, config_path: str | None, overrides: tuple[str, ...], n_trials: int, workers: int,
          task_index: int | None, report_only: bool, list_only: bool, storage: str | None, study_name: str, bench_docs: int,
          seed: int | None, device: str | None) -> None:
    """Sweep encoder x classifier: a small Optuna study per combination, resumable, in parallel; a ranked table.

    Each finished combination writes OUTPUT_DIR/combos/<encoder>__<classifier>/result.json and its model
    directory (model/); a rerun skips finished combinations and resumes an interrupted one. The table
    (valid/test macro-F1, fit seconds, predict docs/s) is printed and written to OUTPUT_DIR/sweep.csv;
    OUTPUT_DIR/best points at the best model directory. Exit status 1 when a combination failed or is missing.
    """
    from textclf.core.config import load_config
    from textclf.core.progress import setup_logging
    from textclf.families.embeddings import sweep as sw

    setup_logging()
    modes = [name for name, on in (("--workers", workers > 1), ("--task_index", task_index is not None),
                                   ("--report_only", report_only), ("--list", list_only)) if on]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} exclude each other")
    if storage and "://" not in storage:  # a journal file: absolute, so every worker and array task finds the same one
        from pathlib import Path

        storage = str(Path(storage).absolute())
    flags = {"seed": seed, "device": device, "search.storage": storage}
    cfg = load_config("embeddings", config_path, [*overrides, *flag_overrides(flags)])
    enc_names = sw.split_names(encoders, "encoders")
    clf_names = sw.split_names(classifiers, "classifiers")
    sw.check_classifiers(clf_names, cfg)
    if not report_only:
        sw.check_encoders(enc_names)
    spec = sw.Sweep(cfg=cfg, output_dir=output_dir, encoders=enc_names, classifiers=clf_names, train_paths=list(train_path),
                    valid_path=valid_path, test_path=test_path, n_trials=n_trials, study_name=study_name, bench_docs=bench_docs)
    if list_only:
        sw.list_combinations(spec, click.echo)
        return
    status = sw.report_only(spec, click.echo) if report_only else sw.run_sweep(spec, workers, task_index, click.echo)
    ctx.exit(status)

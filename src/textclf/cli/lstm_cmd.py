"""``textclf train lstm`` / ``python allennlp/train.py`` and ``textclf tune lstm``: the BiLSTM family."""

from __future__ import annotations

from collections.abc import Callable

import click

from textclf.cli.options import config_options, data_options, prepare_run


def lstm_options(fn: Callable) -> Callable:
    """Flags shared by the train and tune commands (each maps onto a config key or the run)."""
    opts = [
        click.option("--device", default=None, help="auto (default; also $TEXTCLF_DEVICE), cpu, cuda, cuda:N."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT_DIR/checkpoints/last.ckpt."),
        click.option("--epochs", type=int, default=None, help="Maximum epochs (train.epochs)."),
        click.option("--batch_size", type=int, default=None, help="Training batch size (train.batch_size)."),
        click.option("--lr", type=float, default=None, help="Learning rate (train.lr)."),
        click.option("--patience", type=int, default=None, help="Epochs without a better validation score before stopping."),
        click.option("--beta", type=float, default=None, help="F-beta to report; alone it also selects on macro_f<beta> (train.beta)."),
        click.option("--metric", default=None, help="Validation metric selecting the best epoch (train.metric, default macro_f0.5)."),
        click.option("--pretrained_vectors", default=None, help="fastText .vec/.bin or word2vec text file (model.pretrained_vectors)."),
        click.option("--seed", type=int, default=None, help="Seed of the whole run."),
        click.option("--n_trials", type=int, default=None,
                     help="Optuna: finished trials the study should hold (resume counts old ones); then refit the best."),
        click.option("--timeout", type=float, default=None, help="Optuna: stop the search after this many seconds."),
        click.option("--storage", default=None, help="Optuna: journal file path or RDB URL (default OUTPUT_DIR/study.journal)."),
        click.option("--study_name", default=None, help="Optuna study name (default 'lstm')."),
        click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default=None, help="Optuna pruner."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _prepare(config_path, overrides, train_path, valid_path, test_path, epochs, batch_size, lr, patience, beta, metric,
             pretrained_vectors, seed, n_trials, timeout, storage, study_name, pruner):
    if beta is not None and metric is None:
        metric = f"macro_f{beta:g}"  # --beta 0.3 alone selects on macro F0.3
    flags = {"train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "train.patience": patience,
             "train.beta": beta, "train.metric": metric, "model.pretrained_vectors": pretrained_vectors, "seed": seed,
             "search.n_trials": n_trials, "search.timeout": timeout, "search.storage": storage,
             "search.study_name": study_name, "search.pruner": pruner}
    return prepare_run("lstm", config_path, overrides, flags, train_path, valid_path, test_path)


@click.command("lstm")
@data_options
@config_options
@lstm_options
def train_lstm(train_path, valid_path, test_path, output_dir, config_path, overrides, device, resume, n_trials, timeout, **kw):
    """Train a BiLSTM selected on validation macro F0.5 (TensorBoard logs in OUTPUT_DIR/tensorboard).

    With --n_trials N (or --timeout) an Optuna search runs first and its best params are refitted.
    """
    cfg, splits = _prepare(config_path, overrides, train_path, valid_path, test_path, n_trials=n_trials, timeout=timeout, **kw)
    from textclf.models import lstm

    if n_trials or timeout:
        lstm.tune(cfg, splits, output_dir, device)
    else:
        lstm.train(cfg, splits, output_dir, device, resume=resume)


@click.command("lstm")
@data_options
@config_options
@lstm_options
@click.option("--refit/--no-refit", default=True, help="Refit the best params after the search (SLURM workers pass --no-refit).")
def tune_lstm(train_path, valid_path, test_path, output_dir, config_path, overrides, device, resume, refit, **kw):
    """Optuna search over the BiLSTM (search.space; epoch reports feed the pruner), then refit the best."""
    cfg, splits = _prepare(config_path, overrides, train_path, valid_path, test_path, **kw)
    from textclf.models import lstm

    if resume:
        click.echo("note: a study always resumes from its storage; --resume is not needed for tune", err=True)
    lstm.tune(cfg, splits, output_dir, device, refit=refit)

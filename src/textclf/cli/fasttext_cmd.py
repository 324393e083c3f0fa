"""``textclf train fasttext`` / ``python fasttext/train.py``: Optuna-tuned fastText."""

from __future__ import annotations

import click

from textclf.cli.options import config_options, data_options, prepare_run


@click.command("fasttext")
@data_options
@config_options
@click.option("--n_trials", type=int, default=None, help="Finished trials the study should hold (resume counts old ones). 0: no search.")
@click.option("--timeout", type=float, default=None, help="Stop the search after this many seconds.")
@click.option("--n_jobs", type=int, default=None, help="Parallel trials in this process.")
@click.option("--metric", default=None, help="Validation metric to maximise: macro_f1 (default), macro_f0.5, accuracy, ...")
@click.option("--storage", default=None, help="Journal file path, or an RDB URL (postgresql://...) shared by workers.")
@click.option("--study_name", default=None, help="Optuna study name (default 'fasttext').")
@click.option("--seed", type=int, default=None, help="Seed for the sampler and fastText.")
@click.option("--quantize/--no-quantize", default=None, help="Also save a compressed model.ftz and use it.")
@click.option("--refit/--no-refit", default=True, help="Refit the best params after the search (workers pass --no-refit).")
def train_fasttext(train_path, valid_path, test_path, output_dir, config_path, overrides, n_trials, timeout, n_jobs,
                   metric, storage, study_name, seed, quantize, refit):
    """Search fastText hyper-parameters with Optuna, refit the best and save a model directory."""
    flags = {"search.n_trials": n_trials, "search.timeout": timeout, "search.n_jobs": n_jobs, "search.metric": metric,
             "search.storage": storage, "search.study_name": study_name, "seed": seed, "output.quantize": quantize}
    cfg, splits = prepare_run("fasttext", config_path, overrides, flags, train_path, valid_path, test_path)
    from textclf.models import fasttext_model

    if not refit:
        fasttext_model.search_only(cfg, splits, output_dir)
        return
    fasttext_model.train(cfg, splits, output_dir)

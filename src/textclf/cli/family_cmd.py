"""``textclf train <family>`` and ``textclf tune <family>``: one command builder for every registered family.

The flags every family shares (data paths, ``--config``/``--set``, ``--resume``, ``--seed`` and,
for families with a search space, the Optuna flags) come from here; a family adds its own
through :attr:`textclf.core.registry.Family.options`, each of which sets one config key.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from textclf.core.options import config_options, data_options
from textclf.core.registry import Family, Option, get_family
from textclf.services import runs
from textclf.services.runs import RunSpec

SEARCH_OPTIONS = (
    Option("--n_trials", "search.n_trials", int,
           "Optuna: finished trials the study should hold (resume counts old ones); then refit the best. 0: no search."),
    Option("--timeout", "search.timeout", float, "Optuna: stop the search after this many seconds."),
    Option("--storage", "search.storage", str,
           "Optuna: journal file path or RDB URL shared by workers (default OUTPUT_DIR/study.journal)."),
    Option("--study_name", "search.study_name", str, "Optuna study name (default: the family's name)."),
    Option("--refit", "search.refit", bool, "Refit the best params after the search (SLURM workers pass --no-refit).",
           is_flag=True, secondary="--no-refit"),
)
COMMON_OPTIONS = (Option("--seed", "seed", int, "Seed of the whole run."),)


def _click_option(opt: Option) -> Callable:
    if opt.is_flag:
        decl = f"{opt.flag}/{opt.secondary}" if opt.secondary else opt.flag
        return click.option(decl, opt.dest, default=None, help=opt.help)
    kind = click.Choice(opt.type) if isinstance(opt.type, list | tuple) else opt.type
    return click.option(opt.flag, opt.dest, type=kind, default=None, help=opt.help)


def family_options(family: Family, tune: bool) -> list[Option]:
    """Every flag the family's train (or tune) command takes, its own first."""
    opts = list(family.options)
    names = {o.flag for o in opts}
    shared = [*COMMON_OPTIONS, *(SEARCH_OPTIONS if (tune or family.searchable) else ())]
    return opts + [o for o in shared if o.flag not in names]


def tracking_options(fn: Callable) -> Callable:
    """``--tracking_uri``, ``--track/--no-track`` and ``--force`` (train, tune)."""
    fn = click.option("--force", is_flag=True,
                      help="Never reuse an earlier run (overrides --reuse).")(fn)
    fn = click.option("--reuse", "--skip-existing", "reuse", is_flag=True,
                      help="When a finished run in the store has the same family, config and data, copy its model to "
                      "OUTPUT_DIR instead of training.")(fn)
    return store_options(fn)


def store_options(fn: Callable) -> Callable:
    """``--tracking_uri`` and ``--track/--no-track`` (also the queue worker's)."""
    fn = click.option("--track/--no-track", "track", default=None,
                      help="Record the run in the MLflow experiment store (default on; env TEXTCLF_TRACK=0: off).")(fn)
    fn = click.option("--tracking_uri", default=None, metavar="URI",
                      help="MLflow store: sqlite:///file.db or http://server:5000 (default $MLFLOW_TRACKING_URI, "
                      "else sqlite:///runs/mlflow.db).")(fn)
    return fn


def train_command(name: str, tune: bool = False) -> click.Command:
    """The click command that trains (``tune``: searches, then refits) the family called ``name``."""
    family = get_family(name)
    options = family_options(family, tune)

    def callback(train_path, valid_path, test_path, output_dir, config_path, overrides, resume, tracking_uri, track,
                 force, reuse, **kw):
        spec = RunSpec(family=family.name, train_path=train_path, valid_path=valid_path, test_path=test_path,
                       output_dir=output_dir, config=config_path, overrides=tuple(overrides),
                       flags={o.key: kw.get(o.dest) for o in options if o.key}, resume=resume, track=track,
                       tracking_uri=tracking_uri, reuse=reuse, force=force, command="tune" if tune else "train")
        (runs.tune if tune else runs.train)(spec)

    what = "Search hyper-parameters with Optuna, then refit the best" if tune else "Train"
    doc = f"{what}: {family.description}.\n\nConfig: {family.config_path() or '(given by the plug-in)'}, " \
          f"then your config/{family.name}.json when there is one; --set key=value overrides any key."
    if family.searchable and not tune:
        doc += " With --n_trials N (or search.n_trials in the config) an Optuna search runs first."
    cmd: Callable = callback
    for opt in reversed(options):
        cmd = _click_option(opt)(cmd)
    cmd = tracking_options(cmd)
    cmd = click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTPUT_DIR (studies always resume).")(cmd)
    cmd = config_options(cmd)
    cmd = data_options(cmd)
    return click.command(family.name, help=doc)(cmd)

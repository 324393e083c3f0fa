"""``textclf runs``: the experiment store as a leaderboard; show, diff and re-run past runs.

Every ``train``/``tune`` run is an MLflow run (:mod:`textclf.services.tracking`); these commands read the
same store (``--tracking_uri``, ``$MLFLOW_TRACKING_URI`` or ``sqlite:///runs/mlflow.db``). A run
id may be shortened to any unique prefix of 4 characters or more.
"""

from __future__ import annotations

import json

import click

from textclf.services.runs import run_summary, started
from textclf.services.tracking import BEST_PARAM, TAG, open_store

#: columns of ``runs list``: header -> metric key
LIST_METRICS = {"valid_f1": "valid.macro_f1", "test_f1": "test.macro_f1", "test_acc": "test.accuracy",
                "test_ece": "test.ece", "size_mb": "model_mb", "seconds": "train_seconds"}


def uri_option(fn):
    """``--tracking_uri`` for the read-only commands."""
    return click.option("--tracking_uri", default=None, metavar="URI",
                        help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db).")(fn)


def fmt(value) -> str:
    """A metric for a table: 6 significant digits; missing: ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def config_params(run) -> dict[str, str]:
    """The run's effective config as flat params (best params of a search included)."""
    return dict(sorted(run.data.params.items()))


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@click.group()
def runs() -> None:
    """The experiment store: list (a leaderboard), show, diff and rerun past runs."""


@runs.command("list")
@click.option("--dataset", default=None, help="Only runs on this dataset (the training file's folder name).")
@click.option("--family", default=None, help="Only runs of this family.")
@click.option("--status", default=None, type=click.Choice(["FINISHED", "FAILED", "KILLED", "RUNNING"]),
              help="Only runs in this state.")
@click.option("--sort", "sort_key", default="test.macro_f1", show_default=True,
              help="Metric to sort by, best first (runs without it last).")
@click.option("--limit", default=50, show_default=True, help="Show at most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every metric, full ids).")
@uri_option
def list_runs(dataset, family, status, sort_key, limit, as_json, tracking_uri) -> None:
    """One leaderboard across families: the best runs by --sort first."""
    store = open_store(tracking_uri, create=False)
    found = [r for r in store.search(f"attributes.status = '{status}'" if status else "")
             if all(r.data.tags.get(f"{TAG}{key}") == value for key, value in (("dataset", dataset), ("family", family))
                    if value)]
    lower_better = sort_key.endswith(("loss", "seconds", "_mb", "ece", "ece_adaptive", "brier"))
    found.sort(key=lambda r: (sort_key not in r.data.metrics,
                              (1 if lower_better else -1) * r.data.metrics.get(sort_key, 0.0)))
    found = found[:limit]
    if as_json:
        click.echo(json.dumps([run_summary(r) for r in found], indent=2))
        return
    if not found:
        click.echo(f"no runs in {store.uri}")
        return
    metrics = dict(LIST_METRICS)
    if sort_key not in metrics.values():
        metrics[sort_key] = sort_key
    rows = [["run", "started", "family", "task", "dataset", "status", *metrics, "model_dir"]]
    for r in found:
        tags = r.data.tags
        rows.append([r.info.run_id[:8], started(r), tags.get(f"{TAG}family", "-"), tags.get(f"{TAG}task", "multiclass"),
                     tags.get(f"{TAG}dataset", "-"),
                     r.info.status, *[fmt(r.data.metrics.get(k)) for k in metrics.values()],
                     tags.get(f"{TAG}model_dir", "-")])
    click.echo(table(rows))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: tags, params, metrics.")
@uri_option
def show(run_id, as_json, tracking_uri) -> None:
    """Everything recorded about one run: tags, config, metrics."""
    run = open_store(tracking_uri, create=False).get_run(run_id)
    if as_json:
        out = {**run_summary(run), "tags": dict(sorted(run.data.tags.items())), "params": config_params(run)}
        click.echo(json.dumps(out, indent=2))
        return
    s = run_summary(run)
    lines = [f"run        {s['run_id']}", f"status     {s['status']}", f"family     {s['family']}",
             f"task       {s['task']}", f"dataset    {s['dataset']}", f"command    {s['command']}", f"started    {s['started']}",
             f"model_dir  {s['model_dir']}"]
    if s["parent_run"]:
        lines.append(f"parent     {s['parent_run']} (--set {' '.join(json.loads(run.data.tags.get(TAG + 'overrides', '[]')))})")
    if run.data.tags.get(f"{TAG}error"):
        lines.append(f"error      {run.data.tags[TAG + 'error']}")
    lines.append("tags:")
    shown = {"family", "task", "dataset", "command", "model_dir", "parent_run", "overrides", "error"}
    lines += [f"  {k} = {v}" for k, v in sorted(run.data.tags.items())
              if k.startswith(TAG) and k[len(TAG):] not in shown]
    lines.append("config:")
    lines += [f"  {k} = {v}" for k, v in config_params(run).items() if not k.startswith(BEST_PARAM)]
    best = {k: v for k, v in config_params(run).items() if k.startswith(BEST_PARAM)}
    if best:
        lines.append("best params (search):")
        lines += [f"  {k[len(BEST_PARAM):]} = {v}" for k, v in best.items()]
    lines.append("metrics:")
    lines += [f"  {k} = {fmt(v)}" for k, v in sorted(run.data.metrics.items()) if not k.startswith("curve.")]
    curves = sorted(k for k in run.data.metrics if k.startswith("curve."))
    if curves:
        lines.append(f"curves (per epoch, see the MLflow UI): {', '.join(curves)}")
    click.echo("\n".join(lines))


@runs.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@uri_option
def diff(run_a, run_b, tracking_uri) -> None:
    """Only the config keys, data and metrics that differ between two runs."""
    store = open_store(tracking_uri, create=False)
    a, b = store.get_run(run_a), store.get_run(run_b)
    sections = {
        "run": {k: (a.data.tags.get(f"{TAG}{k}"), b.data.tags.get(f"{TAG}{k}"))
                for k in ("family", "dataset", "data_sha256", "sha256.train", "data_lineage", "data_rows_changed", "git_commit")},
        "config": {k: (a.data.params.get(k), b.data.params.get(k)) for k in sorted(set(a.data.params) | set(b.data.params))},
        "metrics": {k: (a.data.metrics.get(k), b.data.metrics.get(k))
                    for k in sorted(set(a.data.metrics) | set(b.data.metrics)) if not k.startswith("curve.")},
    }
    rows = [["", a.info.run_id[:8], b.info.run_id[:8]]]
    for name, values in sections.items():
        changed = [[f"  {k}", fmt(va), fmt(vb)] for k, (va, vb) in values.items() if va != vb]
        if changed:
            rows += [[f"{name}:", "", ""], *changed]
    if len(rows) == 1:
        click.echo(f"runs {a.info.run_id[:8]} and {b.info.run_id[:8]} have the same config, data and metrics")
        return
    click.echo(table(rows))


@runs.command("rerun")
@click.argument("run_id")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a config value of the past run, e.g. --set model.lr=0.3. Repeatable.")
@click.option("--output_dir", default=None, type=click.Path(file_okay=False),
              help="Model directory (default: the parent's, suffixed with -rerun-<hash of the change>).")
@click.option("--reuse", "--skip-existing", "reuse", is_flag=True,
              help="When a finished run has the same config and data, copy its model to OUTPUT_DIR instead of training.")
@click.option("--force", is_flag=True, help="Never reuse an earlier run (overrides --reuse).")
@uri_option
def rerun(run_id, overrides, output_dir, reuse, force, tracking_uri) -> None:
    """Re-run a past run on the same data paths with changed settings (tagged with its parent run)."""
    from textclf.services.runs import rerun as rerun_run

    rerun_run(run_id, overrides, output_dir, force, tracking_uri, reuse=reuse)

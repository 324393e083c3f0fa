"""``textclf audit``, ``textclf audit apply`` and ``textclf serve-audit``: find, review and fix wrong training labels.

See docs/audit.md and :mod:`textclf.services.audit`.
"""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
@click.option("--data_path", default=None, type=click.Path(dir_okay=False), help="The labelled file to audit.")
@click.option("--family", "families", multiple=True, metavar="NAME",
              help="A family whose out-of-fold probabilities are averaged (repeatable; default fasttext and embeddings).")
@click.option("--folds", default=5, show_default=True, type=int, help="Stratified folds (scikit-learn StratifiedKFold).")
@click.option("--output_dir", default="audit", show_default=True, type=click.Path(file_okay=False),
              help="Where issues.csv, relabel.csv, audit.json and audit.html go.")
@click.option("--seed", default=13, show_default=True, type=int, help="Seed of the folds and of every fit.")
@click.option("--set", "overrides", multiple=True, metavar="[FAMILY:]KEY=VALUE",
              help="Config override for every family, or one (--set fasttext:model.epoch=10). Repeatable.")
@click.option("--top", default=10, show_default=True, type=int, help="Print this many suspects.")
@click.option("--queue", "queue_storage", default=None, metavar="STORAGE",
              help="Run the fold fits as tasks of the run queue in this Optuna storage (sqlite:///runs/queue.db, "
                   "postgresql://..., a journal file), so `textclf queue worker` processes elsewhere share them.")
@click.option("--queue_name", default=None, help="The queue's name (default audit-<data SHA-256 prefix>).")
@click.option("--work/--no-work", default=True, show_default=True,
              help="With --queue: this process works the queue too (else it only waits for the workers).")
@click.option("--wait", "wait_s", default=None, type=float, metavar="SECONDS",
              help="With --queue: give up (one line, exit 2) when fold tasks are still unfinished after this long.")
@click.pass_context
def audit(ctx, data_path, families, folds, output_dir, seed, overrides, top, queue_storage, queue_name, work,
          wait_s) -> None:
    """Rank likely label errors of DATA_PATH: K-fold out-of-fold probabilities of each family, cleanlab, duplicates."""
    if ctx.invoked_subcommand is not None:
        return
    if not data_path:
        raise click.UsageError("Missing option '--data_path'.")
    from pathlib import Path

    from textclf.services.audit.run import DEFAULT_FAMILIES, QueueSpec, run_audit

    queue = QueueSpec(queue_storage, queue_name, work, wait_s) if queue_storage else None
    if queue is None and (queue_name or not work or wait_s is not None):
        raise click.UsageError("--queue_name, --no-work and --wait need --queue STORAGE")
    result = run_audit(data_path, output_dir, families or DEFAULT_FAMILIES, folds, seed, overrides, queue)
    out = Path(output_dir)
    click.echo(f"{len(result.data)} rows, {len(result.issues)} issues on {len(result.rows)} rows "
               f"({', '.join(families or DEFAULT_FAMILIES)}, {folds}-fold)")
    for r in result.rows[:top]:
        text = " ".join(r["text"].split())
        click.echo(f"  row {r['row']:>6}  {r['given']} -> {r['suggested']}  conf {r['self_confidence']:.3f}  "
                   f"{text[:70]}{'...' if len(text) > 70 else ''}")
    click.echo(f"review: {out / 'audit.html'} (or textclf serve-audit {out}); edit {out / 'relabel.csv'}, then "
               f"textclf audit apply {out / 'relabel.csv'} --data_path {data_path} --output_path NEW_FILE")


@audit.command("apply")
@click.argument("relabel_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--data_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The audited file (left untouched).")
@click.option("--output_path", required=True, type=click.Path(dir_okay=False), help="The new version of the data.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="How to read the data, e.g. --set data.text_column=body.")
def apply(relabel_path, data_path, output_path, overrides) -> None:
    """Write OUTPUT_PATH: DATA_PATH with RELABEL_PATH's decisions (relabel, drop) and a lineage sidecar."""
    from textclf.core.lineage import lineage_path
    from textclf.services.audit.apply import apply_file
    from textclf.services.audit.run import DEFAULT_FAMILIES, read_data

    ds = read_data(data_path, DEFAULT_FAMILIES[:1], overrides)
    done = apply_file(relabel_path, data_path, output_path, ds)
    click.echo(f"{output_path}: {done.rows_after} rows ({done.relabelled} relabelled, {done.dropped} dropped of "
               f"{done.rows_before}); lineage in {lineage_path(output_path)}; {data_path} unchanged")


@click.command("serve-audit")
@click.argument("audit_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8766, show_default=True, type=int, help="Port (0: a free one).")
def serve_audit(audit_dir, host, port) -> None:
    """Serve AUDIT_DIR's review page; every decision is saved straight to AUDIT_DIR/relabel.csv."""
    import uvicorn

    from textclf.cli.serve_cmd import bind, is_loopback
    from textclf.services.audit.server import make_app

    app = make_app(audit_dir)
    sock = bind(host, port)
    if not is_loopback(host):
        click.echo(f"warning: serving on {host}: anyone who reaches it can change {audit_dir}/relabel.csv", err=True)
    click.echo(f"label audit review page: http://{host}:{sock.getsockname()[1]}/ (Ctrl-C to stop)")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])

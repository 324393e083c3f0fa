"""``python -m textclf.cli.bert_worker --job FILE``: one DDP worker of ``textclf train bert --devices N``.

The BERT family's ``fit`` launches this module by name under torch.distributed.run
(:func:`textclf.families.bert.workers.launch_workers`). A worker
only trains from the job file; rank 0 saves the model files, and the launching process (the core's
flow) evaluates the model and writes meta.json.
"""

import click


@click.command()
@click.option("--job", "job", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The job file the launching process wrote.")
def main(job: str) -> None:
    """Train one DDP process of a BERT run."""
    from textclf.core.progress import setup_logging
    from textclf.families.bert.workers import run_worker

    setup_logging()
    run_worker(job)  # a TextclfError is a ClickException: one line, exit 2


if __name__ == "__main__":
    main()

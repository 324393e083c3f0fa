"""Training in DDP worker processes for ``devices > 1``: the launching side and the worker side.

:func:`launch_workers` (called by :func:`.fit.fit` in the launching process) writes one job file and
starts ``devices`` processes of :data:`WORKER_MODULE` under torch.distributed.run
(:func:`.distributed.launch`); each runs :func:`run_worker`, which only trains
(:func:`.train.train_model`). Rank 0 saves the model files and its ``fit_info``; the core, in the
launching process, evaluates the model and writes meta.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from textclf.core.atomic import atomic_write_json
from textclf.core.data import Dataset
from textclf.core.training import Splits
from textclf.families.bert.distributed import launch, world_info

#: the module each DDP worker runs (``python -m``): it trains from a job file (:func:`run_worker`)
WORKER_MODULE = "textclf.cli.bert_worker"
#: the folder (in the model directory, removed afterwards) with the workers' job file and rank 0's fit_info
LAUNCH_DIR = ".ddp-launch"
JOB_FILE = "job.json"
FIT_INFO_FILE = "fit_info.json"


def _dataset_json(ds) -> dict:
    return {"texts": list(ds.texts), "labels": list(ds.labels), "path": ds.path}


def launch_workers(cfg: dict, splits, output_dir: str | os.PathLike, resume: bool) -> dict:
    """Train in ``cfg["devices"]`` DDP workers under torch.distributed.run; returns rank 0's ``fit_info``.

    The workers read one job file (the effective config, the train/valid texts and labels, the
    output directory), so they need neither the data files nor the plug-in code that read them;
    they train only (:func:`run_worker`). Rank 0 saves the model files into ``output_dir`` and
    writes its ``fit_info`` beside the job file; meta.json is left to the core in this process.
    """
    n = cfg["devices"]
    launch_dir = Path(output_dir) / LAUNCH_DIR
    shutil.rmtree(launch_dir, ignore_errors=True)
    launch_dir.mkdir(parents=True)
    try:
        job = {"cfg": cfg, "output_dir": str(output_dir), "resume": bool(resume), "labels": list(splits.labels),
               "data_sha256": splits.data_sha256, "paths": splits.paths,
               "train": _dataset_json(splits.train), "valid": _dataset_json(splits.valid)}
        atomic_write_json(launch_dir / JOB_FILE, job)
        args = ["--job", str(launch_dir / JOB_FILE)]
        print(f"launching {n} DDP workers: torch.distributed.run --nproc_per_node {n} -m {WORKER_MODULE} "
              + " ".join(args), file=sys.stderr, flush=True)
        code = launch(n, WORKER_MODULE, args)
        info_path = launch_dir / FIT_INFO_FILE
        if code or not info_path.is_file():
            raise click.ClickException(f"distributed training failed (exit code {code}); see the worker output above")
        return json.loads(info_path.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(launch_dir, ignore_errors=True)


def run_worker(job_path: str | os.PathLike) -> None:
    """One DDP worker: train from the job file of :func:`launch_workers`; rank 0 writes the ``fit_info`` beside it."""
    from textclf.families.bert.train import train_model

    job_path = Path(job_path)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    splits = Splits(train=Dataset(**job["train"]), valid=Dataset(**job["valid"]), test=None, labels=job["labels"],
                    data_sha256=job["data_sha256"], paths=job["paths"])
    predictor = train_model(job["cfg"], splits, job["output_dir"], world=world_info(), resume=job["resume"])
    if predictor is not None:
        atomic_write_json(job_path.parent / FIT_INFO_FILE, predictor.fit_info)

"""``textclf train bert`` / ``python bert_classification/train.py``: fine-tune a Hugging Face encoder in Catalyst.

``--devices N`` (N > 1) relaunches the same command in N processes under
``torch.distributed.run`` (DDP: NCCL on GPUs, gloo on the CPU); ``python -m
textclf.cli.bert_cmd`` is the worker entry point it uses, and ``torchrun --nproc_per_node N
bert_classification/train.py ...`` works as well.
"""

from __future__ import annotations

import json
import os

import click

from textclf.cli.options import config_options, data_options, prepare_run

WORKER_MODULE = "textclf.cli.bert_cmd"


@click.command("bert")
@data_options
@config_options
@click.option("--model_name", default=None,
              help="Hugging Face id or local path of the encoder (e.g. DeepPavlov/rubert-base-cased); "
                   "'auto' (default): the shipped all-MiniLM-L6-v2.")
@click.option("--two_stage/--one_stage", "two_stage", default=None,
              help="Stage 1 on a class-balanced downsample, stage 2 on the full train set from stage 1's best weights "
                   "(default: config two_stage, true).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default: config device, or $TEXTCLF_DEVICE).")
@click.option("--devices", type=int, default=None,
              help="Processes for DistributedDataParallel training (one GPU each on CUDA, gloo on the CPU). Default 1.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in --output_dir (last epoch of each stage).")
@click.option("--max_length", type=int, default=None, help="Maximum tokens per text (model.max_length).")
@click.option("--batch_size", type=int, default=None, help="Training batch size per process (train.batch_size).")
@click.option("--metric", default=None, help="Validation metric for best checkpoint / early stopping: macro_f1 (default), "
                                             "macro_f0.5, accuracy, loss, ...")
@click.option("--seed", type=int, default=None)
@click.option("--progress/--no-progress", default=None, help="Per-batch progress bars (default: on a terminal).")
def train_bert(train_path, valid_path, test_path, output_dir, config_path, overrides, model_name, two_stage, device, devices,
               resume, max_length, batch_size, metric, seed, progress):
    """Fine-tune a BERT-like encoder with focal loss (optionally in two stages) and save a model directory."""
    flags = {"model.model_name": model_name, "two_stage": two_stage, "device": device, "devices": devices,
             "model.max_length": max_length, "train.batch_size": batch_size, "train.metric": metric, "seed": seed,
             "train.progress": progress}
    cfg, splits = prepare_run("bert", config_path, overrides, flags, train_path, valid_path, test_path)
    from textclf.distributed import check_devices, world_info

    n = cfg["devices"]
    if not world_info().distributed:
        from textclf.torch_common import resolve_device

        check_devices(n, resolve_device(cfg["device"]).type)
        if n > 1:
            _launch_workers(cfg, n, train_path, valid_path, test_path, output_dir, resume)
            return
    from textclf.models import bert

    bert.train(cfg, splits, output_dir, resume=resume)


def _launch_workers(cfg: dict, n: int, train_path, valid_path, test_path, output_dir, resume: bool) -> None:
    """Write the effective config next to the model and start ``n`` workers on it under torch.distributed.run."""
    from textclf.atomic import atomic_write_json
    from textclf.distributed import launch

    os.makedirs(output_dir, exist_ok=True)
    cfg_path = os.path.join(output_dir, "launch_config.json")
    atomic_write_json(cfg_path, cfg)
    args = ["--train_path", str(train_path), "--valid_path", str(valid_path), "--output_dir", str(output_dir),
            "--config", cfg_path]
    if test_path:
        args += ["--test_path", str(test_path)]
    if resume:
        args.append("--resume")
    click.echo(f"launching {n} DDP workers: torch.distributed.run --nproc_per_node {n} -m {WORKER_MODULE} "
               + " ".join(json.dumps(a) if " " in a else a for a in args), err=True)
    code = launch(n, WORKER_MODULE, args)
    if code:
        raise click.ClickException(f"distributed training failed (exit code {code}); see the worker output above")


if __name__ == "__main__":
    train_bert()

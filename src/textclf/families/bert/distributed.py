"""Multi-process (DistributedDataParallel) training: who am I, and how to start N of us.

A run with ``--devices N`` (N > 1) trains in N processes under ``torch.distributed.run``
(what ``torchrun --standalone --nproc_per_node N`` does), so the same command works on a
laptop, in a container and in a SLURM job. Inside each worker the usual torchrun
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) is
set; Catalyst's engine (an ``accelerate.Accelerator``) reads it and joins the process group:
NCCL on GPUs (one GPU per local rank), gloo on the CPU. The workers only train
(:func:`.workers.run_worker`); the launching process returns the model to the core, which writes meta.json.
Starting the processes yourself with ``torchrun --nproc_per_node N bert_classification/train.py ...``
works too: every process then runs the command, and rank 0 alone finishes the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from textclf.core.errors import ConfigError


@dataclass(frozen=True)
class WorldInfo:
    """This process's place in a torchrun-style job (``world_size == 1`` when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True inside a multi-process job."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and the model directory."""
        return self.rank == 0


def world_info() -> WorldInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` from the environment (torchrun, SLURM via torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return WorldInfo()
    return WorldInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), size)


def check_devices(devices: int, device_type: str) -> None:
    """Fail early when ``devices`` processes cannot get a device each."""
    if devices < 1:
        raise ConfigError(f"--devices must be at least 1, got {devices}")
    if device_type == "cuda":
        import torch

        count = torch.cuda.device_count()
        if devices > count:
            raise ConfigError(f"--devices {devices}: only {count} CUDA device(s) visible; use --devices {count} or --device cpu")


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """The ``python -m torch.distributed.run --standalone --nproc_per_node N -m module args...`` command line."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def launch(nproc: int, module: str, args: Sequence[str], env: dict | None = None) -> int:
    """Run ``module`` in ``nproc`` processes under torch.distributed.run; returns the exit code.

    The workers see ``WORLD_SIZE`` > 1 (:func:`world_info`), so they train instead of launching again.
    """
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, module, args), env=child_env)

"""`textclf sweep` as a SLURM job array on a real single-node cluster (slurm/local-cluster.sh), then the report job.

``make sweep_slurm`` submits one array task per encoder x classifier (slurm/sweep.sbatch appends
``--task_index $SLURM_ARRAY_TASK_ID``) and an ``afterany`` job running ``textclf sweep ... --report_only``.
Starting the daemons needs root on Debian, so this runs only with TEXTCLF_INFRA_TESTS=1
(``make test_infra``), like tests/test_slurm.py, and otherwise skips with that reason.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
INFRA = os.environ.get("TEXTCLF_INFRA_TESTS") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the repo, echo its output into the test log, fail with the tail on error."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(f"$ {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}\n")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """A fresh cluster on free ports in a temporary folder; yields the environment for sbatch/make."""
    if not INFRA:
        pytest.skip("SLURM tests start daemons as root: set TEXTCLF_INFRA_TESTS=1 or run `make test_infra`")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (munged/slurmd)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm is not installed and apt-get is unavailable")
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURMCTLD_PORT=str(free_port()), SLURMD_PORT=str(free_port()), SLURM_CONF=str(d / "slurm.conf"))
    up = run(["bash", "slurm/local-cluster.sh", "up", str(d)], env, timeout=300, check=False)
    if up.returncode == 3:
        pytest.skip(f"cannot install SLURM here: {up.stderr.strip()}")
    assert up.returncode == 0, up.stderr
    yield env
    run(["bash", "slurm/local-cluster.sh", "down", str(d)], env, check=False)


def wait(env: dict, *job_ids: str) -> int:
    return run(["bash", "slurm/wait.sh", *job_ids], dict(env, WAIT_TIMEOUT="400"), check=False).returncode


def job_states(env: dict, job_id: str) -> list[tuple[str, int]]:
    """(JobState, exit code) of every task of a job, from scontrol (no accounting needed)."""
    out = run(["scontrol", "show", "job", "-o", job_id], env).stdout
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"JobState=(\S+).*? ExitCode=(\d+):\d+", out)]


def _head(src: Path, dst: Path, n: int) -> str:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[: n + 1]), encoding="utf-8")
    return str(dst)


def test_sweep_array_then_report(cluster, tweets, tmp_path):
    data, out, logs = tmp_path / "data", tmp_path / "sweep", tmp_path / "logs"
    data.mkdir()
    variables = {"SWEEP_ENCODERS": "minilm,tfidf_svd", "SWEEP_CLASSIFIERS": "logreg,knn", "SWEEP_TRIALS": "3",
                 "SWEEP_DIR": str(out), "SLURM_LOGS": str(logs), "WORKER_CPUS": "1", "WORKER_MEM": "2G", "TIME_LIMIT": "0:15:00",
                 "TRAIN_PATH": _head(tweets["train"], data / "train.csv", 160),
                 "VALID_PATH": _head(tweets["valid"], data / "valid.csv", 60),
                 "TEST_PATH": _head(tweets["test"], data / "test.csv", 60),
                 "SET": "tfidf_svd.n_components=16", "SWEEP_FLAGS": "--bench_docs 16 --device cpu"}
    env = dict(cluster, TEXTCLF_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if "\nsweep_slurm:" not in (REPO / "Makefile").read_text():
        pytest.skip("the Makefile has no sweep_slurm target yet (notes/sweep.md holds it)")
    proc = run(["make", "--no-print-directory", "sweep_slurm", *[f"{k}={v}" for k, v in variables.items()]], env)
    array, report = re.search(r"array_job=(\d+) report_job=(\d+)", proc.stdout).groups()
    assert "submitted 4 sweep combinations" in proc.stdout

    assert wait(env, array, report) == 0, "".join(p.read_text()[-2000:] for p in sorted(logs.iterdir()))
    assert job_states(env, array) == [("COMPLETED", 0)] * 4
    names = ["minilm__logreg", "minilm__knn", "tfidf_svd__logreg", "tfidf_svd__knn"]
    for index, name in enumerate(names):  # task i ran combination i, once
        res = json.loads((out / "combos" / name / "result.json").read_text())
        assert res["index"] == index
        assert res["worker"]["slurm_array_task_id"] == str(index) and res["worker"]["slurm_array_job_id"] == array
        assert len((out / "combos" / name / "attempts.log").read_text().splitlines()) == 1
        log = (logs / f"textclf-sweep-{array}_{index}.out").read_text()
        assert f"--task_index {index}" in log
    report_log = (logs / f"textclf-sweep-report-{report}.out").read_text()
    assert "--report_only" in report_log and "4/4 combinations finished" in report_log
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(f"{r['encoder']}__{r['classifier']}" for r in rows) == sorted(names)
    assert (out / "best" / "meta.json").exists()

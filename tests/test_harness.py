"""The test harness itself: ``make test`` runs on several xdist workers, and the daemon tests must not overlap."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import INFRA_LOCK, REPO, infra_lock  # noqa: E402

TAKE_LOCK = "import fcntl, sys; fcntl.flock(open(sys.argv[1], 'a'), fcntl.LOCK_EX | fcntl.LOCK_NB)"


def other_process_takes_the_lock() -> bool:
    """Whether a second process could take the daemon fixtures' lock right now (without waiting)."""
    return subprocess.run([sys.executable, "-c", TAKE_LOCK, str(INFRA_LOCK)], capture_output=True).returncode == 0


@pytest.mark.xdist_group("infra")  # beside the daemon tests, whose fixtures hold the same lock
def test_infra_lock_is_reentrant_and_excludes_other_processes():
    with infra_lock():
        with infra_lock():  # a module's cluster and PostgreSQL fixtures nest
            assert not other_process_takes_the_lock()
        assert not other_process_takes_the_lock()  # the inner exit keeps the outer hold
    assert other_process_takes_the_lock()


def test_daemon_tests_share_one_worker_under_loadgroup():
    """`make test`'s options put every SLURM/PostgreSQL test on one worker (they skip here without the infra flag)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TEXTCLF_INFRA"))}  # a fresh run
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "tests/test_experiments.py", "tests/test_slurm.py", "-k", "slurm_worker_array or worker_array_on or bad_grid_file"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = re.findall(r"^\[(gw\d)\] \[ *\d+%\] (?:PASSED|SKIPPED) (\S+)", result.stdout, re.M)
    infra = {(worker, node) for worker, node in lines if "worker_array" in node}
    assert len(infra) == 4 and all(node.endswith("@infra") for _, node in infra), lines
    assert len({worker for worker, _ in infra}) == 1, infra
    assert not any(node.endswith("@infra") for _, node in lines if "bad_grid_file" in node)

"""The one "is its holder alive" rule (textclf.core.claims) on real processes, and its users.

Children are real interpreters: a live one, one killed with SIGKILL and reaped, one killed and left
a zombie. Owner records of another host, with another pid start, or of an earlier run of a requeued
SLURM job are never taken for the process that now has the pid. Then the same rule deciding for a
search's stale trials (a real Optuna journal), a sweep's claim file and owner-tagged temp files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from textclf.core import claims, tempfiles, tuning
from textclf.core.claims import HOST, owner_alive, owner_gone, pid_alive, process_start


def child() -> subprocess.Popen:
    """A live child interpreter (it sleeps until killed)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.fixture
def live():
    proc = child()
    yield proc
    proc.kill()
    proc.wait()


def killed_and_reaped() -> dict:
    """The owner record of a child that ran, was killed with SIGKILL and reaped."""
    proc = child()
    record = claims.owner_record(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return record


def record_of(proc: subprocess.Popen, **changes) -> dict:
    return {**claims.owner_record(proc.pid), **changes}


def test_live_child_is_alive(live):
    record = claims.owner_record(live.pid)
    assert record["host"] == HOST and record["pid"] == live.pid and isinstance(record["pid_start"], float)
    assert record["pid_start"] == process_start(live.pid)  # stable: the same start on every reading
    assert pid_alive(live.pid) and pid_alive(live.pid, record["pid_start"])
    assert owner_alive(record) is True and not owner_gone(record)
    assert owner_alive(claims.owner_record()) is True  # this very process


def test_killed_and_reaped_child_is_gone():
    record = killed_and_reaped()
    assert not pid_alive(record["pid"]) and process_start(record["pid"]) is None
    assert owner_alive(record) is False and owner_gone(record)


def test_zombie_is_gone():
    proc = child()
    record = claims.owner_record(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    try:  # not reaped: the kernel keeps a zombie entry until wait()
        for _ in range(500):
            if psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.01)
        assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
        assert not pid_alive(proc.pid) and owner_alive(record) is False
    finally:
        proc.wait()


def test_another_pid_start_is_not_the_owner(live):
    start = process_start(live.pid)
    assert owner_alive(record_of(live, pid_start=start + 5.0)) is False  # the pid reused by another process
    assert owner_alive(record_of(live, pid_start=round(start - 0.01, 2))) is False  # one clock tick apart
    assert owner_alive(record_of(live, pid_start=None)) is True  # no start recorded: the pid decides
    assert owner_alive(record_of(live, pid_start="1234567")) is True  # an older record's format: ignored


def test_record_of_another_host_is_never_judged_by_a_local_pid(live):
    dead = killed_and_reaped()
    # the live local pid is not that host's process, and a dead local pid says nothing about it either
    assert owner_alive(record_of(live, host="elsewhere")) is None
    assert owner_alive({**dead, "host": "elsewhere"}) is None and not owner_gone({**dead, "host": "elsewhere"})
    assert owner_alive({"host": "elsewhere"}) is None
    assert owner_alive({"pid": live.pid}) is None  # no host: not known to be this one
    assert owner_alive({"host": HOST}) is False and owner_alive({"host": HOST, "pid": True}) is False  # no usable pid


def test_earlier_run_of_this_requeued_slurm_job_is_gone(live, monkeypatch):
    remote = record_of(live, host="elsewhere", slurm_job_id="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert owner_alive(remote) is None  # another node of this same job: it may well run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert owner_alive(remote) is False  # written before the requeue
    assert owner_alive({**remote, "slurm_restart_count": "1"}) is None  # written by this run, on another node
    assert claims.owner_record()["slurm_restart_count"] == "1" and claims.owner_record()["slurm_job_id"] == "4242"
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    assert owner_alive(remote) is None  # another job: only squeue could tell


def test_stale_search_trials_are_failed_by_the_rule(tmp_path, live):
    storage = tuning.make_storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    holders = {"killed": killed_and_reaped(), "live": record_of(live), "reused": record_of(live, pid_start=1.0),
               "remote dead": {**killed_and_reaped(), "host": "elsewhere"}, "not recorded yet": {"host": HOST}}
    trials = {}
    for name, record in holders.items():
        trial = study.ask()
        for key, value in record.items():
            trial.set_user_attr(key, value)
        trials[name] = trial._trial_id
    assert tuning.fail_stale_trials(study) == 2
    states = {name: storage.get_trial(tid).state for name, tid in trials.items()}
    assert states == {"killed": TrialState.FAIL, "live": TrialState.RUNNING, "reused": TrialState.FAIL,
                      "remote dead": TrialState.RUNNING, "not recorded yet": TrialState.RUNNING}


def test_claim_file_is_exclusive_until_its_holder_dies(tmp_path):
    claim, lock = tmp_path / "work" / "claim", tmp_path / ".lock"
    claim.parent.mkdir()
    proc = child()
    theirs = {**claims.owner_record(proc.pid), "worker_id": "child"}
    assert claims.acquire(claim, theirs, lock) == theirs
    mine = {**claims.owner_record(), "worker_id": "me"}
    assert claims.acquire(claim, mine, lock) is None and not claims.drop_if_stale(claim, lock)  # its holder runs
    taken_over = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert claims.acquire(claim, mine, lock, on_takeover=taken_over.append) == mine
    assert taken_over == [theirs] and claims.holder(claims.read_text(claim)) == mine
    assert claims.acquire(claim, {**mine, "worker_id": "again"}, lock) is None  # I hold it: alive
    claims.release(claim, theirs, lock)
    assert claim.exists()  # not theirs any more: left alone
    claims.release(claim, mine, lock)
    assert not claim.exists()
    assert claims.acquire(claim, mine, lock, wanted=lambda: False) is None and not claim.exists()  # finished meanwhile
    claim.write_text("{half a reco")
    assert claims.drop_if_stale(claim, lock) and not claim.exists()  # unreadable: stale
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".lock", "work"]  # no temp or aside file left


def test_temp_files_of_gone_processes_are_swept(tmp_path, live):
    target = tmp_path / "out.txt"
    dead = killed_and_reaped()["pid"]
    names = {who: f".out.txt.tc{pid}@{host}.abc123.tmp" for who, pid, host in
             (("dead", dead, tempfiles._host()), ("live", live.pid, tempfiles._host()), ("remote", dead, "elsewhere"))}
    for name in names.values():
        (tmp_path / name).write_text("partial")
    assert tempfiles.sweep_stale_temps(target) == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["remote"]])


def test_liveness_has_one_home():
    """No other module of the package reads /proc/<pid>, signals a pid with 0 or asks psutil whether a process lives."""
    src = Path(claims.__file__).resolve().parents[1]
    patterns = ('f"/proc/{', "os.kill(pid, 0)", "def pid_alive", "import psutil")
    offenders = sorted(str(path.relative_to(src)) for path in src.rglob("*.py")
                       if path.name != "claims.py" and any(p in path.read_text(encoding="utf-8") for p in patterns))
    assert offenders == []

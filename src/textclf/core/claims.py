"""Who holds a piece of work, whether that holder is still alive, and claim files: the one rule of every job system.

textclf has three kinds of work a process holds and a killed process leaves behind: a RUNNING trial
(a search's trial, :mod:`textclf.core.tuning`; a run-queue task, :mod:`textclf.services.queue`), a
sweep combination's ``claim`` file (:mod:`textclf.families.embeddings.sweep`) and an owner-tagged
temp file or folder (:mod:`textclf.core.tempfiles`). Each records its holder as an **owner record**
(:func:`owner_record`: host, pid, the pid's start, SLURM ids) and each asks the same question of it,
:func:`owner_alive`:

* ``True``: the holder runs. On this host: a process with that pid exists, is not a zombie, and,
  where the record has the pid's start (``pid_start``, seconds after boot, psutil), started then:
  a pid the kernel handed to another process is not the holder.
* ``False``: the holder is gone. On this host: no such process, a zombie, or another process with
  that pid. On another host: the record names this very SLURM job with fewer restarts than now (an
  earlier run of this requeued job), or, when asked (``slurm=``), ``squeue`` no longer lists its job.
* ``None``: nobody here can tell (another host, no SLURM answer). Every caller treats that as
  alive: only ``False`` lets work be taken over, requeued, failed or deleted.

**One job system or two (issue 22).** The run queue (a queue is an Optuna study, a task a WAITING
trial popped by the storage's compare-and-set) and the embeddings sweep (a combination is claimed
by hard-linking a ``claim`` file) stay two claim mechanisms over this one liveness rule and this
one owner record. Running the sweep's combinations as queue tasks was considered and not done:

* layering: the sweep is the embeddings family's (``textclf.families``) and the queue a service one
  layer up; a family may not import services, so its orchestration would have to move up and split
  the sweep across two layers, or the queue move down into core with its MLflow/run-service ties;
* done-ness: a combination is done when its ``result.json`` matches the settings; a queue task is
  done when its trial is COMPLETE. The two can disagree (a kill between the result write and the
  tell), ``--report_only``/``--list`` would need the storage to say what is finished, and ``--task_index
  i`` (a SLURM array task runs combination ``i``) has no counterpart in popping the oldest WAITING task;
* takeover: a killed sweep worker's combination is taken over by the next run automatically (and
  its journal lock removed); a journal-file queue hands a dead worker's task on only through a manual
  ``textclf queue requeue`` (its automatic retry needs an RDB heartbeat);
* cost, measured (``/tmp`` on one shared 2-core machine, 60 claims each, claim then release/tell,
  two runs): a claim file 0.7-1.1 ms; a queue task 4-6 ms to enqueue + 8-11 ms to pop and tell on a
  journal file, 30-33 + 67-78 ms on SQLite. Ten to a hundred times the claim file's cost, yet small
  beside a combination's search (seconds): not the reason, but no gain either.

The claim-file half of this module (:func:`acquire`, :func:`release`, :func:`drop_if_stale`) is the
sweep's mechanism made generic: create by hard link (``os.link`` fails with EEXIST when a claim
exists; atomic on local filesystems and NFS, never seen half-written; ``O_CREAT | O_EXCL`` where
links are not supported), take a stale one over by renaming it aside (only one racing process gets
that inode) and checking the moved file is the one judged stale, all under ``flock`` on a lock file
(released by the kernel when its holder dies), so two restarted processes never both take one over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: this machine's name, as owner records carry it
HOST = os.uname().nodename
#: the environment variables an owner record copies (as lower-case keys) when set
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
_FINISHED_SLURM_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                          "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
#: two starts closer than this (the kernel counts in 1/100 s) are one process start
_START_TOLERANCE_S = 0.005


# --------------------------------------------------------------------------- processes

def process_start(pid: int) -> float | None:
    """When ``pid`` started, in seconds after boot (1/100 s resolution; a clock change does not move it); None if gone."""
    try:
        return round(psutil.Process(pid).create_time() - psutil.boot_time(), 2)
    except (psutil.Error, OSError, ValueError):
        return None


def pid_alive(pid: int, start: float | None = None) -> bool:
    """Whether process ``pid`` runs on this machine: it exists, is not a zombie and (``start`` given) started then."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True  # it exists; another user's process
    if start is None:
        return True
    now = process_start(pid)
    return now is None or abs(now - start) < _START_TOLERANCE_S


def is_this_host(host: object) -> bool:
    """Whether ``host`` (from an owner record or a temp file's tag, where ``/`` is ``_``) names this machine."""
    return isinstance(host, str) and host in (HOST, HOST.replace("/", "_"))


# --------------------------------------------------------------------------- owner records

def owner_record(pid: int | None = None) -> dict:
    """Who holds work: ``host``, ``pid``, ``pid_start`` and the SLURM ids of this process's job (lower-case keys)."""
    pid = os.getpid() if pid is None else pid
    record: dict = {"host": HOST, "pid": pid, "pid_start": process_start(pid)}
    for var in SLURM_VARS:
        if os.environ.get(var):
            record[var.lower()] = os.environ[var]
    return record


def _restarts(value: object) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


class SlurmJobs:
    """``squeue``'s answers, one call per job id; make a fresh one per scan (a job's state changes)."""

    def __init__(self) -> None:
        self._known: dict[str, bool | None] = {}

    def alive(self, job_id: str) -> bool | None:
        """Whether SLURM still runs or queues ``job_id``; None when squeue cannot say (no SLURM here, no controller)."""
        if job_id not in self._known:
            self._known[job_id] = self._ask(job_id)
        return self._known[job_id]

    @staticmethod
    def _ask(job_id: str) -> bool | None:
        try:
            proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if proc.returncode != 0:
            return False if "invalid job id" in proc.stderr.lower() else None
        return bool(set(proc.stdout.split()) - _FINISHED_SLURM_STATES)


def owner_alive(record: Mapping, slurm: SlurmJobs | None = None) -> bool | None:
    """Whether the holder named by owner ``record`` runs: True, False (gone) or None (cannot tell: treat as alive).

    See the module docstring for the rule. ``slurm`` asks ``squeue`` about records of other hosts
    that name a SLURM job; without it only what this host knows decides.
    """
    if is_this_host(record.get("host")):
        start = record.get("pid_start")
        return pid_alive(record.get("pid"), start if isinstance(start, int | float) and not isinstance(start, bool) else None)
    job = record.get("slurm_job_id")
    if not job:
        return None
    job = str(job)
    if job == os.environ.get("SLURM_JOB_ID") and _restarts(record.get("slurm_restart_count")) < _restarts(
            os.environ.get("SLURM_RESTART_COUNT")):
        return False  # an earlier run of this very job, requeued since
    return slurm.alive(job) if slurm is not None else None


def owner_gone(record: Mapping, slurm: SlurmJobs | None = None) -> bool:
    """Whether ``record``'s holder is known to be gone, so its work may be taken over (:func:`owner_alive` is False)."""
    return owner_alive(record, slurm) is False


# --------------------------------------------------------------------------- claim files

@contextlib.contextmanager
def host_lock(path: Path) -> Iterator[None]:
    """Serialise the claims of the processes on this host (``flock`` on ``path``; the kernel releases it if the holder dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks: claims stay atomic, only takeovers lose this guard
            log.debug("no flock on %s (%s)", path, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def holder(text: str | None) -> dict:
    """The owner record a claim's text holds ({} for an unreadable one, which counts as stale)."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _link(claim: Path, text: str) -> bool:
    """Create ``claim`` holding ``text`` unless it exists (temp file + ``os.link``; else ``O_CREAT | O_EXCL``)."""
    tmp = claim.with_name(f".{claim.name}.{HOST}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, claim)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire(claim: Path, record: dict, lock: Path, wanted: Callable[[], bool] = lambda: True,
            on_takeover: Callable[[dict], None] | None = None, label: str | None = None) -> dict | None:
    """Claim the work of file ``claim`` for owner ``record``; returns ``record``, or None when a live holder has it.

    Under ``flock`` on ``lock``: ``wanted()`` False (e.g. the work finished meanwhile) gives None; a
    claim whose holder is gone (:func:`owner_gone`, SLURM asked) is renamed aside and replaced, and
    ``on_takeover(old holder)`` runs before the new claim is linked.
    """
    label = label or str(claim)
    text = json.dumps(record)
    with host_lock(lock):
        if not wanted():
            return None
        for _ in range(3):
            if _link(claim, text):
                return record
            seen = read_text(claim)
            if seen is None:
                continue  # released meanwhile: try again
            old = holder(seen)
            if old and not owner_gone(old, SlurmJobs()):
                log.info("%s: claimed by %s (pid %s on %s), skipping", label, old.get("worker_id"), old.get("pid"), old.get("host"))
                return None
            aside = claim.with_name(f".{claim.name}.stale.{HOST}.{os.getpid()}")
            try:
                os.rename(claim, aside)
            except FileNotFoundError:
                continue
            moved = read_text(aside)
            if moved != seen:  # someone else's fresh claim: put it back and leave the work to it
                with contextlib.suppress(FileExistsError):
                    os.link(aside, claim)
                aside.unlink(missing_ok=True)
                return None
            aside.unlink(missing_ok=True)
            log.warning("%s: taking over the stale claim of %s (pid %s on %s, no longer running)", label,
                        old.get("worker_id"), old.get("pid"), old.get("host"))
            if on_takeover is not None:
                on_takeover(old)
    return None


def release(claim: Path, record: dict, lock: Path) -> None:
    """Remove ``claim`` if it still holds ``record``."""
    with host_lock(lock):
        if read_text(claim) == json.dumps(record):
            claim.unlink(missing_ok=True)


def drop_if_stale(claim: Path, lock: Path) -> bool:
    """Remove ``claim`` when its holder is gone (or it is unreadable); returns whether it was removed."""
    with host_lock(lock):
        seen = read_text(claim)
        if seen is None:
            return False
        old = holder(seen)
        if old and not owner_gone(old, SlurmJobs()):
            return False
        claim.unlink(missing_ok=True)
        return True

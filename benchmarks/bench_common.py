"""Helpers shared by the benchmark scripts: jobs in small fresh processes, their peak RSS, machine facts,
the datasets' splits (and rotations over all their rows) and the results JSON's head and tail.

Peak RSS: Linux keeps ``ru_maxrss`` across ``fork`` and ``exec``, so a job forked or spawned from the
benchmark process reports at least the benchmark's own peak (with its loaded data, earlier results,
...). Each script therefore calls :func:`start_fork_server` first thing, while it is still small, and
runs every job through :func:`in_child`: a fresh process forked from that fork server, whose
:func:`peak_rss_mb` is then the job's own (plus the small fork server it started from).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import multiprocessing
import multiprocessing.forkserver
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
SPLITS = ("train", "valid", "test")
RSS_NOTE = ("peak_rss_mb: max of ru_maxrss over RUSAGE_SELF and RUSAGE_CHILDREN of the fresh process that ran only that "
            "job, in MiB. The process is forked from a fork server that the benchmark starts before it imports or loads "
            "anything large (Linux keeps ru_maxrss across fork and exec, so a child of the benchmark process itself would "
            "report at least the benchmark's own peak); the figure covers the interpreter, the job's imports and its work, "
            "and any processes the job forked and waited for")


def start_fork_server() -> None:
    """Start the fork server :func:`in_child` uses; call it before importing or loading anything large."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([])
    multiprocessing.forkserver.ensure_running()


def in_child(fn, *args):
    """Run ``fn(*args)`` in a fresh process forked from the fork server and return its result.

    ``fn`` must be importable (a module-level function of the script or of a module). Without a
    prior :func:`start_fork_server` the server is started here, from whatever the caller has
    grown to, and the children's peak RSS includes it.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return pool.submit(fn, *args).result()


def peak_rss_mb() -> float:
    """Peak RSS in MiB of this process or of its largest finished child, whichever is larger."""
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024, 1)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def package_versions(packages) -> dict:
    """Installed version of each distribution name, None for one not installed."""
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def machine_info(packages=None) -> dict:
    """Cores, CPU model, memory, OS, Python and (unless None) the versions of ``packages``."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info = {"cores_usable": usable_cores(), "cpu_count": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem_gib,
            "platform": platform.platform(), "python": platform.python_version(), "hostname": platform.node()}
    if packages is not None:
        info["versions"] = package_versions(packages)
    return info


def dataset_paths(data_root, name: str) -> dict | None:
    """``{split: path}`` of ``<data_root>/<name>/{train,valid,test}.csv``, or None when one is missing."""
    d = Path(data_root) / name
    paths = {s: str(d / f"{s}.csv") for s in SPLITS}
    return paths if all(Path(p).exists() for p in paths.values()) else None


def make_echo(show_elapsed: bool = False):
    """A progress printer to stderr: ``[HH:MM:SS] msg``, or ``[HH:MM:SS +M.M min] msg`` with ``show_elapsed``."""
    started = time.perf_counter()

    def echo(msg: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        if show_elapsed:
            stamp += f" +{(time.perf_counter() - started) / 60:.1f} min"
        click.echo(f"[{stamp}] {msg}", err=True)

    return echo


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def quiet_job() -> None:
    """In a job process: training reports go to stderr (stdout keeps the tables), libraries stay quiet, no hub."""
    import logging
    import warnings

    sys.stdout.flush()
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, force=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


def train_job(family: str, paths: dict, out: str, overrides: list[str], code: str | None = None) -> tuple[dict, float]:
    """Train (search if asked, refit) ``family`` into ``out`` through the run service, in a job process.

    ``code``: a plug-in file that registers ``family`` (``textclf train --code``). Returns the run's
    ``meta.json`` and the training wall seconds.
    """
    quiet_job()
    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family, load_code
    from textclf.services.runs import fit_family

    if code:
        load_code(code)
    cfg, splits = load_job_splits(paths, family, overrides)
    start = time.perf_counter()
    fit_family(get_family(family), cfg, splits, out, False)
    return read_meta(out), time.perf_counter() - start


def search_summary(meta: dict) -> dict | None:
    """The search part of a run's ``meta.json`` for a results file: trials, best value and params (None: no search)."""
    search = meta.get("search") or {}
    return {"n_trials": search.get("n_trials"), "best_value": search.get("best_value"),
            "best_params": search.get("best_params")} if search else None


def load_job_splits(paths: dict, family: str, overrides: list[str]) -> tuple[dict, Any]:
    """``family``'s config with ``overrides``, and the splits ``paths`` names loaded as its ``data`` section says.

    For a job process (the imports happen here, not in the benchmark process). ``paths`` maps
    ``train``/``valid``/``test`` to CSV files, as :func:`dataset_paths` returns them.
    """
    from textclf.core.config import load_config
    from textclf.core.training import load_splits

    cfg = load_config(family, overrides=overrides)
    return cfg, load_splits(paths["train"], paths["valid"], paths["test"], cfg["data"])


def results_path(output: str | Path | None, benchmark: str, quick: bool = False) -> Path:
    """``output``, or by default ``benchmarks/results/<benchmark>.json`` (``<benchmark>_quick.json`` with ``quick``)."""
    return Path(output or REPO / "benchmarks" / "results" / (f"{benchmark}_quick.json" if quick else f"{benchmark}.json"))


def results_doc(benchmark: str, settings: dict, packages, **rest) -> dict:
    """The head of a results JSON: ``benchmark``, ``started``, ``command``, ``settings``, ``machine``, then ``rest``.

    ``command`` is ``python benchmarks/bench_<benchmark>.py`` with this process's arguments;
    ``machine`` is :func:`machine_info` with the versions of ``packages``.
    """
    return {"benchmark": benchmark, "started": utc_now(),
            "command": " ".join(["python", f"benchmarks/bench_{benchmark}.py", *sys.argv[1:]]),
            "settings": settings, "machine": machine_info(packages), **rest}


def finish_doc(output: str | Path, doc: dict, table_markdown: str) -> None:
    """Stamp ``doc`` as finished, set its ``table_markdown`` and write it to ``output`` atomically."""
    from textclf.core.atomic import atomic_write_json

    doc["finished"] = utc_now()
    doc["table_markdown"] = table_markdown
    atomic_write_json(output, doc)


def rotation_paths(paths: dict, work: Path, k: int, seed: int = 13) -> list[dict]:
    """``k`` train/valid/test splits that rotate over every row of a dataset (train, valid and test pooled).

    The pooled rows are cut into ``k`` stratified folds (scikit-learn's ``StratifiedKFold``, shuffled with
    ``seed``); rotation ``r`` tests on fold ``r``, uses fold ``r + 1`` as its valid split (searches, calibration,
    ensembles) and trains on the rest, so every row is a test row exactly once. The splits are written as CSV
    files under ``work/rotation<r>/``. With ``k = 10`` on a 80/10/10 dataset the parts have the sizes
    of the shipped split.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from textclf.core.data import Dataset, read_labelled, write_labelled

    parts = [read_labelled(paths[s]) for s in ("train", "valid", "test")]
    texts = [t for d in parts for t in d.texts]
    labels = [x for d in parts for x in d.labels]
    folds = [test for _, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)]
    out = []
    for r in range(k):
        test, valid = folds[r], folds[(r + 1) % k]
        train = np.sort(np.concatenate([folds[i] for i in range(k) if i not in (r, (r + 1) % k)]))
        d = work / f"rotation{r}"
        d.mkdir(parents=True, exist_ok=True)
        split = {}
        for name, rows in (("train", train), ("valid", valid), ("test", test)):
            split[name] = str(d / f"{name}.csv")
            write_labelled(split[name], Dataset([texts[i] for i in rows], [labels[i] for i in rows]))
        out.append(split)
    return out

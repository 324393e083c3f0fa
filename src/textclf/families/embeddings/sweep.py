"""``textclf sweep``: a wide-and-shallow, resumable sweep of encoder x classifier for the embeddings family.

Every combination gets its own small Optuna study over that classifier's entries of ``search.space``
(``<classifier>.<param>``) plus ``balance`` (and ``train_files`` with several ``--train_path``), then
its best trial is refitted and saved as a normal model directory: each combination is one run of the
core's fit flow (:func:`textclf.core.fit_flow.fit_family`, as ``textclf train embeddings``), with the
study beside the model directory and the worker's ``context.shared`` passed to every run. The output directory ``D`` holds::

    D/sweep.json                          the plan: every combination (index = --task_index), the settings' identity
    D/sweep.csv                           the ranked table (written atomically by every report)
    D/best -> combos/<best>/model         the best combination's model directory (`textclf predict --model_path D/best`)
    D/combos/<encoder>__<classifier>/
        claim                             who runs it now (host, pid, pid start, SLURM job); gone when done
        attempts.log                      one line per claim: which worker started it, when
        study.journal, progress.log       its Optuna study (unless --storage names a shared journal/PostgreSQL)
        trials.csv                        the study's trials
        model/                            the best trial refitted by the core's fit flow (meta.json, classifier.joblib)
        result.json                       written last, atomically: metrics, timings, best params, worker
        error.txt                         the last failure (the combination is retried by the next run)

**Done** means: ``result.json`` exists, was computed with the same settings (data hash, config, seed:
``identity`` in sweep.json) and with at least ``--n_trials`` trials. A restart skips those; a killed
combination's study resumes (its finished trials are kept), so ``kill -9`` loses at most the trial in
flight. Raising ``--n_trials`` later reruns every combination, each resuming its study.

**Claims (why files and not the run queue).** A combination is claimed with a ``claim`` file
holding its worker's owner record; the mechanism (hard-link creation, takeover by rename under
``flock`` on ``D/.claims.lock``) and the one liveness rule shared with the run queue, the searches'
stale trials and temp files are :mod:`textclf.core.claims`, whose docstring says (and measures) why
the combinations are not run queue tasks. Here:

* a claim is **stale** when its holder ran on this host and that process is gone (a zombie, or the
  pid reused: its start differs), or when it ran in a SLURM job that ``squeue`` no longer lists (or
  in an earlier run of this very job, requeued). A claim from another host without SLURM is presumed
  alive (remove the file by hand if that host is gone);
* a stale claim is taken over; with the default per-combination journal only the claim holder
  writes it, so the takeover also removes the journal lock a ``kill -9`` mid-write left behind
  (Optuna would otherwise wait out its 30 s grace period);
* ``result.json`` is written before the claim is removed: done-ness never depends on a claim, and
  ``--report_only``/``--list`` need no storage.

**Parallelism.** ``--workers N`` starts N local processes (fresh interpreters; each takes a share of
the CPU threads) that claim combinations until none is left, each preferring the encoder whose vectors
it already holds, starting from a different encoder per worker. As a SLURM array, task ``i`` runs
only combination ``i`` (``--task_index``), and an ``afterany`` job writes the table
(``--report_only``). Features come from :class:`~textclf.families.embeddings.train.Features` (one per
worker, in the ``context.shared`` of its runs), i.e. through the embedding cache (``$TEXTCLF_CACHE``)
as in ``textclf train embeddings``, so workers and tasks share vectors.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from textclf.core import claims
from textclf.core.atomic import atomic_open, atomic_write_json, atomic_write_text
from textclf.core.errors import ConfigError, ModelError
from textclf.core.tuning import JOURNAL_FILE
from textclf.families.common.encoders import TFIDF_SVD
from textclf.families.embeddings.classifiers import CLASSIFIERS

log = logging.getLogger(__name__)

PLAN_FILE = "sweep.json"
TABLE_FILE = "sweep.csv"
BEST_LINK = "best"
COMBOS_DIR = "combos"
RESULT_FILE = "result.json"
CLAIM_FILE = "claim"
ATTEMPTS_FILE = "attempts.log"
ERROR_FILE = "error.txt"
MODEL_DIR = "model"
LOCK_FILE = ".claims.lock"
DEFAULT_ENCODERS = ("minilm", TFIDF_SVD)
#: config keys that change how fast a sweep runs or where it stores its studies, never its results
VOLATILE_KEYS = ("device", "encoder.batch_size", "search.storage", "search.n_jobs", "search.timeout", "search.n_trials",
                 "search.study_name", "search.refit")
TABLE_COLUMNS = ("rank", "encoder", "classifier", "valid_macro_f1", "test_macro_f1", "valid_accuracy", "test_accuracy",
                 "fit_seconds", "predict_docs_per_s", "classify_docs_per_s", "search_seconds", "n_trials", "balance",
                 "params", "worker", "model_dir")
HOST = claims.HOST


# --------------------------------------------------------------------------- combinations

def slug(name: str) -> str:
    """``name`` as one safe path component (a hub id or a path gets a short hash so two never collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "x"
    if safe == name:
        return name
    return f"{safe[-48:]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Combo:
    """One encoder x classifier combination; ``index`` is its ``--task_index`` (encoder-major order)."""

    index: int
    encoder: str
    classifier: str

    @property
    def name(self) -> str:
        """``<encoder>__<classifier>``, the folder under ``D/combos``."""
        return f"{slug(self.encoder)}__{slug(self.classifier)}"


def split_names(text: str | Sequence[str], what: str) -> list[str]:
    """``"a,b"`` (or a list of such strings) as a list of names; empty or repeated names are errors."""
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for part in parts for n in part.split(",")]
    if not names or any(not n for n in names):
        raise ConfigError(f"--{what}: expected a comma-separated list of names, got {','.join(parts)!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--{what}: {', '.join(repeated)} listed more than once")
    return names


def known_classifiers(cfg: dict) -> list[str]:
    """Classifiers a sweep can use: built in and with a ``classifiers.<name>`` block in the config."""
    return [c for c in CLASSIFIERS if c in cfg.get("classifiers", {})]


def check_classifiers(names: Sequence[str], cfg: dict) -> None:
    """Raise a one-line ConfigError naming the known classifiers when one of ``names`` is not one of them."""
    known = known_classifiers(cfg)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--classifiers: unknown classifier {', '.join(map(repr, unknown))}; known classifiers: {', '.join(known)}")


def check_encoders(names: Sequence[str]) -> None:
    """Every name must be ``tfidf_svd`` or resolve to a local sentence encoder (nothing is loaded or downloaded)."""
    from textclf.families.common.encoders import resolve_model_dir

    for name in names:
        if name == TFIDF_SVD:
            continue
        try:
            resolve_model_dir(name)
        except ModelError as exc:
            reason = exc.format_message().splitlines()[0]
            raise ConfigError(f"--encoders: unknown encoder {name!r} ({reason}); known encoders: minilm, mpnet (after "
                              f"`textclf embed fetch mpnet`), {TFIDF_SVD}, a local directory or a model in the local "
                              "Hugging Face cache") from None


def combinations(encoders: Sequence[str], classifiers: Sequence[str]) -> list[Combo]:
    """Every encoder x classifier, encoder-major: ``--task_index`` i is the i-th of this list."""
    return [Combo(i * len(classifiers) + j, e, c) for i, e in enumerate(encoders) for j, c in enumerate(classifiers)]


# --------------------------------------------------------------------------- the sweep's settings

@dataclass
class Sweep:
    """Everything a worker needs (JSON-serialisable: ``--workers`` hands it to each worker process)."""

    cfg: dict
    output_dir: str
    encoders: list[str]
    classifiers: list[str]
    train_paths: list[str]
    valid_path: str
    test_path: str | None = None
    n_trials: int = 10
    study_name: str = "sweep"
    bench_docs: int = 256
    combos: list[Combo] = field(init=False)
    #: the data's task once :meth:`load_splits` has read it (``multilabel`` ranks by micro_f1 when search.metric is null)
    task: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.combos = combinations(self.encoders, self.classifiers)

    @property
    def out(self) -> Path:
        """The output directory, absolute (Optuna's journal lock misbehaves on relative paths after a crash)."""
        return Path(self.output_dir).absolute()

    @property
    def metric(self) -> str:
        """The validation metric each combination's study maximises and the table ranks by (``null``: the task's default,
        macro_f1 for multi-class and micro_f1 for label sets, as in every search)."""
        from textclf.core.registry import DEFAULT_METRICS

        return self.cfg["search"]["metric"] or DEFAULT_METRICS.get(self.task or "multiclass", "macro_f1")

    def to_json(self) -> str:
        """The settings as JSON (the combinations are derived again)."""
        d = asdict(self)
        d.pop("combos")
        d.pop("task")
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Sweep:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def combo_dir(self, combo: Combo) -> Path:
        """``D/combos/<encoder>__<classifier>``."""
        return self.out / COMBOS_DIR / combo.name

    def load_splits(self):
        """Read and check train/valid/test with the config's data settings."""
        from textclf.core.training import load_splits

        splits = load_splits(self.train_paths, self.valid_path, self.test_path, self.cfg["data"])
        self.task = splits.task
        return splits


def _drop(cfg: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        cfg = cfg.get(p, {})
    cfg.pop(last, None)


def identity(cfg: dict, data_sha256: str) -> str:
    """sha256 of what makes two sweeps' results comparable: the data and the config (without :data:`VOLATILE_KEYS`,
    and without the ``encoder`` chunk settings under ``long_text: truncate``)."""
    from textclf.families.common.chunking import DEFAULTS as CHUNK_DEFAULTS

    stable = copy.deepcopy(cfg)
    for key in VOLATILE_KEYS:
        _drop(stable, key)
    encoder = stable.get("encoder") or {}
    if encoder.get("long_text", "truncate") == "truncate":  # the chunk settings change nothing: a sweep from before them matches
        for key in CHUNK_DEFAULTS:
            encoder.pop(key, None)
    doc = json.dumps({"data": data_sha256, "config": stable}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def combo_config(cfg: dict, combo: Combo, n_trials: int, study_name: str) -> dict:
    """The config of one combination's run: its encoder and classifier, a search over that classifier's space + balance."""
    c = copy.deepcopy(cfg)
    c["encoder"]["name"] = combo.encoder
    c["classifier"] = combo.classifier
    s = c["search"]
    s["space"] = {k: v for k, v in s["space"].items() if k == "balance" or k.startswith(combo.classifier + ".")}
    s.update(n_trials=int(n_trials), timeout=None, refit=True, study_name=f"{study_name}.{combo.name}")
    return c


def read_plan(out: Path) -> dict | None:
    """``D/sweep.json``, or None before the first run."""
    try:
        return json.loads((out / PLAN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{out / PLAN_FILE}: unreadable ({exc})") from None


def write_plan(sweep: Sweep, ident: str, data_paths: dict) -> None:
    """Write (or update) ``D/sweep.json``; a directory holding a sweep with other data/config is an error."""
    old = read_plan(sweep.out)
    if old is not None and old.get("identity") != ident:
        raise ConfigError(f"{sweep.out} holds a sweep of other data or another config (identity {str(old.get('identity'))[:12]}, "
                          f"now {ident[:12]}): use another --output_dir, or delete {PLAN_FILE} and {COMBOS_DIR}/ to start over")
    plan = {"identity": ident, "n_trials": sweep.n_trials, "metric": sweep.metric, "data": data_paths,
            "encoders": sweep.encoders, "classifiers": sweep.classifiers,
            "combinations": [{"index": c.index, "encoder": c.encoder, "classifier": c.classifier, "dir": f"{COMBOS_DIR}/{c.name}"}
                             for c in sweep.combos]}
    if old is not None and {k: old.get(k) for k in plan} == plan:
        return
    atomic_write_json(sweep.out / PLAN_FILE, {**plan, "updated": _now()})


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- results

def read_result(sweep: Sweep, combo: Combo) -> dict | None:
    """The combination's ``result.json``, or None."""
    try:
        return json.loads((sweep.combo_dir(combo) / RESULT_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def is_done(result: dict | None, ident: str | None, n_trials: int) -> bool:
    """Whether ``result`` finishes its combination for these settings (``ident`` None: any identity)."""
    if result is None:
        return False
    return (ident is None or result.get("identity") == ident) and int(result.get("n_trials", 0)) >= n_trials


# --------------------------------------------------------------------------- claims

def worker_info(worker_index: int = 0) -> dict:
    """Who this worker is: its owner record (host, pid, pid start, SLURM ids) plus ``worker_id`` and the worker index."""
    record = claims.owner_record()
    return {"worker_id": f"{record['host']}:{record['pid']}", **record, "worker_index": worker_index}


def claim_combo(sweep: Sweep, combo: Combo, worker: dict, ident: str | None) -> dict | None:
    """Claim ``combo`` for ``worker``; returns the claim, or None when it is done or a live worker holds it."""
    cdir = sweep.combo_dir(combo)
    cdir.mkdir(parents=True, exist_ok=True)

    def forget_journal_lock(_old: dict) -> None:
        if not sweep.cfg["search"].get("storage"):
            # the combination's own journal: only a claim holder writes it, so a lock left by the dead one is stale
            # (Optuna would wait its 30 s grace period first)
            lock = cdir / f"{JOURNAL_FILE}.lock"
            if lock.is_symlink() or lock.exists():
                lock.unlink(missing_ok=True)
                log.warning("%s: removed the journal lock the killed worker held", combo.name)

    mine = claims.acquire(cdir / CLAIM_FILE, {**worker, "combination": combo.name, "claimed": _now()}, sweep.out / LOCK_FILE,
                          wanted=lambda: not is_done(read_result(sweep, combo), ident, sweep.n_trials),
                          on_takeover=forget_journal_lock, label=combo.name)
    if mine is not None:
        from textclf.core.progress import append_line

        append_line(cdir / ATTEMPTS_FILE, f"claimed by {worker['worker_id']} (worker {worker.get('worker_index', 0)}"
                    f"{', slurm job ' + worker['slurm_job_id'] if worker.get('slurm_job_id') else ''})")
    return mine


def release(sweep: Sweep, combo: Combo, mine: dict) -> None:
    """Remove the claim if it is still ours."""
    claims.release(sweep.combo_dir(combo) / CLAIM_FILE, mine, sweep.out / LOCK_FILE)


def drop_stale_claim(sweep: Sweep, combo: Combo) -> None:
    """Remove a finished combination's claim left by a worker that died after writing its result."""
    if claims.drop_if_stale(sweep.combo_dir(combo) / CLAIM_FILE, sweep.out / LOCK_FILE):
        log.info("%s: removed the claim its finished worker left behind", combo.name)


# --------------------------------------------------------------------------- running one combination

def _scalars(metrics: dict | None) -> dict | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if isinstance(v, float | int)}


def bench_predict(predictor, texts: Sequence[str]) -> float | None:
    """End-to-end docs/s of the saved model (encode raw text + classify) on ``texts``; None without texts.

    A fresh predictor (no remembered vectors) is warmed up on two texts first, so loading the encoder's
    weights is not timed.
    """
    from textclf.families.embeddings.model import EmbeddingsPredictor

    texts = list(texts)
    if not texts:
        return None
    fresh = EmbeddingsPredictor(predictor.model_dir, predictor.meta, predictor.encoder, predictor.classifier)
    fresh.predict_proba(texts[:2])
    start = time.perf_counter()
    fresh.predict_proba(texts)
    return len(texts) / max(time.perf_counter() - start, 1e-9)


def run_combo(sweep: Sweep, splits, shared: dict, combo: Combo, worker: dict, ident: str) -> dict:
    """Search, refit, save and time one combination through the core's fit flow; writes and returns its ``result.json``.

    The study (journal, progress.log, trials.csv) lives in the combination's folder, the refitted model
    in ``model/``; ``shared`` is the worker's ``context.shared``, so the vectors are encoded once per worker.
    """
    from textclf.core.fit_flow import fit_family
    from textclf.core.registry import get_family
    from textclf.families.common.sklearn_proba import proba_in_label_order
    from textclf.families.embeddings.train import run_features

    cdir = sweep.combo_dir(combo)
    ccfg = combo_config(sweep.cfg, combo, sweep.n_trials, sweep.study_name)
    started = _now()
    log.info("sweep %d/%d %s: %d trials over %s", combo.index + 1, len(sweep.combos), combo.name, sweep.n_trials,
             ", ".join(ccfg["search"]["space"]) or "(nothing: the configured point)")
    start = time.monotonic()
    x = run_features(ccfg, splits, shared).get(combo.encoder)
    encode_seconds = time.monotonic() - start
    run = fit_family(get_family("embeddings"), ccfg, splits, cdir / MODEL_DIR, search_dir=cdir, shared=shared, echo=False,
                     plots=False, meta_extra={"sweep": {"output_dir": str(sweep.out), "combination": combo.name,
                                                        "index": combo.index}})
    meta, predictor, search_seconds = run.meta, run.predictor, run.search_seconds
    summary, fit_seconds = meta["search"], meta["fit_seconds"]
    predict_docs_per_s = bench_predict(predictor, splits.valid.texts[:sweep.bench_docs]) if sweep.bench_docs else None
    start = time.perf_counter()
    proba_in_label_order(predictor.classifier, x["valid"], len(splits.labels))
    classify_docs_per_s = len(splits.valid) / max(time.perf_counter() - start, 1e-9)
    valid, test = _scalars(meta["metrics"]["valid"]), _scalars(meta["metrics"].get("test"))
    result = {
        "combination": combo.name, "index": combo.index, "encoder": combo.encoder, "classifier": combo.classifier,
        "identity": ident, "n_trials": sweep.n_trials, "metric": sweep.metric,
        "valid_metric": valid[sweep.metric] if sweep.metric in valid else None,
        "valid_macro_f1": valid.get("macro_f1"), "test_macro_f1": test.get("macro_f1") if test else None,
        "valid_accuracy": valid.get("accuracy"), "test_accuracy": test.get("accuracy") if test else None,
        "valid": valid, "test": test,
        "balance": meta["balance"], "params": meta["params"], "train_files": (meta.get("best_point") or {}).get("train_files"),
        "best_trial": summary["best_trial"], "trial_states": summary["states"], "study_name": summary["study_name"],
        "storage": summary["storage"],
        "fit_seconds": fit_seconds, "search_seconds": search_seconds, "encode_seconds": encode_seconds,
        "predict_docs_per_s": predict_docs_per_s, "classify_docs_per_s": classify_docs_per_s,
        "bench_docs": min(sweep.bench_docs, len(splits.valid)),
        "model_dir": f"{COMBOS_DIR}/{combo.name}/{MODEL_DIR}", "worker": worker, "started": started, "finished": _now(),
    }
    atomic_write_json(cdir / RESULT_FILE, result)
    (cdir / ERROR_FILE).unlink(missing_ok=True)
    log.info("sweep %s: valid %s %.4f, fit %.2fs, predict %s docs/s", combo.name, sweep.metric, result["valid_metric"] or 0.0,
             fit_seconds, f"{predict_docs_per_s:.0f}" if predict_docs_per_s else "-")
    return result


def run_worker(sweep: Sweep, splits=None, worker_index: int = 0, n_workers: int = 1, only: int | None = None,
               parent_pid: int | None = None) -> dict[str, str]:
    """Claim and run combinations until none is left for this worker; returns ``{combination: state}``.

    States: ``done`` (ran here), ``failed`` (error.txt says why; retried by the next run), ``busy`` (a
    live worker holds it). ``only`` restricts the worker to combination ``only`` (``--task_index``). A
    worker started by ``--workers`` (``parent_pid``) claims nothing more once its parent is gone.
    """
    from textclf.families.embeddings.train import run_features

    splits = splits if splits is not None else sweep.load_splits()
    ident = identity(sweep.cfg, splits.data_sha256)
    worker = worker_info(worker_index)
    shared: dict = {}  # the context.shared of every combination this worker runs: one encoding per encoder
    features = run_features(sweep.cfg, splits, shared)
    combos = sweep.combos if only is None else [sweep.combos[only]]
    order = {e: i for i, e in enumerate(sweep.encoders)}
    states: dict[str, str] = {}
    while True:
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("worker %d: the sweep that started it is gone; claiming nothing more", worker_index)
            break
        todo = [c for c in combos if c.name not in states and not is_done(read_result(sweep, c), ident, sweep.n_trials)]
        # the encoder already in memory first, then a different encoder per worker (fewer concurrent encodings)
        todo.sort(key=lambda c: (c.encoder not in features.matrices, (order[c.encoder] - worker_index) % len(order), c.index))
        for combo in todo:
            mine = claim_combo(sweep, combo, worker, ident)
            if mine is None:
                states[combo.name] = "busy"
                continue
            try:
                run_combo(sweep, splits, shared, combo, worker, ident)
                states[combo.name] = "done"
            except Exception as exc:  # noqa: BLE001 - one failing combination must not stop the sweep
                log.exception("sweep %s failed", combo.name)
                atomic_write_text(sweep.combo_dir(combo) / ERROR_FILE, f"{_now()} {worker['worker_id']}: "
                                  f"{type(exc).__name__}: {exc}\n")
                states[combo.name] = "failed"
            finally:
                release(sweep, combo, mine)
            break
        else:
            break
    return states


def worker_main(spec: str, worker_index: int, n_workers: int, parent_pid: int) -> int:
    """Entry point of one ``--workers`` process; exit status 1 when a combination failed."""
    from textclf.core.progress import setup_logging

    setup_logging()
    states = run_worker(Sweep.from_json(spec), None, worker_index, n_workers, parent_pid=parent_pid)
    return 1 if "failed" in states.values() else 0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_local_workers(sweep: Sweep, n_workers: int) -> None:
    """Start ``n_workers`` worker processes (fresh interpreters) and wait for all of them.

    Each gets ``cpus // n_workers`` BLAS/torch threads unless OMP_NUM_THREADS is set. Ctrl-C or an
    error here terminates them (their claims are released or become stale).
    """
    threads = str(max(1, _cpu_count() // n_workers))
    code = ("import sys; from textclf.families.embeddings.sweep import worker_main; "
            "sys.exit(worker_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, threads)
    spec = sweep.to_json()
    procs = [subprocess.Popen([sys.executable, "-c", code, spec, str(k), str(n_workers), str(os.getpid())], env=env)
             for k in range(n_workers)]
    log.info("sweep: started %d workers (pids %s)", n_workers, ", ".join(str(p.pid) for p in procs))
    try:
        for k, p in enumerate(procs):
            if p.wait() != 0:
                log.warning("sweep worker %d (pid %d) exited with %d", k, p.pid, p.returncode)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)


# --------------------------------------------------------------------------- the table

def _holder_text(sweep: Sweep, combo: Combo) -> str:
    text = claims.read_text(sweep.combo_dir(combo) / CLAIM_FILE)
    if text is None:
        err = claims.read_text(sweep.combo_dir(combo) / ERROR_FILE)
        return f"failed: {err.strip().split(': ', 1)[-1][:120]}" if err else "not run"
    holder = claims.holder(text)
    if not holder:
        return "claimed"
    alive = "stale claim" if claims.owner_gone(holder, claims.SlurmJobs()) else "running"
    return f"{alive}: pid {holder.get('pid')} on {holder.get('host')}"


def states(sweep: Sweep, ident: str | None) -> list[tuple[Combo, str]]:
    """Every combination with ``done``, or why not (running, stale claim, failed, not run)."""
    out = []
    for combo in sweep.combos:
        if is_done(read_result(sweep, combo), ident, sweep.n_trials):
            out.append((combo, "done"))
        else:
            out.append((combo, _holder_text(sweep, combo)))
    return out


def rank(results: list[dict], metric: str) -> list[dict]:
    """Results best first: by the valid metric (its direction), then the faster fit."""
    from textclf.core.metrics import is_minimized

    sign = 1.0 if is_minimized(metric) else -1.0
    return sorted(results, key=lambda r: (sign * float(r["valid_metric"] if r.get("valid_metric") is not None else -sign * 1e300),
                                          float(r.get("fit_seconds") or 0.0), r["index"]))


def table_rows(ranked: list[dict]) -> list[dict]:
    """The CSV rows (:data:`TABLE_COLUMNS`) of ranked results."""
    def rounded(r: dict, key: str, digits: int) -> float | None:
        return None if r.get(key) is None else round(float(r[key]), digits)

    rows = []
    for i, r in enumerate(ranked, 1):
        rows.append({"rank": i, "encoder": r["encoder"], "classifier": r["classifier"],
                     **{k: rounded(r, k, 6) for k in ("valid_macro_f1", "test_macro_f1", "valid_accuracy", "test_accuracy")},
                     **{k: rounded(r, k, 4) for k in ("fit_seconds", "search_seconds")},
                     **{k: rounded(r, k, 1) for k in ("predict_docs_per_s", "classify_docs_per_s")},
                     "n_trials": r.get("n_trials"), "balance": r.get("balance"),
                     "params": json.dumps(r.get("params", {}), sort_keys=True), "worker": r.get("worker", {}).get("worker_id"),
                     "model_dir": r.get("model_dir")})
    return rows


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    """The ranked table as aligned text."""
    head = ["rank", "encoder", "classifier", "valid_macro_f1", "test_macro_f1", "fit_s", "predict_docs/s", "balance", "trials"]
    body = [[str(r["rank"]), r["encoder"], r["classifier"], _num(r["valid_macro_f1"], ".4f"), _num(r["test_macro_f1"], ".4f"),
             _num(r["fit_seconds"], ".2f"), _num(r["predict_docs_per_s"], ".0f"), "yes" if r["balance"] else "no",
             str(r["n_trials"])] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    left = {1, 2, 7}

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    return "\n".join(fmt(line) for line in [head, *body])


def _point_best(sweep: Sweep, best: dict | None) -> None:
    """Make ``D/best`` a relative symlink to the best model directory (atomically: a temp link renamed over it)."""
    link = sweep.out / BEST_LINK
    if best is None:
        return
    tmp = sweep.out / f".{BEST_LINK}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(best["model_dir"], tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as exc:  # e.g. a filesystem without symlinks, or an old D/best directory
        tmp.unlink(missing_ok=True)
        log.warning("could not point %s at %s (%s); use --model_path %s", link, best["model_dir"], exc, sweep.out / best["model_dir"])


def report(sweep: Sweep, ident: str | None, echo=print) -> tuple[list[dict], list[tuple[Combo, str]]]:
    """Rank the finished combinations, write ``sweep.csv`` (atomic) and ``D/best``, print the table and what is missing.

    Returns ``(rows, missing)``: the table rows and ``(combination, why)`` for every unfinished one.
    """
    results, missing = [], []
    for combo, state in states(sweep, ident):
        if state == "done":
            results.append(read_result(sweep, combo))
        else:
            missing.append((combo, state))
    ranked = rank(results, sweep.metric)
    rows = table_rows(ranked)
    with atomic_open(sweep.out / TABLE_FILE, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _point_best(sweep, ranked[0] if ranked else None)
    echo(format_table(rows) if rows else "no finished combination yet")
    echo(f"\n{len(rows)}/{len(sweep.combos)} combinations finished; table: {sweep.out / TABLE_FILE}"
         + (f"; best model: {sweep.out / BEST_LINK} ({ranked[0]['combination']})" if ranked else ""))
    if missing:
        echo(f"missing {len(missing)}: " + "; ".join(f"{c.name} [{c.index}] ({why})" for c, why in missing))
    return rows, missing


# --------------------------------------------------------------------------- the command's modes

def run_sweep(sweep: Sweep, workers: int = 1, task_index: int | None = None, echo=print) -> int:
    """Run the sweep (or only combination ``task_index``) and, unless a task index is given, report; returns the exit status.

    The status is 1 when a combination failed or is still missing at the end (another worker may hold it), else 0.
    """
    if task_index is not None and not 0 <= task_index < len(sweep.combos):
        raise ConfigError(f"--task_index {task_index}: the sweep has {len(sweep.combos)} combinations (0..{len(sweep.combos) - 1})")
    splits = sweep.load_splits()
    ident = identity(sweep.cfg, splits.data_sha256)
    sweep.out.mkdir(parents=True, exist_ok=True)
    write_plan(sweep, ident, splits.paths)
    targets = sweep.combos if task_index is None else [sweep.combos[task_index]]
    pending = []
    for combo in targets:
        result = read_result(sweep, combo)
        if is_done(result, ident, sweep.n_trials):
            echo(f"{combo.name}: finished earlier (valid {sweep.metric} {result.get('valid_metric') or 0.0:.4f}), skipped")
            drop_stale_claim(sweep, combo)
        else:
            pending.append(combo)
    if task_index is not None:
        if not pending:
            return 0
        state = run_worker(sweep, splits, only=task_index).get(targets[0].name, "busy")
        echo(f"{targets[0].name}: {state}")
        return 1 if state == "failed" else 0
    n = min(max(1, workers), len(pending))
    log.info("sweep: %d of %d combinations to run, %d worker(s)", len(pending), len(sweep.combos), n)
    if n > 1:
        run_local_workers(sweep, n)
    elif n == 1:
        run_worker(sweep, splits)
    _, missing = report(sweep, ident, echo)
    return 1 if missing else 0


def report_only(sweep: Sweep, echo=print) -> int:
    """The table from the finished results alone (no data is read); 1 when some combination is missing."""
    plan = read_plan(sweep.out)
    _, missing = report(sweep, plan.get("identity") if plan else None, echo)
    return 1 if missing else 0


def list_combinations(sweep: Sweep, echo=print) -> None:
    """Print ``index encoder classifier state`` per combination (tab-separated; the count sizes a SLURM array)."""
    plan = read_plan(sweep.out)
    for combo, state in states(sweep, plan.get("identity") if plan else None):
        echo(f"{combo.index}\t{combo.encoder}\t{combo.classifier}\t{state}")

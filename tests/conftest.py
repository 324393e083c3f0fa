"""Shared fixtures: real data paths, offline hub, small slices of the embedded dataset, a private
embedding cache, and a local SLURM cluster.

Plain helpers here (:func:`head_csv`, :func:`train_family_cli`, :class:`ServeProcess`, the SLURM ones) are imported by test
modules as ``from conftest import ...`` after putting this folder on ``sys.path`` (pytest runs with
``--import-mode=importlib``, which does not).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Runs are not recorded in an MLflow store unless a test turns tracking on (--track, TEXTCLF_TRACK=1):
# many tests train twice into the same place, which tracking would skip as a duplicate.
os.environ["TEXTCLF_TRACK"] = "0"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One OpenMP/BLAS thread per process (torch, numpy; subprocesses inherit it), set before anything imports torch: on
# a busy 2-core machine two spinning threads per process made the MiniLM/SetFit tests 2-5x slower than one.
# OMP_NUM_THREADS in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tweets_sentiment"
#: the shared labelled datasets: ``../shared/data`` beside the repository, or ``$TEXTCLF_SHARED_DATA``
SHARED_DATA = Path(os.environ.get("TEXTCLF_SHARED_DATA") or REPO.parent / "shared" / "data")
INFRA = os.environ.get("TEXTCLF_INFRA_TESTS") == "1"


INFRA_MARKS = ("slurm", "postgres", "containers")
INFRA_GROUP = "infra"
#: the file lock of :func:`infra_lock`
INFRA_LOCK = Path(tempfile.gettempdir()) / "textclf-test-infra.lock"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Keep the tests that start daemons (SLURM, PostgreSQL, container builds) on one xdist worker.

    ``make test`` runs on one process per core with ``--dist loadgroup``: every other test may run beside them, but two
    local SLURM clusters, PostgreSQL servers or image builds at once would fight for the machine (and the cluster's
    munge socket). Those tests join the ``infra`` group, beside any ``xdist_group`` mark of their own. xdist groups by
    a ``@group`` suffix on the node id, which xdist 3.8 writes to ``item._nodeid``; pytest 9.2 keeps the id in
    ``item._id``, so the suffix is set here (on the workers, after xdist's own hook).
    :func:`infra_lock` makes the daemon fixtures wait for each other should the grouping ever be lost.
    """
    if not getattr(config.option, "loadgroup", False):  # set by xdist on its workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        if any(item.get_closest_marker(m) for m in INFRA_MARKS):
            groups.add(INFRA_GROUP)
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(groups))}")


_infra_depth = 0


@contextlib.contextmanager
def infra_lock():
    """Hold the machine-wide lock of the daemon fixtures (a file lock, re-entrant within a process): a SLURM cluster and
    a PostgreSQL server of one test module never run beside those of a module on another xdist worker."""
    global _infra_depth
    with open(INFRA_LOCK, "a") as fh:
        if _infra_depth == 0:
            fcntl.flock(fh, fcntl.LOCK_EX)
        _infra_depth += 1
        try:
            yield
        finally:
            _infra_depth -= 1
            if _infra_depth == 0:
                fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def require_shared(*parts: str) -> Path:
    """``SHARED_DATA / parts`` (a dataset folder or file); skips the calling test when it is not there.

    Every test that reads the shared datasets goes through this (or the fixtures below), so a checkout
    without ``../shared`` skips them with the reason instead of failing.
    """
    path = SHARED_DATA.joinpath(*parts)
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is not beside the repository: {SHARED_DATA} is missing "
                    "(clone the shared folder beside it or set TEXTCLF_SHARED_DATA)")
    if not path.exists():
        pytest.skip(f"{path} is missing from the shared data folder {SHARED_DATA}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the shared labelled datasets (CI clones the repository beside ``shared``); skips without it."""
    return require_shared()


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(name, *parts)``: a path inside the shared data folder; skips when it is missing."""
    return require_shared


@pytest.fixture(scope="session")
def tweets() -> dict[str, Path]:
    """The embedded default dataset's splits."""
    return {name: DATA / f"{name}.csv" for name in ("train", "valid", "test")}


def save_tiny_random_bert(path: Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT with the shipped MiniLM tokenizer, saved in Hugging Face format (no download)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from textclf.families.common.packaged import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden_size // 16), intermediate_size=2 * hidden_size,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return Path(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT for smoke runs: ``--model_name <path>`` trains in seconds."""
    return save_tiny_random_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


# --------------------------------------------------------------------------- data slices, the embedding cache


def head_csv(src, dst, n: int, skip: int = 0):
    """Write the header and ``n`` rows of CSV ``src`` (after skipping ``skip`` rows) to ``dst``; returns ``dst``."""
    with open(src, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(dst, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *rows[1 + skip: 1 + skip + n]])
    return dst


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private embedding cache for the requesting module ($TEXTCLF_CACHE; subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("emb_cache")
    old = os.environ.get("TEXTCLF_CACHE")
    os.environ["TEXTCLF_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TEXTCLF_CACHE", None)
    else:
        os.environ["TEXTCLF_CACHE"] = old


def train_family_cli(family: str, data: dict, out, *extra: str):
    """``textclf train <family>`` on ``data``'s train/valid/test splits into ``out`` on the CPU; asserts it succeeds."""
    from click.testing import CliRunner

    from textclf.cli.family_cmd import train_command

    args = ["--train_path", str(data["train"]), "--valid_path", str(data["valid"]), "--test_path", str(data["test"]),
            "--output_dir", str(out), "--device", "cpu", *extra]
    result = CliRunner().invoke(train_command(family), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# --------------------------------------------------------------------------- textclf serve in a subprocess


class ServeProcess:
    """``textclf serve --port 0 ARGS`` in a subprocess: ``url``/``port`` once ``/ready`` answers 200, its log in ``log()``."""

    def __init__(self, model: Path, *args: str, env: dict | None = None, timeout: float = 90.0, ready_runs: int = 1,
                 **popen):
        import httpx

        textclf = Path(sys.executable).parent / "textclf"  # the console script of this environment
        self.proc = subprocess.Popen([str(textclf), "serve", "--model_path", str(model), "--port", "0", *args],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, **popen)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            line = self.proc.stderr.readline()
            self.lines.append(line)
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            m = re.search(r"on (http://127\.0\.0\.1:(\d+))", line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
            assert time.monotonic() < deadline, "server did not start"
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()  # keep draining the log
        ready = 0
        while time.monotonic() < deadline:
            try:  # with --workers N each worker loads on its own: wait for a run of ready answers
                ready = ready + 1 if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            if ready >= ready_runs:
                return
            time.sleep(0.05 if ready else 0.2)
        self.proc.kill()
        raise AssertionError("server never became ready")

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after 30 s)."""
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._reader.join(timeout=5)


# --------------------------------------------------------------------------- a local SLURM cluster


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


def wait(env: dict, *job_ids: str) -> int:
    return run(["bash", "slurm/wait.sh", *job_ids], dict(env, WAIT_TIMEOUT="400"), check=False).returncode


def job_states(env: dict, job_id: str) -> list[tuple[str, int]]:
    """(JobState, exit code) of every task of a job, from scontrol (no accounting needed)."""
    out = run(["scontrol", "show", "job", "-o", job_id], env).stdout
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"JobState=(\S+).*? ExitCode=(\d+):\d+", out)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """A fresh cluster on free ports in a temporary folder; yields the environment for sbatch/make.

    Starting its daemons needs root on Debian, so it skips unless TEXTCLF_INFRA_TESTS=1 (``make test_infra``).
    ``TEXTCLF_TEST_SLURM_DIR`` in the environment names the cluster's folder.
    """
    if not INFRA:
        pytest.skip("SLURM tests start daemons as root: set TEXTCLF_INFRA_TESTS=1 or run `make test_infra`")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (munged/slurmd)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm is not installed and apt-get is unavailable")
    d = tmp_path_factory.mktemp("slurm")
    with infra_lock():
        env = dict(os.environ, SLURMCTLD_PORT=str(free_port()), SLURMD_PORT=str(free_port()), SLURM_CONF=str(d / "slurm.conf"))
        up = run(["bash", "slurm/local-cluster.sh", "up", str(d)], env, timeout=300, check=False)
        if up.returncode == 3:
            pytest.skip(f"cannot install SLURM here: {up.stderr.strip()}")
        assert up.returncode == 0, up.stderr
        env["TEXTCLF_TEST_SLURM_DIR"] = str(d)
        yield env
        run(["bash", "slurm/local-cluster.sh", "down", str(d)], env, check=False)


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A throw-away PostgreSQL server (Debian's postgresql) on a loopback port; yields its URL."""
    if not INFRA:
        pytest.skip("PostgreSQL test starts a server: set TEXTCLF_INFRA_TESTS=1 or run `make test_infra`")
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql (docker/ci-system-deps.sh)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install '.[postgres]'")
    with infra_lock():
        bindir = Path(initdb[-1]).parent
        as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            as_user = ["runuser", "-u", "postgres", "--"]
        root = Path(tempfile.mkdtemp(prefix="textclf-pg-"))
        if as_user:
            shutil.chown(root, "postgres")
        data, port = root / "data", free_port()
        run(as_user + [str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"], timeout=120)
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o", opts, "start"], timeout=60)
        try:
            run(as_user + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"])
            yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
        finally:
            run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], check=False)
            shutil.rmtree(root, ignore_errors=True)


def make(target: str, env: dict, **variables: str) -> subprocess.CompletedProcess:
    """``make TARGET VAR=value...`` in the repository with ``env``; raises when it fails."""
    return run(["make", "--no-print-directory", target] + [f"{k}={v}" for k, v in variables.items()], env)


@pytest.fixture(scope="session")
def ft_model(tmp_path_factory, tweets) -> Path:
    """A small fastText model on the embedded tweets with a test split (fixed params, no search: ~2 s), shared read-only
    by the serving, card and page tests (a test that changes it works on a copy)."""
    from click.testing import CliRunner

    from textclf.cli import cli

    out = tmp_path_factory.mktemp("ft_model") / "model"
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path",
                                      str(tweets["valid"]), "--test_path", str(tweets["test"]), "--output_dir", str(out),
                                      "--n_trials", "0", "--set", "model.dim=20", "--set", "model.bucket=100000"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trust_model_code():
    """Consent to run the plug-in code that models keep in their directory, as a user would with ``--trust-code``
    (tests/test_safety_loading.py checks the refusal without it). Subprocesses inherit it. Modules that load
    plug-in models use it with ``pytestmark = pytest.mark.usefixtures("trust_model_code")``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTCLF_TRUST_CODE", "1")
        yield


# ---- a real browser for the page tests (issue 25): Debian's headless chromium driven by Playwright ----
class BrowserPage:
    """One Playwright page in headless chromium that refuses (and records) every request leaving this machine."""

    def __init__(self, page):
        self.page = page
        self.external: list[str] = []
        self.console_errors: list[str] = []

        def route(r):
            url = r.request.url
            host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
            if url.startswith(("http://", "https://")) and host not in ("127.0.0.1", "localhost", "[::1]"):
                self.external.append(url)
                return r.abort()
            return r.continue_()

        page.route("**/*", route)
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)

    def broken_images(self) -> list[str]:
        """The src of every <img> on the page that did not load (naturalWidth 0)."""
        return self.page.eval_on_selector_all("img", "els => els.filter(e => !e.complete || e.naturalWidth === 0).map(e => e.src)")


@pytest.fixture
def browser_page():
    """A fresh page (downloads allowed) in a real headless chromium; external requests fail and are listed.

    Playwright's sync API keeps an asyncio loop running in this thread while it is started, so it is started and
    stopped around each test (a session-wide one breaks later ``asyncio.run`` calls, e.g. tests/test_serve.py's).
    """
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[trust]')")
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root here; the browser is Debian's own (Playwright cannot download one)
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        yield BrowserPage(context.new_page())
        context.close()
        browser.close()

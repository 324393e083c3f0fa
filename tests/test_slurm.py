"""The sbatch scripts and make targets against a real single-node SLURM cluster (slurm/local-cluster.sh).

BERT trains as one batch job; fastText runs as a 2-task Optuna worker array on one study (a journal
file, then a real PostgreSQL server) followed by an ``afterok`` refit job whose model predicts.
A family from a plug-in file (CODE=examples/plugins/tfidf_logreg.py) is tuned the same way: the
file reaches every job as --code. Failures propagate (a failing worker is FAILED with its exit
code, and the refit is cancelled), a cancelled job leaves no process behind, and the cluster
shuts down cleanly.

Starting daemons needs root on Debian, so these tests run only with TEXTCLF_INFRA_TESTS=1
(``make test_infra``; ``.ci/run`` sets it) and otherwise skip with that reason.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, job_states, make, run, wait  # noqa: E402

FT_SET = "search.space.bucket.choices=[100000] search.space.epoch.high=15 search.space.dim.choices=[25,50]"
N_TRIALS = 6
TINY_BERT = "two_stage=false model.max_length=16 model.gradient_checkpointing=false stage2.epochs=1 train.batch_size=32 device=cpu"


def pid_alive(pid_file: Path) -> bool:
    """True when the pid in ``pid_file`` is a live process (zombies count as gone)."""
    try:
        pid = int(pid_file.read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z"


def job_processes(job_id: str) -> list[int]:
    """Live processes whose environment says they belong to SLURM job ``job_id``."""
    needle = f"SLURM_JOB_ID={job_id}\0".encode()
    pids = []
    for env_file in glob.glob("/proc/[0-9]*/environ"):
        try:
            if needle in Path(env_file).read_bytes():
                pid = int(env_file.split("/")[2])
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return pids




def tune(env: dict, out: Path, logs: Path, **variables: str) -> tuple[str, str]:
    """``make tune_fasttext_slurm`` with 2 workers; returns (array job id, refit job id)."""
    proc = make("tune_fasttext_slurm", env, N_WORKERS="2", N_TRIALS=str(N_TRIALS), FASTTEXT_DIR=str(out), SLURM_LOGS=str(logs),
                WORKER_CPUS="1", WORKER_MEM="1G", TIME_LIMIT="0:15:00", SET=FT_SET, **variables)
    m = re.search(r"array_job=(\d+) refit_job=(\d+)", proc.stdout)
    assert m, proc.stdout
    return m.group(1), m.group(2)


def check_study_and_model(study, out: Path, tweets: dict) -> None:
    """Both array tasks ran trials, none was lost, and the refit model predicts the test split."""
    import csv

    from optuna.trial import TrialState

    from textclf.core.loading import load_predictor

    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # contiguous: nothing lost
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials), [t.state for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) >= N_TRIALS
    tasks = {t.user_attrs.get("slurm_array_task_id") for t in trials}
    assert tasks == {"0", "1"}, tasks
    assert len({t.user_attrs["slurm_job_id"] for t in trials}) == 2
    assert all(t.user_attrs.get("slurm_array_job_id") for t in trials)

    predictor = load_predictor(out)
    with open(tweets["test"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    preds = predictor.predict([r["text"] for r in rows])
    accuracy = sum(p == r["label"] for p, r in zip(preds, rows, strict=True)) / len(rows)
    assert accuracy > 0.7
    assert predictor.meta["search"]["best_value"] == study.best_value


def test_fasttext_worker_array_on_journal_file(cluster, tweets, tmp_path):
    import optuna

    from textclf.core.tuning import make_storage

    out, logs = tmp_path / "ft", tmp_path / "logs"
    array, refit = tune(cluster, out, logs)
    assert wait(cluster, array, refit) == 0
    assert job_states(cluster, array) == [("COMPLETED", 0), ("COMPLETED", 0)]
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"textclf-fasttext-worker-{array}_0.out", f"textclf-fasttext-worker-{array}_1.out", f"textclf-fasttext-refit-{refit}.out"])
    study = optuna.load_study(study_name="fasttext", storage=make_storage(None, out))
    check_study_and_model(study, out, tweets)


@pytest.mark.postgres
def test_fasttext_worker_array_on_postgresql(cluster, postgres_url, tweets, tmp_path):
    import optuna

    out, logs = tmp_path / "ft", tmp_path / "logs"
    array, refit = tune(cluster, out, logs, STORAGE=postgres_url)
    assert wait(cluster, array, refit) == 0
    assert not (out / "study.journal").exists()  # the study lives in PostgreSQL
    study = optuna.load_study(study_name="fasttext", storage=postgres_url)
    check_study_and_model(study, out, tweets)


PLUGIN = REPO / "examples" / "plugins" / "tfidf_logreg.py"


def test_plugin_family_worker_array_gets_the_code_file(cluster, tweets, tmp_path):
    """make tune_slurm FAMILY=tfidf_logreg CODE=...: workers and refit run textclf tune --code FILE tfidf_logreg."""
    import csv

    import optuna

    from textclf.core.loading import load_predictor
    from textclf.core.tuning import make_storage

    if not PLUGIN.is_file():
        pytest.skip(f"{PLUGIN.relative_to(REPO)} is not there")
    out, logs = tmp_path / "tfidf_logreg", tmp_path / "logs"  # MODELS/<family>
    proc = make("tune_slurm", cluster, FAMILY="tfidf_logreg", CODE=str(PLUGIN.relative_to(REPO)), N_WORKERS="2",
                N_TRIALS="4", MODELS=str(tmp_path), SLURM_LOGS=str(logs), WORKER_CPUS="1", WORKER_MEM="1G", TIME_LIMIT="0:15:00")
    array, refit = re.search(r"array_job=(\d+) refit_job=(\d+)", proc.stdout).groups()
    assert wait(cluster, array, refit) == 0, "".join(p.read_text()[-2000:] for p in logs.iterdir())
    for log in (logs / f"textclf-tfidf_logreg-worker-{array}_0.out", logs / f"textclf-tfidf_logreg-refit-{refit}.out"):
        assert f"tune --code {PLUGIN} tfidf_logreg --train_path" in log.read_text()  # made absolute for the jobs
    assert "--no-refit" in (logs / f"textclf-tfidf_logreg-worker-{array}_1.out").read_text()

    study = optuna.load_study(study_name="tfidf_logreg", storage=make_storage(None, out))
    assert {t.user_attrs.get("slurm_array_task_id") for t in study.trials} == {"0", "1"}
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 4
    # the refit's model directory carries the plug-in, so it loads without --code (with consent to run it)
    predictor = load_predictor(out, trust_code=True)
    assert predictor.meta["kind"] == "tfidf_logreg" and (out / predictor.meta["plugin_code"]).is_file()
    with open(tweets["test"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    preds = predictor.predict([r["text"] for r in rows])
    assert sum(p == r["label"] for p, r in zip(preds, rows, strict=True)) / len(rows) > 0.6


NO_SEARCH_PLUGIN = """from textclf.core.registry import Family, register_family

register_family(Family(name="nosearch", fit="textclf.families.fasttext.model:fit",
                       predictor="textclf.families.fasttext.model:FastTextPredictor", config={"model": {}}))
"""


def test_tune_sh_takes_searchable_families_from_the_registry(tmp_path):
    """Names are checked against the registry before anything is submitted (no cluster needed)."""
    args = ["--train_path", "x.csv", "--valid_path", "x.csv", "--output_dir", str(tmp_path), "--n_trials", "2"]
    plugin = tmp_path / "nosearch.py"  # a family with no search space (every built-in one has one)
    plugin.write_text(NO_SEARCH_PLUGIN, encoding="utf-8")
    proc = run(["bash", "slurm/tune.sh", "nosearch", "2", *args], dict(os.environ, CODE=str(plugin)), check=False)
    assert proc.returncode == 2 and ("family 'nosearch' has no search space to tune; families with one: "
                                     "bert (bert_classification), embeddings, fasttext, lstm (allennlp), setfit") in proc.stderr
    proc = run(["bash", "slurm/tune.sh", "tfidf_logreg", "2", *args], check=False)
    assert proc.returncode == 2 and "unknown model family 'tfidf_logreg'" in proc.stderr  # needs its CODE file
    proc = run(["bash", "slurm/tune.sh", "fasttext", "2", *args], dict(os.environ, CODE=str(tmp_path / "nope.py")), check=False)
    assert proc.returncode == 2 and "nope.py: file not found" in proc.stderr


def test_bert_job_passes_code_on(cluster, tmp_path):
    """CODE=file.py: the BERT job runs textclf train --code FILE bert (here it fails on purpose, after importing the file)."""
    plugin = tmp_path / "marker_plugin.py"
    plugin.write_text("import sys\nprint('marker plug-in imported', file=sys.stderr)\n", encoding="utf-8")
    proc = run(["sbatch", "--parsable", "--gres=none", "--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/%j.out",
                "slurm/train_bert.sbatch", "--train_path", str(tmp_path / "nope.csv"), "--valid_path", str(tmp_path / "nope.csv"),
                "--output_dir", str(tmp_path / "bert")], dict(cluster, CODE=str(plugin)))
    job = proc.stdout.strip().split(";")[0]
    assert wait(cluster, job) == 2
    log = (tmp_path / f"{job}.out").read_text()
    assert f"+ .venv/bin/textclf train --code {plugin} bert --train_path {tmp_path}/nope.csv" in log
    assert "marker plug-in imported" in log and "nope.csv" in log


def test_failing_workers_are_reported_and_cancel_the_refit(cluster, tmp_path):
    logs = tmp_path / "logs"
    proc = make("tune_fasttext_slurm", cluster, N_WORKERS="2", N_TRIALS="2", TRAIN_PATH=str(tmp_path / "missing.csv"),
                FASTTEXT_DIR=str(tmp_path / "ft"), SLURM_LOGS=str(logs), WORKER_CPUS="1", WORKER_MEM="1G")
    array, refit = re.search(r"array_job=(\d+) refit_job=(\d+)", proc.stdout).groups()
    assert wait(cluster, array) == 2  # the CLI's exit code for a data error comes back through SLURM
    assert job_states(cluster, array) == [("FAILED", 2), ("FAILED", 2)]
    assert "missing.csv" in (logs / f"textclf-fasttext-worker-{array}_0.out").read_text()
    wait(cluster, refit)
    assert [s for s, _ in job_states(cluster, refit)] == ["CANCELLED"]  # afterok never satisfied: not left pending


@pytest.fixture(scope="module")
def tiny_bert_data(tweets, tmp_path_factory) -> Path:
    """The first 64 train and 40 valid rows of tweets_sentiment."""
    data = tmp_path_factory.mktemp("bert_data")
    for split, n in (("train", 64), ("valid", 40)):
        lines = tweets[split].read_text(encoding="utf-8").splitlines(keepends=True)
        (data / f"{split}.csv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return data


def test_bert_training_job(cluster, tiny_bert_data, tmp_path):
    import json

    data = tiny_bert_data
    out, logs = tmp_path / "bert", tmp_path / "logs"
    proc = make("train_bert_classification_slurm", cluster, GPUS="0", CPUS="2", MEM="4G", TIME_LIMIT="0:15:00",
                TRAIN_PATH=str(data / "train.csv"), VALID_PATH=str(data / "valid.csv"), TEST_PATH=str(data / "valid.csv"),
                BERT_DIR=str(out), SLURM_LOGS=str(logs), SET=TINY_BERT)
    job = re.search(r"job (\d+)", proc.stdout).group(1)
    log = logs / f"textclf-bert-{job}.out"
    assert str(log) in proc.stdout  # make prints where the log is
    assert wait(cluster, job) == 0, log.read_text()[-3000:] if log.exists() else "no log"
    assert job_states(cluster, job) == [("COMPLETED", 0)]
    text = log.read_text()
    assert "+ .venv/bin/python bert_classification/train.py --train_path" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bert" and meta["config"]["model"]["max_length"] == 16


def test_bert_job_inside_the_image(cluster, tiny_bert_data, tmp_path):
    """The same sbatch script with SLURM_IMAGE: the job runs the train command in the BERT image (podman)."""
    import json

    image = "textclf-bert:test"  # built by tests/test_containers.py earlier in the session
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (docker/ci-system-deps.sh)")
    env = dict(cluster)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))  # as in tests/test_containers.py
    if subprocess.run(["podman", "image", "exists", image], env=env).returncode != 0:
        pytest.skip(f"image {image} not built (tests/test_containers.py builds it)")
    out, logs = tmp_path / "bert", tmp_path / "logs"
    proc = make("train_bert_classification_slurm", env, SLURM_IMAGE=image, DOCKER="podman", GPUS="0", CPUS="2", MEM="4G",
                TIME_LIMIT="0:15:00", TRAIN_PATH=str(tiny_bert_data / "train.csv"), VALID_PATH=str(tiny_bert_data / "valid.csv"),
                TEST_PATH=str(tiny_bert_data / "valid.csv"), BERT_DIR=str(out), SLURM_LOGS=str(logs), SET=TINY_BERT)
    job = re.search(r"job (\d+)", proc.stdout).group(1)
    log = logs / f"textclf-bert-{job}.out"
    assert wait(env, job) == 0, log.read_text()[-3000:] if log.exists() else "no log"
    text = log.read_text()
    assert f"+ podman run --rm --user {os.getuid()}:{os.getgid()}" in text
    assert "+ python bert_classification/train.py --train_path" in text  # printed by the image's entry point
    assert json.loads((out / "meta.json").read_text())["kind"] == "bert"


def test_bert_job_failure_propagates(cluster, tmp_path):
    proc = run(["sbatch", "--parsable", "--gres=none", "--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/%j.out",
                "slurm/train_bert.sbatch", "--train_path", str(tmp_path / "nope.csv"), "--valid_path", str(tmp_path / "nope.csv"),
                "--output_dir", str(tmp_path / "bert")], cluster)
    job = proc.stdout.strip().split(";")[0]
    assert wait(cluster, job) == 2
    assert job_states(cluster, job) == [("FAILED", 2)]


def submit_sleeping_job(cluster, tmp_path) -> str:
    """Submit a job that sleeps for 10 minutes and wait until its processes run; return its id."""
    proc = run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=100M", f"--output={tmp_path}/%j.out",
                "slurm/optuna_worker.sbatch", "sleep", "600"], cluster)
    job = proc.stdout.strip().split(";")[0]
    deadline = time.time() + 60
    while not job_processes(job):
        assert time.time() < deadline, "the job never started"
        time.sleep(0.2)
    return job


def test_cancelled_job_leaves_nothing_running(cluster, tmp_path):
    job = submit_sleeping_job(cluster, tmp_path)
    run(["scancel", job], cluster)
    assert wait(cluster, job) == 1
    assert [s for s, _ in job_states(cluster, job)] == ["CANCELLED"]
    deadline = time.time() + 20
    while job_processes(job):
        assert time.time() < deadline, f"processes of cancelled job {job} still running: {job_processes(job)}"
        time.sleep(0.2)


def test_cluster_shuts_down(cluster, tmp_path):
    """Last in the module: `down` cancels what is queued and stops every daemon it started."""
    d = Path(cluster["TEXTCLF_TEST_SLURM_DIR"])
    job = submit_sleeping_job(cluster, tmp_path)
    run(["bash", "slurm/local-cluster.sh", "down", str(d)], cluster)
    assert not pid_alive(d / "slurmctld.pid") and not pid_alive(d / "slurmd.pid")
    deadline = time.time() + 20
    while job_processes(job):
        assert time.time() < deadline, f"job {job} survived the shutdown: {job_processes(job)}"
        time.sleep(0.2)

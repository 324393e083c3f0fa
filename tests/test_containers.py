"""Real container builds and runs through the Makefile targets (podman; Docker works the same way).

No registry can be pulled from here, so ``docker/make-local-base.sh`` first makes the images the
Dockerfiles name by default from Debian packages (skipped when they exist); the Dockerfiles then
build unchanged. The fastText image trains and predicts on data mounted from the host, and the
model it writes is read back on the host; the BERT image runs one tiny training.

These tests take minutes and need root on Debian, so they run only with TEXTCLF_INFRA_TESTS=1
(``make test_infra``; ``.ci/run`` sets it) and otherwise skip with that reason.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

REPO = Path(__file__).resolve().parents[1]
INFRA = os.environ.get("TEXTCLF_INFRA_TESTS") == "1"
TAG = "test"
# a narrow search keeps each fastText trial well under a second
FT_SET = "search.space.bucket.choices=[100000] search.space.epoch.high=20 search.space.dim.choices=[25,50]"


def run(cmd: list[str], env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the repo, echo its output into the test log, fail with the tail on error."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(f"$ {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}\n")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def podman_env() -> dict:
    """Environment for podman here: docker/containers.conf (runc; ulimits that fit a 20000 open-files hard limit)."""
    import resource

    env = dict(os.environ, DOCKER="podman")
    if "CONTAINERS_CONF" not in env:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < 20000:
            pytest.skip(f"open-files hard limit {hard} < 20000 (docker/containers.conf): set CONTAINERS_CONF")
        env["CONTAINERS_CONF"] = str(REPO / "docker" / "containers.conf")
    return env


@pytest.fixture(scope="module")
def engine() -> dict:
    """Environment for make/podman: DOCKER=podman with a working containers.conf, base images present."""
    if not INFRA:
        pytest.skip("container tests build images (minutes): set TEXTCLF_INFRA_TESTS=1 or run `make test_infra`")
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run `bash docker/ci-system-deps.sh` (Debian, root)")
    env = podman_env()
    info = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], env=env, capture_output=True, text=True)
    if info.returncode != 0:
        pytest.skip(f"podman does not work here: {info.stderr.strip()[-300:]}")
    return env


def make(target: str, env: dict, **variables: str) -> subprocess.CompletedProcess:
    args = ["make", "--no-print-directory", target, "DOCKER=podman", "BUILD_FLAGS=--pull=never --format docker"]
    return run(args + [f"{k}={v}" for k, v in variables.items()], env)


def test_fasttext_image_trains_and_predicts_on_host_data(engine, tweets, tmp_path):
    run(["bash", "docker/make-local-base.sh", "python"], engine)
    image = f"textclf-fasttext:{TAG}"
    make("build_fasttext", engine, FASTTEXT_IMAGE=image)

    # the image runs as a non-root user
    uid = run(["podman", "run", "--rm", "--entrypoint", "id", image, "-u"], engine).stdout.strip()
    assert uid == "10001"

    out = tmp_path / "ft"
    proc = make("train_fasttext_docker", engine, FASTTEXT_IMAGE=image, FASTTEXT_DIR=str(out), N_TRIALS="3", SET=FT_SET)
    # the container ran the host's command: python fasttext/train.py with the mounted splits
    assert "+ python fasttext/train.py --test_path /data/test.csv --train_path /data/train.csv" in proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "fasttext" and meta["search"]["n_trials"] >= 3
    assert meta["metrics"]["test"]["macro_f1"] > 0.6

    # predict inside the container on the host's test split, into the host folder
    # as the Makefile does: --user of the caller, who owns the model files the training wrote
    user = f"{os.getuid()}:{os.getgid()}"
    run(["podman", "run", "--rm", "--user", user, "-v", f"{tweets['test'].parent}:/data:ro", "-v", f"{out}:/out", image,
         "python", "fasttext/predict.py", "--model_path", "/out", "--input_path", "/data/test.csv",
         "--output_path", "/out/preds.txt"], engine)
    preds = (out / "preds.txt").read_text().splitlines()
    with open(tweets["test"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(preds) == len(rows)
    labels = [p.split("\t")[0] for p in preds]
    assert set(labels) <= set(meta["labels"])
    # the model written by the container loads on the host and agrees with the container's predictions
    from textclf.predictor import load_predictor

    host = load_predictor(out).predict([r["text"] for r in rows])
    assert host == labels
    accuracy = sum(p == r["label"] for p, r in zip(host, rows, strict=True)) / len(rows)
    assert accuracy > 0.7


def test_bert_image_runs_one_tiny_training(engine, tweets, tmp_path):
    run(["bash", "docker/make-local-base.sh", "torch"], engine)
    image = f"textclf-bert:{TAG}"
    make("build_bert_classification", engine, BERT_IMAGE=image)

    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("valid", 40)):
        lines = tweets[split].read_text(encoding="utf-8").splitlines(keepends=True)
        (data / f"{split}.csv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    out = tmp_path / "bert"
    proc = make("train_bert_classification_docker", engine, BERT_IMAGE=image, BERT_DIR=str(out), DATA_DIR=str(data),
                GPU_FLAGS="", DOCKER_RUN_FLAGS="-e HF_HUB_OFFLINE=1", EPOCHS="1", BATCH_SIZE="32",
                SET="two_stage=false model.max_length=16 model.gradient_checkpointing=false device=cpu")
    assert "+ python bert_classification/train.py --train_path /data/train.csv" in proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bert"
    # the seed's EPOCHS/BATCH_SIZE variables reached the config inside the container
    assert meta["config"]["stage2"]["epochs"] == 1 and meta["config"]["train"]["batch_size"] == 32
    assert 0.0 <= meta["metrics"]["valid"]["accuracy"] <= 1.0

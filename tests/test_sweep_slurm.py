"""`textclf sweep` as a SLURM job array on a real single-node cluster (slurm/local-cluster.sh), then the report job.

``make sweep_slurm`` submits one array task per encoder x classifier (slurm/sweep.sbatch appends
``--task_index $SLURM_ARRAY_TASK_ID``) and an ``afterany`` job running ``textclf sweep ... --report_only``.
Starting the daemons needs root on Debian, so this runs only with TEXTCLF_INFRA_TESTS=1
(``make test_infra``), like tests/test_slurm.py, and otherwise skips with that reason.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, head_csv, job_states, run, wait  # noqa: E402


def test_sweep_array_then_report(cluster, tweets, tmp_path):
    data, out, logs = tmp_path / "data", tmp_path / "sweep", tmp_path / "logs"
    data.mkdir()
    variables = {"SWEEP_ENCODERS": "minilm,tfidf_svd", "SWEEP_CLASSIFIERS": "logreg,knn", "SWEEP_TRIALS": "3",
                 "SWEEP_DIR": str(out), "SLURM_LOGS": str(logs), "WORKER_CPUS": "1", "WORKER_MEM": "2G", "TIME_LIMIT": "0:15:00",
                 "TRAIN_PATH": str(head_csv(tweets["train"], data / "train.csv", 160)),
                 "VALID_PATH": str(head_csv(tweets["valid"], data / "valid.csv", 60)),
                 "TEST_PATH": str(head_csv(tweets["test"], data / "test.csv", 60)),
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

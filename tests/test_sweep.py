"""`textclf sweep`: encoder x classifier studies, the ranked table, resuming after kill -9, local workers, array tasks.

Real encoders (the shipped MiniLM and tfidf_svd) on the first rows of tweets_sentiment; MiniLM
vectors are encoded once into a private embedding cache and shared by every run and worker here.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")
pytest.importorskip("sklearn")

from textclf.cli import cli  # noqa: E402
from textclf.core.config import load_config  # noqa: E402
from textclf.families.embeddings import sweep as sw  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import head_csv  # noqa: E402

N_TRAIN, N_VALID, N_TEST = 240, 80, 80
TEXTCLF = Path(sys.executable).with_name("textclf")
TFIDF = "tfidf_svd.n_components=32"


@pytest.fixture(scope="module")
def small(tmp_path_factory, tweets):
    """The first rows of train/valid/test."""
    d = tmp_path_factory.mktemp("sweep_data")
    return {"train": head_csv(tweets["train"], d / "train.csv", N_TRAIN), "valid": head_csv(tweets["valid"], d / "valid.csv", N_VALID),
            "test": head_csv(tweets["test"], d / "test.csv", N_TEST)}


def args(data, out, encoders, classifiers, *extra, n_trials=3):
    return ["--encoders", encoders, "--classifiers", classifiers, "--train_path", str(data["train"]), "--valid_path",
            str(data["valid"]), "--test_path", str(data["test"]), "--output_dir", str(out), "--n_trials", str(n_trials),
            "--bench_docs", "16", "--device", "cpu", "--set", TFIDF, *extra]


def sweep(*argv):
    return CliRunner().invoke(cli, ["sweep", *argv], catch_exceptions=False)


def table(out):
    with open(out / "sweep.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def result(out, name):
    return json.loads((out / "combos" / name / "result.json").read_text())


def attempts(out, name):
    return (out / "combos" / name / "attempts.log").read_text().splitlines()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, small, cache_dir):
    """One finished 2 x 2 sweep (in process), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    res = sweep(*args(small, out, "minilm,tfidf_svd", "logreg,knn"))
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.mark.slow  # a 2 x 2 sweep with MiniLM (quick: test_a_sweep_on_label_sets_ranks_by_micro_f1)
def test_two_by_two_sweep_writes_a_ranked_table(swept, small, cache_dir):
    import textclf
    from textclf.core.data import read_labelled

    out, output = swept
    columns, rows = table(out)
    assert tuple(columns) == sw.TABLE_COLUMNS
    assert {(r["encoder"], r["classifier"]) for r in rows} == {("minilm", "logreg"), ("minilm", "knn"),
                                                                ("tfidf_svd", "logreg"), ("tfidf_svd", "knn")}
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    f1 = [float(r["valid_macro_f1"]) for r in rows]
    assert f1 == sorted(f1, reverse=True)
    for r in rows:
        assert 0 < float(r["test_macro_f1"]) <= 1 and float(r["fit_seconds"]) >= 0 and float(r["predict_docs_per_s"]) > 0
        assert r["n_trials"] == "3" and json.loads(r["params"])
    for line in ("valid_macro_f1", "test_macro_f1", "fit_s", "predict_docs/s", "4/4 combinations finished"):
        assert line in output
    # each combination: its own study (3 trials over its space + balance), result.json, a model directory
    res = result(out, "minilm__knn")
    assert res["trial_states"] == {"COMPLETE": 3} and res["encoder"] == "minilm" and res["classifier"] == "knn"
    assert (out / "combos" / "minilm__knn" / "study.journal").exists()
    trials = list(csv.DictReader((out / "combos" / "minilm__knn" / "trials.csv").open()))
    assert {k for k in trials[0] if k.startswith("params_")} == {"params_balance", "params_knn.n_neighbors"}
    # D/best is the winner's model directory and predicts with the saved model
    best = rows[0]
    assert (out / "best").resolve() == (out / best["model_dir"]).resolve()
    predictor = textclf.load_predictor(out / "best")
    meta = predictor.meta
    assert meta["classifier"] == best["classifier"] and meta["metrics"]["valid"]["macro_f1"] == pytest.approx(float(best["valid_macro_f1"]))
    valid = read_labelled(small["valid"])
    assert len(predictor.predict(valid.texts[:8])) == 8
    # MiniLM went through the shared cache (train, valid, test)
    minilm = [e for e in (json.loads(p.read_text()) for p in cache_dir.glob("*.json")) if e.get("encoder") == "minilm"]
    assert sorted(e["n"] for e in minilm) == [N_VALID, N_TEST, N_TRAIN]
    plan = json.loads((out / "sweep.json").read_text())
    assert [c["dir"] for c in plan["combinations"]] == ["combos/minilm__logreg", "combos/minilm__knn",
                                                          "combos/tfidf_svd__logreg", "combos/tfidf_svd__knn"]


@pytest.mark.slow  # reads the 2 x 2 sweep
def test_rerun_skips_everything_finished(swept, small):
    out, _ = swept
    before = {p: p.stat().st_mtime_ns for p in out.glob("combos/*/result.json")}
    res = sweep(*args(small, out, "minilm,tfidf_svd", "logreg,knn"))
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("combos/*/result.json")} == before
    assert res.output.count("finished earlier") == 4 and "skipped" in res.output
    assert len(table(out)[1]) == 4


@pytest.mark.slow  # a sweep process killed mid-way, then rerun (quick: test_rerun_skips_everything_finished)
def test_killed_sweep_resumes_and_skips_finished_combinations(tmp_path, small, cache_dir):
    out = tmp_path / "out"
    argv = [str(TEXTCLF), "sweep", *args(small, out, "tfidf_svd", "logreg,knn,linear_svm", n_trials=6)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not list(out.glob("combos/*/result.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no combination finished in 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("combos/*/result.json")}
    assert 1 <= len(done) < 3, f"killed too late: {sorted(done)}"
    # the combination the kill interrupted (a claim left by a worker killed after writing its result is only removed)
    stale = [p.parent.name for p in out.glob("combos/*/claim") if not (p.parent / "result.json").exists()]

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    for name, (mtime, text) in done.items():
        path = out / "combos" / name / "result.json"
        assert (path.stat().st_mtime_ns, path.read_text()) == (mtime, text)  # not re-run
        assert f"{name}: finished earlier (valid macro_f1 " in second.stdout and "skipped" in second.stdout
        assert len(attempts(out, name)) == 1
    for name in stale:  # the combination the kill interrupted: its claim is taken over, its study resumed
        assert f"{name}: taking over the stale claim" in second.stderr
        assert len(attempts(out, name)) == 2
        assert result(out, name)["trial_states"].get("COMPLETE") == 6
    _, rows = table(out)
    assert sorted(r["classifier"] for r in rows) == ["knn", "linear_svm", "logreg"]
    assert not list(out.glob("combos/*/claim"))


@pytest.mark.slow  # two worker processes, each loading MiniLM (claims: test_claims_are_exclusive_...)
def test_two_workers_run_every_combination_exactly_once(tmp_path, small, cache_dir, swept):
    out = tmp_path / "out"
    res = sweep(*args(small, out, "minilm,tfidf_svd", "logreg,knn"), "--workers", "2")
    assert res.exit_code == 0, res.output
    names = ["minilm__logreg", "minilm__knn", "tfidf_svd__logreg", "tfidf_svd__knn"]
    for name in names:
        assert len(attempts(out, name)) == 1, attempts(out, name)  # claimed once: nobody ran it twice
    workers = {name: result(out, name)["worker"] for name in names}
    assert all(w["pid"] != os.getpid() for w in workers.values())  # separate processes
    assert {w["worker_id"] for w in workers.values()} == {f"{w['host']}:{w['pid']}" for w in workers.values()}
    assert len({w["worker_id"] for w in workers.values()}) == 2, workers  # both workers took part
    assert len(table(out)[1]) == 4
    assert not list(out.glob("combos/*/claim"))


def test_task_index_runs_one_combination_and_report_only_names_the_missing(tmp_path, small, cache_dir):
    out = tmp_path / "out"
    base = args(small, out, "minilm,tfidf_svd", "logreg,knn")
    listed = sweep(*base, "--list")
    assert listed.exit_code == 0 and listed.output.splitlines() == [
        "0\tminilm\tlogreg\tnot run", "1\tminilm\tknn\tnot run", "2\ttfidf_svd\tlogreg\tnot run", "3\ttfidf_svd\tknn\tnot run"]
    res = sweep(*base, "--task_index", "2")
    assert res.exit_code == 0, res.output
    assert "tfidf_svd__logreg: done" in res.output
    assert sorted(p.parent.name for p in out.glob("combos/*/result.json")) == ["tfidf_svd__logreg"]
    assert not (out / "sweep.csv").exists()  # an array task writes no table
    again = sweep(*base, "--task_index", "2")
    assert again.exit_code == 0 and "tfidf_svd__logreg: finished earlier (valid macro_f1" in again.output
    assert len(attempts(out, "tfidf_svd__logreg")) == 1

    report = sweep(*base, "--report_only")
    assert report.exit_code == 1, report.output
    _, rows = table(out)
    assert [(r["encoder"], r["classifier"]) for r in rows] == [("tfidf_svd", "logreg")]
    assert "missing 3: minilm__logreg [0] (not run); minilm__knn [1] (not run); tfidf_svd__knn [3] (not run)" in report.output
    assert sweep(*base, "--list").output.splitlines()[2] == "2\ttfidf_svd\tlogreg\tdone"
    bad = sweep(*base, "--task_index", "4")
    assert bad.exit_code == 2 and "the sweep has 4 combinations (0..3)" in bad.output


def test_several_train_files_and_a_changed_dataset(tmp_path, small, tweets, cache_dir):
    halves = [head_csv(tweets["train"], tmp_path / "a.csv", 120), head_csv(tweets["train"], tmp_path / "b.csv", 120, skip=120)]
    out = tmp_path / "out"
    base = args(small, out, "tfidf_svd", "logreg")
    i = base.index("--train_path")
    base[i:i + 2] = ["--train_path", str(halves[0]), "--train_path", str(halves[1])]
    res = sweep(*base)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["data"]["train"] == [str(h) for h in halves]
    # another dataset in the same output directory: refused, nothing mixed
    other = sweep(*args(small, out, "tfidf_svd", "logreg"))
    assert other.exit_code == 2 and "holds a sweep of other data or another config" in other.output


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--classifiers", "logreg,forest", "unknown classifier 'forest'; known classifiers: logreg, linear_svm, knn, mlp, hgb"),
    ("--encoders", "minilm,no_such_encoder", "unknown encoder 'no_such_encoder'"),
    ("--classifiers", "logreg,,knn", "expected a comma-separated list"),
    ("--encoders", "tfidf_svd,tfidf_svd", "tfidf_svd listed more than once"),
])
def test_bad_names_are_one_line_errors(tmp_path, small, flag, value, message):
    argv = args(small, tmp_path / "out", "minilm", "logreg")
    argv[argv.index(flag) + 1] = value
    res = sweep(*argv)
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [res.output.strip()] and message in res.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- claims

@pytest.fixture
def plan(tmp_path):
    cfg = load_config("embeddings")
    return sw.Sweep(cfg=cfg, output_dir=str(tmp_path / "out"), encoders=["tfidf_svd"], classifiers=["logreg"],
                    train_paths=["x.csv"], valid_path="x.csv")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_claim(plan, **holder):
    d = plan.combo_dir(plan.combos[0])
    d.mkdir(parents=True, exist_ok=True)
    (d / "claim").write_text(json.dumps(holder))


def test_claims_are_exclusive_and_stale_ones_are_taken_over(plan, monkeypatch):
    combo = plan.combos[0]
    me = sw.worker_info(0)
    mine = sw.claim_combo(plan, combo, me, None)
    assert mine is not None and sw.claim_combo(plan, combo, sw.worker_info(1), None) is None  # held by a live pid
    sw.release(plan, combo, mine)
    assert not (plan.combo_dir(combo) / "claim").exists()

    write_claim(plan, host=sw.HOST, pid=dead_pid(), worker_id="gone")  # killed worker on this host: stale
    assert sw.claim_combo(plan, combo, me, None) is not None
    write_claim(plan, host=sw.HOST, pid=os.getppid(), pid_start=1.0, worker_id="reused")  # pid reused by another process
    assert sw.claim_combo(plan, combo, me, None) is not None
    write_claim(plan, host="elsewhere", pid=1, worker_id="remote")  # another host, no SLURM: presumed alive
    assert sw.claim_combo(plan, combo, me, None) is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_claim(plan, host="elsewhere", pid=1, worker_id="requeued", slurm_job_id="4242")  # this very job's run before its requeue
    assert sw.claim_combo(plan, combo, me, None) is not None
    # a finished combination is never claimed again
    sw.atomic_write_json(plan.combo_dir(combo) / "result.json", {"identity": "x", "n_trials": 10})
    (plan.combo_dir(combo) / "claim").unlink()
    assert sw.claim_combo(plan, combo, me, "x") is None
    assert sw.claim_combo(plan, combo, me, "other-settings") is not None


def test_a_failing_combination_is_reported_and_the_others_finish(tmp_path, small, cache_dir):
    out = tmp_path / "out"
    res = sweep(*args(small, out, "tfidf_svd", "logreg,knn"), "--set", "classifiers.logreg.max_iter=-5")
    assert res.exit_code == 1, res.output
    assert [r["classifier"] for r in table(out)[1]] == ["knn"]
    assert "missing 1: tfidf_svd__logreg [0] (failed: " in res.output and "has no complete trial" in res.output
    assert (out / "combos" / "tfidf_svd__logreg" / "error.txt").exists()
    assert not list(out.glob("combos/*/claim"))  # released: the next run retries it


def test_a_sweep_on_label_sets_ranks_by_micro_f1(tmp_path, cache_dir):
    """search.metric null on multi-label data: every combination searches and ranks by micro_f1, as a training would."""
    fx = Path(__file__).parent / "fixtures" / "multilabel"
    data = {"train": fx / "train.jsonl", "valid": fx / "valid.jsonl", "test": fx / "test.jsonl"}
    out = tmp_path / "out"
    res = sweep(*args(data, out, "tfidf_svd", "logreg", n_trials=2))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sweep.json").read_text())["metric"] == "micro_f1"
    r = result(out, "tfidf_svd__logreg")
    meta = json.loads((out / r["model_dir"] / "meta.json").read_text())
    assert r["metric"] == "micro_f1" and r["valid_metric"] == pytest.approx(meta["metrics"]["valid"]["micro_f1"])
    assert r["valid_metric"] > 0.5

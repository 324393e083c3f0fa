"""Benchmark distillation and cascades (issue 26) on tweets_sentiment and movie_review_sentences.

For every dataset (``--datasets``; a missing one is skipped with a message), on the first
``--n_train`` rows of train (0: all), ``--n_valid``/``--n_test`` of valid/test (0: all):

  teacher       ``--teacher embeddings`` (default): the embeddings family with the packaged MiniLM
                encoder + logistic regression (its default config, no search);
                ``--teacher bert``: the issue's teacher, MiniLM fine-tuned by the BERT family (its default
                config), exported with ``textclf export --quantize int8``: the teacher and the cascades
                then run ONNX int8, its fastest CPU backend, and ``teacher_torch`` scores the same model
                on PyTorch for the record;
  fasttext      fastText on the gold labels (``--ft_trials`` Optuna trials, bucket fixed to 200,000);
  distilled     ``textclf distill --student fasttext``: the same search on the gold rows plus the
                teacher's labels of the train texts (confidence-weighted copies);
  distilled+U   the same plus ``--n_unlabeled`` unlabelled texts: the train rows after the first
                ``--n_train`` (their labels are dropped), so only with ``--n_train`` < the train size;
  distilled_aug ``textclf distill --augment N`` (``--augment``, default 5): the teacher also labels N synthetic
                variants of each train text (token deletion, n-gram sampling: :mod:`textclf.core.augment`);
                ``--augment 5,20`` adds ``distilled_aug20`` (every N after the first gets its own student);
  distilled_lstm ``--lstm_student``: ``textclf distill --student lstm --augment N --repeats 1`` (the BiLSTM
                family, ``--lstm_set`` overrides; default batch 128, at most 8 epochs): a student that reads
                word order, about 20x the teacher's speed;
  cascade       ``textclf cascade --max_f1_loss 0.005`` of the gold fastText and of the distilled fastText student
                with the best valid macro-F1 (and of ``distilled_lstm``), with the teacher, tau chosen on valid.

``--seeds 14,15,16`` trains fastText on gold, ``distilled`` and ``distilled_aug`` again with each further
seed (the search, the refit and the synthetic variants; the teacher stays) and reports each seed's test
macro-F1 and the means: one 10-trial search moves fastText's test macro-F1 by 0.01-0.015, as much as the
target gain.

Every model is scored on the test slice with the leaderboard's ``measure`` in a fresh process
(``measure_isolated``: no thread pool of a model scored before it is left in the process), ``predict`` in
batches of 256, one warm-up batch, repeated until 0.5 s are timed; docs/s is the median of
``TIMING_RUNS`` such processes. It reports macro-F1, docs/s and the cascades' share of test texts
that reached the teacher, and beside it the least share any tau could send on test at teacher - 0.005 (tau
chosen on test itself, :func:`test_oracle`) with the speed-up that share gives: the ceiling of a cascade of
that student. Ratios (docs/s against the
teacher's) come from the same run. Targets: cascade macro-F1 >= teacher - 0.005 at >= 5x the
teacher's docs/s; distilled fastText >= fastText on gold + 0.02. Writes
``benchmarks/results/distill.json`` (after every dataset) and prints the markdown table::

    python benchmarks/bench_distill.py                                  # reduced size (see --n_train)
    python benchmarks/bench_distill.py --n_train 0 --n_unlabeled 0      # full training sets
    python benchmarks/bench_distill.py --keep /tmp/bd --reuse           # the members an earlier run trained there
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import DATA_ROOT, dataset_paths, finish_doc, make_echo, results_doc, results_path

DATASETS = ("tweets_sentiment", "movie_review_sentences")
PACKAGES = ("fasttext-community", "sentence-transformers", "torch", "scikit-learn", "optuna")
#: fresh processes each model's docs/s is measured in (the median counts)
TIMING_RUNS = 3
BUCKET_SPACE = '{"type": "categorical", "choices": [200000]}'
#: the distilled BiLSTM's settings (``--lstm_set`` replaces them): bigger batches and fewer epochs than the family's
#: defaults, because the augmented training set is 5-10x the gold one
LSTM_SET = ("train.batch_size=128", "train.epochs=8", "device=cpu")


def slice_csv(src: str, dst: Path, n: int, skip: int = 0) -> Path:
    """Rows ``skip .. skip+n`` of CSV ``src`` (all after ``skip`` when ``n`` is 0) with the header, to ``dst``."""
    with open(src, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    body = rows[1 + skip:] if n == 0 else rows[1 + skip: 1 + skip + n]
    with open(dst, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *body])
    return dst


def ft_overrides(trials: int) -> list[str]:
    """fastText's search settings of every fastText model here (gold and distilled: the same budget)."""
    return [f"search.n_trials={trials}", f"search.space.bucket={BUCKET_SPACE}", "model.bucket=200000"]


def train_teacher(kind: str, spec) -> None:
    """Train the teacher (``kind``: embeddings or bert, see the module docstring); a BERT teacher is exported to ONNX int8."""
    from textclf.services import runs
    from textclf.services.export import export_onnx

    if kind == "embeddings":
        runs.train(spec("embeddings", "teacher", ["encoder.name=minilm", "classifier=logreg", "device=cpu",
                                                  "search.n_trials=0"]))
        return
    run = spec("bert", "teacher", ["device=cpu"])
    runs.train(run)
    export_onnx(run.output_dir, quantize="int8")


def best_student(work: Path, names: list[str]) -> str:
    """The distilled student with the best valid macro-F1 (its meta.json): the one the second cascade uses."""
    return max(names, key=lambda n: json.loads((work / n / "meta.json").read_text())["metrics"]["valid"]["macro_f1"])


def score(model_dir: Path, test: Path, backend: str | None = None, timing_runs: int = TIMING_RUNS) -> dict:
    """Test macro-F1 and docs/s of ``model_dir`` (the leaderboard's measure); a cascade's test share to the teacher."""
    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.core.metrics import classification_metrics
    from textclf.services.compare.leaderboard import measure_isolated

    runs = [measure_isolated(str(model_dir), str(test), batch_size=256, backend=backend) for _ in range(timing_runs)]
    r = {**runs[0], "docs_per_s": statistics.median(x["docs_per_s"] for x in runs),
         "timed_passes": sum(x["timed_passes"] for x in runs)}
    ds = read_labelled(test, min_classes=0)
    m = classification_metrics(ds.labels, r["predictions"], r["labels"])
    out = {"macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4), "docs_per_s": round(r["docs_per_s"], 1),
           "passes": r["timed_passes"]}
    meta = json.loads((model_dir / "meta.json").read_text())
    valid = (meta.get("metrics") or {}).get("valid") or {}
    if "macro_f1" in valid:
        out["valid_macro_f1"] = round(valid["macro_f1"], 4)
    if meta["kind"] == "cascade":
        p = load_predictor(model_dir)
        _, mask = p.route(ds.texts)
        out.update(tau=round(meta["tau"], 4), share_to_teacher_test=round(float(mask.mean()), 4),
                   share_to_teacher_valid=round(meta["share_to_teacher"], 4), oracle=test_oracle(p, ds, test))
    if meta.get("distill"):
        out["distill"] = {k: meta["distill"]["data"][k] for k in ("gold_rows", "teacher_texts", "teacher_rows")}
    return out


def test_oracle(cascade, ds, test: Path, max_f1_loss: float = 0.005) -> dict:
    """tau chosen on the test split itself: the least share of test texts that must reach the teacher for the
    cascade's test macro-F1 to stay within ``max_f1_loss`` of the teacher's. No tau chosen on valid can send
    fewer texts to the teacher at that quality on this test split, so it bounds what the student can give."""
    import numpy as np

    from textclf.services.compare.cascade import choose_tau, tau_curve
    from textclf.services.compare.ensemble import align_columns
    from textclf.services.compare.thresholds import label_indices

    labels = list(cascade.labels)
    y = label_indices(ds.labels, labels, str(test), ds.line_numbers)
    proba = [align_columns(np.asarray(m.predict_proba(ds.texts), dtype=np.float64), m.labels, labels)
             for m in (cascade.student, cascade.teacher)]
    curve = tau_curve(y, *proba)
    point = choose_tau(curve, curve[-1]["macro_f1"], max_f1_loss)
    return {"share_to_teacher": round(point["share_to_teacher"], 4), "macro_f1": round(point["macro_f1"], 4),
            "teacher_macro_f1": round(curve[-1]["macro_f1"], 4), "student_macro_f1": round(curve[0]["macro_f1"], 4)}


def oracle_speedup(oracle: dict, student: dict, teacher: dict) -> float:
    """The cascade's speed-up over the teacher at the oracle's share, from the members' measured docs/s
    (:func:`textclf.services.compare.cascade.estimated_docs_per_s`): the most a cascade of this student can give."""
    from textclf.services.compare.cascade import estimated_docs_per_s

    rate = estimated_docs_per_s(oracle["share_to_teacher"], student["docs_per_s"], teacher["docs_per_s"])
    return round(rate / teacher["docs_per_s"], 2)


def run_dataset(name: str, paths: dict, work: Path, opts: dict, echo) -> dict:
    """Train the teacher and the students, build the cascades, score everything on test."""
    from textclf.services import runs
    from textclf.services.compare.cascade import build_cascade
    from textclf.services.distill import DistillSpec, distill
    from textclf.services.runs import RunSpec

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    train = slice_csv(paths["train"], d / "train.csv", opts["n_train"])
    valid = slice_csv(paths["valid"], d / "valid.csv", opts["n_valid"])
    test = slice_csv(paths["test"], d / "test.csv", opts["n_test"])
    unlabeled = None
    if opts["n_train"] and opts["n_unlabeled"]:
        unl = slice_csv(paths["train"], d / "unlabeled.csv", opts["n_unlabeled"], skip=opts["n_train"])
        texts = [row["text"] for row in csv.DictReader(open(unl, encoding="utf-8", newline=""))]
        unlabeled = d / "unlabeled.txt"
        unlabeled.write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
    models, timings = {}, {}

    def timed(key: str, fn) -> None:
        if opts["reuse"] and not key.startswith("cascade_") and (d / key / "meta.json").is_file():
            echo(f"{name}: {key} reused from {d / key}")
            models[key] = d / key
            return
        start = time.perf_counter()
        echo(f"{name}: {key} ...")
        fn()
        timings[key] = round(time.perf_counter() - start, 1)
        models[key] = d / key

    def spec(family: str, out: str, overrides: list[str]) -> RunSpec:
        return RunSpec(family=family, train_path=str(train), valid_path=str(valid), test_path=str(test),
                       output_dir=d / out, overrides=tuple(overrides), track=False)

    def fasttext_model(kind: str, key: str, overrides: list[str], augment: int = 0) -> None:
        """fastText on gold (``kind`` fasttext) or a fastText student of the teacher (distilled)."""
        if kind == "fasttext":
            runs.train(spec("fasttext", key, overrides))
        else:
            distill(DistillSpec(spec("fasttext", key, overrides), str(d / "teacher"), augment=augment))

    timed("teacher", lambda: train_teacher(opts["teacher"], spec))
    ft = ft_overrides(opts["ft_trials"])
    timed("fasttext", lambda: fasttext_model("fasttext", "fasttext", ft))
    timed("distilled", lambda: fasttext_model("distilled", "distilled", ft))
    if unlabeled:
        timed("distilled_u", lambda: distill(DistillSpec(spec("fasttext", "distilled_u", ft), str(d / "teacher"),
                                                         str(unlabeled))))
    for i, n_aug in enumerate(opts["augment"]):
        key = "distilled_aug" if i == 0 else f"distilled_aug{n_aug}"
        timed(key, lambda key=key, n_aug=n_aug: fasttext_model("distilled", key, ft, n_aug))
    if opts["lstm"]:
        timed("distilled_lstm", lambda: distill(DistillSpec(spec("lstm", "distilled_lstm", list(opts["lstm_set"])),
                                                            str(d / "teacher"), repeats=1,
                                                            augment=opts["augment"][0] if opts["augment"] else 0)))
    fasttext_students = [k for k in models if k.startswith("distilled") and k != "distilled_lstm"]
    for student in ("fasttext", best_student(d, fasttext_students), "distilled_lstm"):
        if student in models:
            timed(f"cascade_{student}", lambda s=student: build_cascade(d / s, d / "teacher", valid, d / f"cascade_{s}",
                                                                        test_path=test))
    rows = {}
    for key, model in models.items():
        echo(f"{name}: scoring {key} on test ...")
        rows[key] = score(model, test)
        if key == "teacher" and opts["teacher"] == "bert":
            rows["teacher_torch"] = score(model, test, backend="torch")
    t = rows["teacher"]
    for key, r in rows.items():
        r["speedup_vs_teacher"] = round(r["docs_per_s"] / t["docs_per_s"], 1)
        r["f1_vs_teacher"] = round(r["macro_f1"] - t["macro_f1"], 4)
        if "oracle" in r:
            r["oracle"]["speedup_bound"] = oracle_speedup(r["oracle"], rows[key.removeprefix("cascade_")], t)
    checks = {}
    for key, r in rows.items():
        if key.startswith("cascade_"):
            checks[key] = {"f1_ok": r["macro_f1"] >= t["macro_f1"] - 0.005, "speed_ok": r["speedup_vs_teacher"] >= 5}
        if key.startswith("distilled"):
            checks[key] = {"gain_vs_fasttext": round(r["macro_f1"] - rows["fasttext"]["macro_f1"], 4),
                           "ok": r["macro_f1"] >= rows["fasttext"]["macro_f1"] + 0.02}
    sizes = {s: sum(1 for _ in open(p, encoding="utf-8")) - 1 for s, p in (("train", train), ("valid", valid), ("test", test))}
    out = {"sizes": {**sizes, "unlabeled": opts["n_unlabeled"] if unlabeled else 0}, "models": rows, "checks": checks,
           "seconds": timings}
    if opts["seeds"]:
        out["seeds"] = seed_runs(rows, opts, ft, timed, fasttext_model, d, test, echo, name)
    return out


def seed_runs(rows: dict, opts: dict, ft: list[str], timed, fasttext_model, d: Path, test: Path, echo, name: str) -> dict:
    """``--seeds``: fastText on gold, ``distilled`` and the first ``distilled_aug`` again with each further seed (the
    search, the refit and the synthetic variants), the teacher fixed; per model the test/valid macro-F1 of every seed
    (the first is the run above, at the config's seed) and their means, and the students' mean gain over fastText."""
    names = ["fasttext", "distilled"] + (["distilled_aug"] if opts["augment"] else [])
    first = str(json.loads((d / "fasttext" / "meta.json").read_text())["config"]["seed"])
    per = {n: {first: {"test": rows[n]["macro_f1"], "valid": rows[n].get("valid_macro_f1")}} for n in names}
    for seed in opts["seeds"]:
        over = [*ft, f"seed={seed}"]
        for n in names:
            key = f"{n}_s{seed}"
            kind, augment = ("fasttext", 0) if n == "fasttext" else ("distilled", opts["augment"][0] if n == "distilled_aug" else 0)
            timed(key, lambda key=key, kind=kind, augment=augment, over=over: fasttext_model(kind, key, over, augment))
            echo(f"{name}: scoring {key} on test ...")
            r = score(d / key, test, timing_runs=1)
            per[n][str(seed)] = {"test": r["macro_f1"], "valid": r.get("valid_macro_f1")}
    out = {}
    for n, by_seed in per.items():
        tests = [v["test"] for v in by_seed.values()]
        valids = [v["valid"] for v in by_seed.values() if v["valid"] is not None]
        out[n] = {"seeds": by_seed, "test_mean": round(statistics.mean(tests), 4),
                  "valid_mean": round(statistics.mean(valids), 4) if valids else None}
    for n in names[1:]:
        gain = round(out[n]["test_mean"] - out["fasttext"]["test_mean"], 4)
        out[n].update(gain_vs_fasttext=gain, ok=gain >= 0.02)
    return out


def seeds_table(results: dict) -> str:
    """``--seeds``: the markdown table of every dataset's per-seed test macro-F1 and means ("" when none ran)."""
    lines = []
    for name, res in results.items():
        for model, r in (res.get("seeds") or {}).items():
            if not lines:
                seeds = list(r["seeds"])
                lines = [f"| dataset | model | {' | '.join(f'seed {x}' for x in seeds)} | test mean | valid mean | "
                         "gain over fastText |", "|---|---|" + "---:|" * (len(seeds) + 3)]
            gain = f"{r['gain_vs_fasttext']:+.4f}" if "gain_vs_fasttext" in r else "-"
            valid = f"{r['valid_mean']:.4f}" if r["valid_mean"] is not None else "-"
            tests = " | ".join(f"{v['test']:.4f}" for v in r["seeds"].values())
            lines.append(f"| {name} | {model} | {tests} | {r['test_mean']:.4f} | {valid} | {gain} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """The markdown table of every dataset's models (then :func:`seeds_table`'s, when ``--seeds`` ran)."""
    lines = ["| dataset (train/valid/test, unlabelled) | model | test macro-F1 | vs teacher | valid macro-F1 | docs/s | x teacher "
             "| to teacher (test; tau chosen on test, its speed-up) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        s = res["sizes"]
        where = f"{name} ({s['train']}/{s['valid']}/{s['test']}, {s['unlabeled']})"
        for key, r in res["models"].items():
            share = f"{r['share_to_teacher_test']:.1%}" if "share_to_teacher_test" in r else "-"
            if "oracle" in r:
                share += f" ({r['oracle']['share_to_teacher']:.1%}, {r['oracle']['speedup_bound']:.1f}x)"
            valid = f"{r['valid_macro_f1']:.4f}" if "valid_macro_f1" in r else "-"
            lines.append(f"| {where} | {key} | {r['macro_f1']:.4f} | {r['f1_vs_teacher']:+.4f} | {valid} | {r['docs_per_s']:,.0f} | "
                         f"{r['speedup_vs_teacher']:.1f} | {share} |")
    extra = seeds_table(results)
    return "\n".join(lines) + (f"\n\n{extra}" if extra else "")


@click.command()
@click.option("--datasets", default=",".join(DATASETS), show_default=True)
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--n_train", type=int, default=800, show_default=True, help="First rows of train (0: all).")
@click.option("--n_valid", type=int, default=300, show_default=True, help="First rows of valid (0: all).")
@click.option("--n_test", type=int, default=300, show_default=True, help="First rows of test (0: all).")
@click.option("--n_unlabeled", type=int, default=800, show_default=True,
              help="Train rows after --n_train used as unlabelled text (0: none).")
@click.option("--ft_trials", type=int, default=10, show_default=True, help="fastText Optuna trials (gold and distilled).")
@click.option("--output", default=None, help="Results JSON (default benchmarks/results/distill.json).")
@click.option("--keep", default=None, help="Keep the models under this folder (default: a temporary one).")
@click.option("--reuse", is_flag=True, help="With --keep: reuse the teacher and students already trained there "
              "(cascades are always built again).")
@click.option("--teacher", type=click.Choice(["embeddings", "bert"]), default="embeddings", show_default=True,
              help="MiniLM embeddings + logistic regression, or MiniLM fine-tuned by the BERT family (ONNX int8).")
@click.option("--augment", default="5", show_default=True,
              help="distilled_aug: the student with this many synthetic variants of each train text (0: no such student); "
                   "a comma list (5,20) adds a student per further count (distilled_aug20).")
@click.option("--seeds", default="", help="Further seeds (14,15,16): fastText on gold, distilled and distilled_aug again "
              "with each; the results JSON gets their per-seed scores and means (block 'seeds').")
@click.option("--lstm_student", is_flag=True, help="Also distil a BiLSTM student (distilled_lstm) and cascade it.")
@click.option("--lstm_set", multiple=True, help=f"--set overrides of distilled_lstm (default: {' '.join(LSTM_SET)}).")
@click.option("--quick", is_flag=True, help="Smoke check: 100/60/60 rows, 50 unlabelled, 2 trials (-> distill_quick.json).")
def main(datasets, data_root, n_train, n_valid, n_test, n_unlabeled, ft_trials, output, keep, reuse, teacher, augment,
         seeds, lstm_student, lstm_set, quick):
    """Distilled fastText students and cascades against a MiniLM teacher (see the module docstring)."""
    os.environ.setdefault("TEXTCLF_TRACK", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    echo = make_echo(show_elapsed=True)
    if quick:
        n_train, n_valid, n_test, n_unlabeled, ft_trials = 100, 60, 60, 50, 2
    opts = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "n_unlabeled": n_unlabeled, "ft_trials": ft_trials,
            "reuse": reuse and bool(keep), "teacher": teacher,
            "augment": [int(a) for a in str(augment).split(",") if a.strip() and int(a)],
            "seeds": [int(x) for x in seeds.split(",") if x.strip()],
            "lstm": lstm_student, "lstm_set": list(lstm_set or LSTM_SET)}
    out = results_path(output, "distill", quick)
    doc = results_doc("distill", {**opts, "datasets": datasets}, PACKAGES, results={})
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-distill-"))
    os.environ.setdefault("TEXTCLF_CACHE", str(work / "cache"))
    for name in [n for n in datasets.split(",") if n]:
        paths = dataset_paths(data_root, name)
        if paths is None:
            echo(f"{name}: not under {data_root}, skipped")
            continue
        doc["results"][name] = run_dataset(name, paths, work, opts, echo)
        from textclf.core.atomic import atomic_write_json

        atomic_write_json(out, doc)
        echo(f"{name}: done\n{table({name: doc['results'][name]})}")
    finish_doc(out, doc, table(doc["results"]))
    print(table(doc["results"]))
    print(json.dumps({k: v["checks"] for k, v in doc["results"].items()}, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()

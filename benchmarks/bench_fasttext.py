"""Benchmark the fastText family: library defaults vs fastText autotune vs textclf's Optuna search.

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is
skipped with a message) it runs, each in a fresh process (forked from a fork server started
before any data loads, so its peak RSS is its own; see ``bench_common``):

  (a) ``fasttext.train_supervised`` with the library defaults (``thread`` = usable cores),
  (b) fastText's built-in autotune on the valid split for ``--budget_s`` seconds,
  (c) textclf's Optuna search (``search.timeout = --budget_s``) plus the refit,

and scores each on the test split with ``textclf.core.metrics.classification_metrics``. On the (c)
model it then times ``textclf.core.predictor.predict_file`` (what ``textclf predict`` runs) against raw
``model.predict`` over the same file. Prints a markdown table and writes the results JSON
atomically (``benchmarks/results/fasttext.json``)::

    python benchmarks/bench_fasttext.py                      # all four datasets, 60 s budgets
    python benchmarks/bench_fasttext.py --quick --datasets tweets_sentiment
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import (
    DATA_ROOT,
    REPO,
    dataset_paths,
    in_child,
    machine_info,
    make_echo,
    peak_rss_mb,
    quiet_job,
    start_fork_server,
    usable_cores,
    utc_now,
)
from bench_common import RSS_NOTE as COMMON_RSS_NOTE

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
METHODS = (("defaults", "(a) fastText defaults"), ("autotune", "(b) fastText autotune"), ("optuna", "(c) textclf Optuna"))
QUICK_BUDGET_S = 4.0
RSS_NOTE = COMMON_RSS_NOTE + " (here: each phase is one job; RUSAGE_CHILDREN covers the forked trial processes of textclf's timed search)"
AUTOTUNE_NOTE = ("fastText autotune cannot optimise macro-F1: it ran with autotuneMetric='f1', fastText's overall "
                 "(micro) F1 over all labels, which for single-label data is close to accuracy; textclf's search "
                 "maximises valid macro-F1")


# --------------------------------------------------------------------------- helpers run in child processes

_quiet_child = quiet_job


def _score(model, labels: list[str], test_path: str) -> dict:
    """Test metrics of a raw fastText model whose labels are ``__label__<index>`` into ``labels``."""
    from textclf.core.data import read_labelled
    from textclf.core.metrics import classification_metrics
    from textclf.families.fasttext.model import one_line

    test = read_labelled(test_path, min_classes=0)
    ft_labels, _ = model.predict([one_line(t) for t in test.texts], k=1)
    preds = [labels[int(row[0][len("__label__"):])] if row else labels[0] for row in ft_labels]
    m = classification_metrics(test.labels, preds, labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"], "n": m["n"]}


def _model_args(model) -> dict:
    a = model.f.getArgs()
    out = {k: getattr(a, k) for k in ("lr", "epoch", "dim", "wordNgrams", "minCount", "minn", "maxn", "bucket", "ws", "neg", "thread")}
    out["loss"] = str(a.loss).split(".")[-1]
    return out


def phase_fasttext(train_file: str, valid_file: str | None, test_path: str, labels: list[str], budget_s: float | None) -> dict:
    """(a) defaults when ``budget_s`` is None, else (b) autotune on ``valid_file`` for ``budget_s`` seconds."""
    import fasttext

    _quiet_child()
    kw: dict = {"input": train_file, "thread": usable_cores(), "verbose": 0}
    if budget_s is not None:
        kw.update(autotuneValidationFile=valid_file, autotuneDuration=max(1, int(round(budget_s))), autotuneMetric="f1")
    start = time.perf_counter()
    model = fasttext.train_supervised(**kw)
    wall = time.perf_counter() - start
    return {"train_wall_s": round(wall, 2), "test": _score(model, labels, test_path), "params": _model_args(model),
            "peak_rss_mb": peak_rss_mb()}


def phase_optuna(paths: dict, budget_s: float, output_dir: str, n_trials: int) -> dict:
    """(c) textclf's search with ``search.timeout = budget_s`` plus the refit, timed end to end."""
    import csv

    from textclf.core.config import load_config
    from textclf.core.loading import load_predictor
    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family
    from textclf.core.training import load_splits

    _quiet_child()
    cfg = load_config("fasttext", overrides=[f"search.timeout={budget_s}", f"search.n_trials={n_trials}"])
    splits = load_splits(paths["train"], paths["valid"], paths["test"], cfg["data"])
    start = time.perf_counter()
    meta = read_meta(get_family("fasttext").train_fn()(cfg, splits, output_dir))
    wall = time.perf_counter() - start
    with open(Path(output_dir) / "trials.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    search_s = sum(float(r["duration_s"]) for r in rows if r["duration_s"])
    predictor = load_predictor(output_dir)
    return {"train_wall_s": round(wall, 2), "search_trials_s": round(search_s, 2),
            "test": _score(predictor.model, splits.labels, paths["test"]), "params": meta["params"],
            "search": {k: meta["search"][k] for k in ("n_trials", "best_trial", "best_value", "metric")},
            "trial_states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
            "peak_rss_mb": peak_rss_mb()}


def phase_predict_textclf(model_dir: str, input_file: str, output_file: str) -> dict:
    """Time ``predict_file`` (what ``textclf predict`` runs: read, predict, write atomically)."""
    from textclf.core.loading import load_predictor
    from textclf.core.predictor import predict_file

    predictor = load_predictor(model_dir)
    start, cpu = time.perf_counter(), time.process_time()
    n = predict_file(predictor, input_file, output_file, "txt", progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"docs": n, "wall_s": wall, "docs_per_s": n / wall, "cpu_docs_per_s": n / cpu, "peak_rss_mb": peak_rss_mb()}


def phase_predict_raw(model_file: str, input_file: str, output_file: str) -> dict:
    """Time raw fastText: read the lines, one ``model.predict(lines, k=1)`` call, write the labels."""
    import fasttext

    model = fasttext.load_model(model_file)
    start, cpu = time.perf_counter(), time.process_time()
    with open(input_file, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    ft_labels, _ = model.predict(lines, k=1)
    with open(output_file, "w", encoding="utf-8") as out:
        out.write("\n".join(row[0] for row in ft_labels))
        out.write("\n")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"docs": len(lines), "wall_s": wall, "docs_per_s": len(lines) / wall, "cpu_docs_per_s": len(lines) / cpu,
            "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------- parent side

def write_prediction_input(texts: list[str], min_docs: int, path: Path, min_mb: float = 0.0) -> int:
    """The test texts (one a line, whitespace folded) repeated to at least ``min_docs`` lines and ``min_mb`` MiB."""
    from textclf.families.fasttext.model import one_line

    lines = [one_line(t) for t in texts]
    size = sum(len(line.encode("utf-8")) + 1 for line in lines)
    reps = max(1, math.ceil(min_docs / len(lines)), math.ceil(min_mb * 2**20 / max(1, size)))
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(reps):
            fh.write("\n".join(lines))
            fh.write("\n")
    return reps * len(lines)


def throughput(model_dir: Path, labels: list[str], input_file: Path, work: Path, repeats: int, echo) -> dict:
    """Best of ``repeats`` alternating runs of textclf and raw prediction, plus an output agreement check."""
    out_t, out_r = work / "pred_textclf.txt", work / "pred_raw.txt"
    runs: dict[str, list[dict]] = {"textclf": [], "raw": []}
    for i in range(repeats):
        runs["textclf"].append(in_child(phase_predict_textclf, str(model_dir), str(input_file), str(out_t)))
        runs["raw"].append(in_child(phase_predict_raw, str(model_dir / "model.bin"), str(input_file), str(out_r)))
        echo(f"    predict run {i + 1}/{repeats}: textclf {runs['textclf'][-1]['docs_per_s']:,.0f} docs/s, "
             f"raw {runs['raw'][-1]['docs_per_s']:,.0f} docs/s")
    ours = out_t.read_text(encoding="utf-8").splitlines()
    raw = [labels[int(x[len("__label__"):])] for x in out_r.read_text(encoding="utf-8").splitlines()]
    best = {k: max(v, key=lambda r: r["docs_per_s"]) for k, v in runs.items()}
    return {
        "docs": best["textclf"]["docs"],
        "repeats": repeats,
        "textclf_docs_per_s": round(best["textclf"]["docs_per_s"], 1),
        "raw_docs_per_s": round(best["raw"]["docs_per_s"], 1),
        "ratio": round(best["textclf"]["docs_per_s"] / best["raw"]["docs_per_s"], 3),
        "cpu_ratio": round(max(r["cpu_docs_per_s"] for r in runs["textclf"]) / max(r["cpu_docs_per_s"] for r in runs["raw"]), 3),
        "textclf_runs_docs_per_s": [round(r["docs_per_s"], 1) for r in runs["textclf"]],
        "raw_runs_docs_per_s": [round(r["docs_per_s"], 1) for r in runs["raw"]],
        "textclf_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["textclf"]),
        "raw_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["raw"]),
        "same_predictions": ours == raw,
    }


def bench_dataset(name: str, data_dir: Path, budget_s: float, n_trials: int, min_docs: int, min_mb: float, repeats: int,
                  echo) -> dict:
    """All phases on one dataset."""
    from textclf.core.data import read_labelled
    from textclf.families.fasttext.model import write_training_file

    paths = {s: str(data_dir / f"{s}.csv") for s in ("train", "valid", "test")}
    train = read_labelled(paths["train"])
    valid = read_labelled(paths["valid"], min_classes=0)
    test = read_labelled(paths["test"], min_classes=0)
    labels = train.label_set
    result: dict = {"status": "ok", "paths": paths, "labels": labels,
                    "rows": {"train": len(train), "valid": len(valid), "test": len(test)}, "methods": {}}
    with tempfile.TemporaryDirectory(prefix=f"bench-ft-{name}-") as tmp:
        work = Path(tmp)
        train_file, valid_file = work / "train.txt", work / "valid.txt"
        write_training_file(train, labels, train_file)
        write_training_file(valid, labels, valid_file)
        load = {}
        for key, title in METHODS:
            load[key] = os.getloadavg()[0]
            echo(f"  {title} ...")
            if key == "defaults":
                r = in_child(phase_fasttext, str(train_file), None, paths["test"], labels, None)
            elif key == "autotune":
                r = in_child(phase_fasttext, str(train_file), str(valid_file), paths["test"], labels, budget_s)
            else:
                r = in_child(phase_optuna, paths, budget_s, str(work / "model"), n_trials)
            r["loadavg_1m_before"] = round(load[key], 2)
            result["methods"][key] = r
            extra = f", {r['search']['n_trials']} trials" if key == "optuna" else ""
            echo(f"    test acc {r['test']['accuracy']:.4f}  macro-F1 {r['test']['macro_f1']:.4f}  "
                 f"train {r['train_wall_s']:.1f} s  peak RSS {r['peak_rss_mb']:.0f} MiB{extra}")
        input_file = work / "predict_input.txt"
        n = write_prediction_input(test.texts, min_docs, input_file, min_mb)
        echo(f"  throughput on the (c) model, {n:,} docs, {input_file.stat().st_size / 2**20:.0f} MiB ...")
        result["throughput"] = throughput(work / "model", labels, input_file, work, repeats, echo)
    m = result["methods"]
    result["targets"] = {
        "optuna_macro_f1_ge_autotune": m["optuna"]["test"]["macro_f1"] >= m["autotune"]["test"]["macro_f1"],
        "throughput_ratio_ge_0.9": result["throughput"]["ratio"] >= 0.9,
    }
    return result


def markdown_tables(results: dict) -> str:
    """The metrics table and the throughput table, as markdown."""
    rows = ["| dataset | method | test accuracy | test macro-F1 | train wall s | peak RSS MiB |", "|---|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        if r["status"] != "ok":
            rows.append(f"| {name} | skipped: {r['reason']} | | | | |")
            continue
        for key, title in METHODS:
            m = r["methods"][key]
            label = title + (f" ({m['search']['n_trials']} trials)" if key == "optuna" else "")
            rows.append(f"| {name} | {label} | {m['test']['accuracy']:.4f} | {m['test']['macro_f1']:.4f} | "
                        f"{m['train_wall_s']:.1f} | {m['peak_rss_mb']:.0f} |")
    rows += ["", "| dataset | docs | `textclf predict` docs/s | raw fastText docs/s | ratio | CPU-time ratio | textclf peak RSS MiB "
             "| raw peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if r["status"] != "ok":
            continue
        t = r["throughput"]
        rows.append(f"| {name} | {t['docs']:,} | {t['textclf_docs_per_s']:,.0f} | {t['raw_docs_per_s']:,.0f} | {t['ratio']:.3f} | "
                    f"{t['cpu_ratio']:.3f} | {t['textclf_peak_rss_mb']:.0f} | {t['raw_peak_rss_mb']:.0f} |")
    return "\n".join(rows)


def summary(results: dict) -> dict:
    """Which targets hold on which dataset."""
    ok = {n: r for n, r in results.items() if r["status"] == "ok"}
    return {
        "optuna_ge_autotune": {n: r["targets"]["optuna_macro_f1_ge_autotune"] for n, r in ok.items()},
        "throughput_ratio": {n: r["throughput"]["ratio"] for n, r in ok.items()},
        "all_targets_met": bool(ok) and all(all(r["targets"].values()) for r in ok.values()),
    }


@click.command()
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma-separated dataset folder names.")
@click.option("--budget_s", type=float, default=None,
              help="Wall-clock budget of (b) autotune and (c) Optuna each [default: 60, --quick: 4].")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(DATA_ROOT), show_default=True,
              help="Folder holding <dataset>/{train,valid,test}.csv.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON [default: benchmarks/results/fasttext.json, --quick: benchmarks/results/fasttext_quick.json].")
@click.option("--quick", is_flag=True, help="Smoke check: tiny budget, 5,000 prediction docs, 2 prediction repeats.")
@click.option("--predict_docs", type=int, default=None, help="Minimum docs in the throughput input [default: 50000, --quick: 5000].")
@click.option("--predict_mb", type=float, default=None,
              help="Minimum size of the throughput input, so short texts give runs of seconds [default: 20, --quick: 0].")
@click.option("--repeats", type=int, default=None, help="Throughput repeats, best taken [default: 3, --quick: 2].")
@click.option("--n_trials", type=int, default=100000, show_default=True, help="Trial cap of (c); large so the budget decides.")
def main(datasets, budget_s, data_root, output, quick, predict_docs, predict_mb, repeats, n_trials):
    """Benchmark fastText defaults, fastText autotune and textclf's Optuna search; write a table and a JSON."""
    start_fork_server()  # before anything large is loaded: see bench_common
    budget_s = budget_s if budget_s is not None else (QUICK_BUDGET_S if quick else 60.0)
    predict_docs = predict_docs if predict_docs is not None else (5000 if quick else 50000)
    predict_mb = predict_mb if predict_mb is not None else (0.0 if quick else 20.0)
    repeats = repeats if repeats is not None else (2 if quick else 3)
    output = Path(output or REPO / "benchmarks" / "results" / ("fasttext_quick.json" if quick else "fasttext.json"))
    names = [d.strip() for d in datasets.split(",") if d.strip()]

    echo = make_echo()
    from textclf.core.atomic import atomic_write_json

    doc = {
        "benchmark": "fasttext",
        "started": utc_now(),
        "command": " ".join(["python", "benchmarks/bench_fasttext.py", *sys.argv[1:]]),
        "settings": {"budget_s": budget_s, "quick": quick, "datasets": names, "data_root": str(data_root),
                     "predict_docs_min": predict_docs, "predict_mb_min": predict_mb, "predict_repeats": repeats,
                     "optuna_n_trials_cap": n_trials},
        "machine": machine_info(("textclf", "fasttext-community", "optuna", "numpy", "click")),
        "notes": {
            "methods": {"defaults": "fasttext.train_supervised with library defaults, thread = usable cores",
                        "autotune": f"train_supervised(autotuneValidationFile=valid, autotuneDuration=budget_s, thread = usable cores); "
                                    f"{AUTOTUNE_NOTE}",
                        "optuna": "the fastText family (the core search over textclf.families.fasttext.model.fit) with "
                                  "families/fasttext/config.json, search.timeout = budget_s, "
                                  "search.n_trials = cap; train_wall_s includes the refit, evaluation and saving the model directory"},
            "metrics": "test split, textclf.core.metrics.classification_metrics; macro_f1 is the target metric",
            "peak_rss": RSS_NOTE,
            "throughput": ("on the (c) model: textclf = textclf.core.predictor.predict_file(predictor, input, output, 'txt') "
                           "(read + predict + atomic write, model load excluded); raw = read lines, model.predict(lines, k=1), "
                           "write labels; input = test texts repeated to >= predict_docs_min lines and >= predict_mb_min MiB; "
                           "best of repeats; "
                           "ratio = textclf / raw docs/s (wall clock, the target); cpu_ratio = the same from the process CPU time "
                           "of the timed part, less sensitive to other jobs on the machine"),
            "load": "the machine may be shared with other jobs; loadavg_1m_before records the 1-minute load before each phase",
        },
        "datasets": {},
    }
    echo(f"fastText benchmark: {', '.join(names)}; budget {budget_s:g} s; {doc['machine']['cores_usable']} cores")
    for name in names:
        d = Path(data_root) / name
        if dataset_paths(data_root, name) is None:
            echo(f"{name}: skipped, {d}/{{train,valid,test}}.csv not found")
            doc["datasets"][name] = {"status": "skipped", "reason": f"{d} not found"}
            continue
        echo(f"{name}:")
        doc["datasets"][name] = bench_dataset(name, d, budget_s, n_trials, predict_docs, predict_mb, repeats, echo)
        doc["summary"] = summary(doc["datasets"])
        atomic_write_json(output, doc)
    doc["finished"] = utc_now()
    doc["summary"] = summary(doc["datasets"])
    doc["table_markdown"] = markdown_tables(doc["datasets"])
    atomic_write_json(output, doc)
    click.echo(doc["table_markdown"])
    click.echo(f"\ntargets: (c) >= (b) macro-F1: {doc['summary']['optuna_ge_autotune']}; "
               f"throughput ratio (>= 0.9): {doc['summary']['throughput_ratio']}")
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

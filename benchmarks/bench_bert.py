"""Benchmark the BERT family: one vs two stages, cross-entropy vs focal loss, side by side.

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is
skipped with a message) it fine-tunes the encoder (``--model_name``, default the shipped
all-MiniLM-L6-v2) with ``config/bert.json`` in four variants, each in a fresh process (forked from a
fork server started before any data loads, so its peak RSS is its own; see ``bench_common``):

  one-stage + cross-entropy (focal gamma=0), one-stage + focal (gamma=2),
  two-stage + cross-entropy,                 two-stage + focal,

and records test accuracy, macro-F1/F0.5 (``textclf.metrics``), training time, prediction
throughput of ``textclf.predictor.predict_file`` on the test split, and the variant's peak RSS.
On ``movie_review_sentences`` the table also shows the published accuracies on the MR
sentence-polarity corpus (NBSVM 79.4, CNN 81.5). Progress (per epoch, per run) goes to the
terminal; ``--max_minutes`` stops starting new runs once the budget is spent (the runs not
started are listed as skipped). Results: ``benchmarks/results/bert.json`` and a markdown table::

    python benchmarks/bench_bert.py                                  # tweets_sentiment + movie_review_sentences
    python benchmarks/bench_bert.py --datasets all --max_minutes 240  # every shared dataset
    python benchmarks/bench_bert.py --quick                           # smoke check, a few minutes on CPU
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import (
    DATA_ROOT,
    REPO,
    RSS_NOTE,
    dataset_paths,
    in_child,
    machine_info,
    make_echo,
    peak_rss_mb,
    start_fork_server,
    utc_now,
)

ALL_DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
DEFAULT_DATASETS = ("tweets_sentiment", "movie_review_sentences")
VARIANTS = (
    ("one_stage_ce", "one stage, cross-entropy", False, 0.0),
    ("one_stage_focal", "one stage, focal (gamma 2)", False, 2.0),
    ("two_stage_ce", "two stages, cross-entropy", True, 0.0),
    ("two_stage_focal", "two stages, focal (gamma 2)", True, 2.0),
)
PUBLISHED = {"movie_review_sentences": {"NBSVM (Wang & Manning 2012)": 0.794, "CNN (Kim 2014)": 0.815}}
QUICK = {"train_rows": 240, "eval_rows": 120, "overrides": ["model.max_length=32", "stage1.epochs=1", "stage2.epochs=1",
                                                            "stage1.lr=2e-4", "stage2.lr=1e-4", "train.batch_size=16"]}


# --------------------------------------------------------------------------- child process

def run_variant(paths: dict, overrides: list[str], output_dir: str, device: str) -> dict:
    """Train one variant, score valid/test, time ``predict_file`` on the test split; runs in a fresh process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from textclf.config import load_config
    from textclf.meta import read_meta
    from textclf.predictor import load_predictor, predict_file
    from textclf.registry import get_family
    from textclf.training import load_splits

    cfg = load_config("bert", overrides=[*overrides, f"device={json.dumps(device)}", "output.keep_checkpoints=false",
                                         "train.progress=false"])
    splits = load_splits(paths["train"], paths["valid"], paths["test"], cfg["data"])
    start = time.perf_counter()
    meta = read_meta(get_family("bert").train_fn()(cfg, splits, output_dir))
    wall = time.perf_counter() - start
    predictor = load_predictor(output_dir)
    t0 = time.perf_counter()
    n = predict_file(predictor, paths["test"], str(Path(output_dir) / "test_preds.csv"), "csv", progress=False)
    predict_s = time.perf_counter() - t0
    keep = ("accuracy", "macro_f1", "macro_f0.5", "weighted_f1", "n")
    tr = meta["training"]
    return {
        "test": {k: meta["metrics"]["test"][k] for k in keep},
        "valid": {k: meta["metrics"]["valid"][k] for k in keep},
        "train_wall_s": round(wall, 1),
        "train_loop_s": tr["train_seconds"],
        "stages": [{k: s[k] for k in ("name", "train_rows", "epochs", "epochs_run", "best_epoch", "best_score", "seconds")}
                   for s in tr["stages"]],
        "selected_stage": tr["selected_stage"],
        "predict_docs": n,
        "predict_docs_per_s": round(n / predict_s, 1),
        "device": tr["device"],
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- parent side

def slice_dataset(d: Path, work: Path, train_rows: int | None, eval_rows: int | None) -> dict:
    """The dataset's split paths, or copies cut to the first ``train_rows``/``eval_rows`` rows."""
    paths = {s: str(d / f"{s}.csv") for s in ("train", "valid", "test")}
    if train_rows is None and eval_rows is None:
        return paths
    from textclf.data import read_labelled, write_labelled

    out = {}
    for split in ("train", "valid", "test"):
        ds = read_labelled(paths[split], min_classes=0)
        limit = train_rows if split == "train" else eval_rows
        if limit is not None and limit < len(ds):
            ds = ds.subset(range(limit))
        out[split] = str(work / f"{split}.csv")
        write_labelled(out[split], ds)
    return out


def markdown_table(datasets: dict) -> str:
    """One row per dataset and variant, plus the published MR baselines."""
    rows = ["| dataset | variant | test accuracy | test macro-F1 | test macro-F0.5 | train s | predict docs/s | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in datasets.items():
        if r["status"] != "ok":
            rows.append(f"| {name} | skipped: {r['reason']} | | | | | | |")
            continue
        for key, title, _, _ in VARIANTS:
            v = r["variants"].get(key)
            if v is None:
                continue
            if "test" not in v:
                rows.append(f"| {name} | {title}: {v['status']} | | | | | | |")
                continue
            t = v["test"]
            rows.append(f"| {name} | {title} | {t['accuracy']:.4f} | {t['macro_f1']:.4f} | {t['macro_f0.5']:.4f} | "
                        f"{v['train_wall_s']:.0f} | {v['predict_docs_per_s']:.0f} | {v['peak_rss_mb']:.0f} |")
        for ref, acc in PUBLISHED.get(name, {}).items():
            rows.append(f"| {name} | published: {ref} | {acc:.3f} | | | | | |")
    return "\n".join(rows)


@click.command()
@click.option("--datasets", default=",".join(DEFAULT_DATASETS), show_default=True,
              help=f"Comma-separated dataset folder names, or 'all' ({', '.join(ALL_DATASETS)}).")
@click.option("--variants", default=",".join(v[0] for v in VARIANTS), show_default=True, help="Which variants to run.")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(DATA_ROOT), show_default=True)
@click.option("--model_name", default="auto", show_default=True, help="Encoder: 'auto' (shipped MiniLM), a hub id or a path.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N | auto.")
@click.option("--max_minutes", type=float, default=None, help="Start no new run after this many minutes.")
@click.option("--max_train_rows", type=int, default=None, help="Cut every train split to its first N rows.")
@click.option("--max_eval_rows", type=int, default=None, help="Cut every valid/test split to its first N rows.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Extra config overrides for every run.")
@click.option("--quick", is_flag=True, help=f"Smoke check: {QUICK['train_rows']} train / {QUICK['eval_rows']} eval rows, "
                                            "max_length 32, one epoch per stage.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON [default: benchmarks/results/bert.json, --quick: bert_quick.json].")
def main(datasets, variants, data_root, model_name, device, max_minutes, max_train_rows, max_eval_rows, overrides, quick, output):
    """Fine-tune BERT variants on the shared datasets and write a comparison table and JSON."""
    start_fork_server()  # before anything large is loaded: see bench_common
    from textclf.atomic import atomic_write_json

    names = list(ALL_DATASETS) if datasets == "all" else [d.strip() for d in datasets.split(",") if d.strip()]
    wanted = [v for v in VARIANTS if v[0] in {x.strip() for x in variants.split(",")}]
    if quick:
        max_train_rows = max_train_rows or QUICK["train_rows"]
        max_eval_rows = max_eval_rows or QUICK["eval_rows"]
        overrides = (*QUICK["overrides"], *overrides)
    output = Path(output or REPO / "benchmarks" / "results" / ("bert_quick.json" if quick else "bert.json"))
    started = time.perf_counter()
    echo = make_echo(show_elapsed=True)

    doc = {
        "benchmark": "bert",
        "started": utc_now(),
        "command": " ".join(["python", "benchmarks/bench_bert.py", *sys.argv[1:]]),
        "settings": {"datasets": names, "variants": [v[0] for v in wanted], "model_name": model_name, "device": device,
                     "max_minutes": max_minutes, "max_train_rows": max_train_rows, "max_eval_rows": max_eval_rows,
                     "overrides": list(overrides), "quick": quick, "config": "config/bert.json"},
        "machine": machine_info(("textclf", "torch", "transformers", "catalyst", "accelerate")),
        "notes": {
            "variants": "cross-entropy = focal loss with gamma 0 (identical by construction, see tests/test_bert.py); "
                        "two stages = stage 1 on a class-balanced downsample, stage 2 on the full train set from "
                        "stage 1's best checkpoint",
            "metrics": "test split, textclf.metrics; train s = wall time of textclf.families.bert.model.train (tokenising, "
                       "all stages, evaluation of valid+test, saving); predict docs/s = predict_file to CSV on the test "
                       "split, model load excluded",
            "peak_rss": RSS_NOTE + " (here: one job = one variant, training + prediction)",
            "published": "accuracies on the MR sentence-polarity corpus from the papers (10-fold CV on the full corpus, "
                         "not this exact split)",
        },
        "published": PUBLISHED,
        "datasets": {},
    }
    echo(f"BERT benchmark: {', '.join(names)}; variants {', '.join(v[0] for v in wanted)}; device {device}; "
         f"{doc['machine']['cores_usable']} cores" + (f"; budget {max_minutes:g} min" if max_minutes else ""))
    with tempfile.TemporaryDirectory(prefix="bench-bert-") as tmp:
        for name in names:
            d = Path(data_root) / name
            if dataset_paths(data_root, name) is None:
                echo(f"{name}: skipped, {d}/{{train,valid,test}}.csv not found")
                doc["datasets"][name] = {"status": "skipped", "reason": f"{d} not found"}
                continue
            work = Path(tmp) / name
            work.mkdir()
            paths = slice_dataset(d, work, max_train_rows, max_eval_rows)
            result = {"status": "ok", "paths": paths, "variants": {}}
            doc["datasets"][name] = result
            for i, (key, title, two_stage, gamma) in enumerate(wanted, 1):
                if max_minutes is not None and (time.perf_counter() - started) / 60 >= max_minutes:
                    echo(f"{name} / {title}: skipped, --max_minutes {max_minutes:g} spent")
                    result["variants"][key] = {"status": "skipped: time budget"}
                    continue
                echo(f"{name} [{i}/{len(wanted)}] {title} ...")
                run_overrides = [*overrides, f"two_stage={json.dumps(two_stage)}", f"loss.gamma={gamma}",
                                 f"model.model_name={json.dumps(model_name)}"]
                load = os.getloadavg()[0]
                v = in_child(run_variant, paths, run_overrides, str(work / key), device)
                v["loadavg_1m_before"] = round(load, 2)
                result["variants"][key] = v
                t = v["test"]
                echo(f"{name} [{i}/{len(wanted)}] {title}: test acc {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f} "
                     f"F0.5 {t['macro_f0.5']:.4f}; train {v['train_wall_s']:.0f} s; {v['predict_docs_per_s']:.0f} docs/s; "
                     f"peak RSS {v['peak_rss_mb']:.0f} MiB")
                atomic_write_json(output, doc)
    doc["finished"] = utc_now()
    doc["table_markdown"] = markdown_table(doc["datasets"])
    atomic_write_json(output, doc)
    click.echo(doc["table_markdown"])
    click.echo(f"\nwrote {output}")


if __name__ == "__main__":
    main()

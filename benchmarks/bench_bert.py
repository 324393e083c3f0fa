"""Benchmark the BERT family against a plain PyTorch loop, in the same run, and its variants side by side.

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is
skipped with a message) each variant runs in a fresh process (forked from a fork server started
before any data loads, so its peak RSS is its own; see ``bench_common``):

  ``plain``            the baseline: a plain PyTorch loop over the same encoder (``--model_name``,
                       default the shipped all-MiniLM-L6-v2), the same mean-pooling head, AdamW
                       (same parameter groups, weight decay, lr = ``stage2.lr``), the same linear
                       warm-up/decay schedule, gradient clipping and number of epochs (stage 1 +
                       stage 2); fp32, batch 32, cross-entropy, texts tokenised in the loop and
                       padded to each random batch's longest, no validation, the last epoch kept.
  ``default``          ``textclf`` with families/bert/config.json as shipped (``two_stage auto``: one stage
                       of stage 1 + stage 2 epochs on balanced labels, two on imbalanced ones; focal
                       loss, ``train.precision auto``, ``model.gradient_checkpointing auto``).
  ``fp16_ckpt``        the old defaults: ``precision fp16`` + gradient checkpointing on.
  ``bf16``             ``precision bf16`` (autocast; on a CPU too).
  ``batch128``, ``batch512``  ``train.batch_size`` 128 / 512, lr scaled by the sqrt rule.
  ``compile``          ``model.compile true`` (torch.compile of the encoder).
  ``random_batches``   ``train.bucket_pool 1``: random batches, padded to their longest (no length pools).
  ``two_stage_focal``  ``two_stage true``: two stages on any labels (the default before ``auto``).
  ``one_stage_ce``, ``one_stage_focal``, ``two_stage_ce``  the loss/stage variants (one stage: stage 2's
                       epochs only; two stages forced).
  ``chunk``            ``model.long_text chunk``: texts cut into overlapping windows, trained per window,
                       logits pooled per document (``--long_text`` runs it against ``default`` on
                       bbc_news and spamassassin and adds the chunk/truncate ratios of macro-F1 and time).

Reported per variant: training rows/s (rows trained / seconds inside the training batches, all
stages and epochs; tokenising, validation and saving excluded) and its ratio to the plain loop;
the same per CPU-second of the job and its ratio (steadier than wall time on a shared CPU);
training wall seconds; prediction docs/s (``Predictor.predict_proba`` over the test texts after
a warm-up, repeated up to ``--min_predict_docs``); peak GPU memory
(``torch.cuda.max_memory_allocated``) on CUDA; peak RSS; test accuracy / macro-F1 / F0.5.
Results go to ``benchmarks/results/bert.json`` (``bert_quick.json`` with ``--quick``) and a
markdown table::

    python benchmarks/bench_bert.py                        # both default datasets, plain + 4 loss/stage variants
    python benchmarks/bench_bert.py --datasets movie_review_sentences --max_train_rows 1000 --max_eval_rows 500 \
        --threads 1 --variants plain,default,batch128,batch512         # the CPU table of the README
    python benchmarks/bench_bert.py --device cuda --datasets movie_review_sentences --variants all
    python benchmarks/bench_bert.py --quick --variants plain,default   # smoke check, a few minutes on CPU
    python benchmarks/bench_bert.py --long_text [--max_train_rows 300 --max_eval_rows 150]   # make bench_long_text
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import bench_common as bench
import click

ALL_DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
DEFAULT_DATASETS = ("tweets_sentiment", "movie_review_sentences")
#: placeholder for stage 1 + stage 2 epochs of the run's config (``two_stage auto``'s one-stage plan): see variant_overrides
ONE_STAGE_EPOCHS = "stage2.epochs=<stage1+stage2>"
#: key -> (title, overrides); "plain" is the plain PyTorch loop, everything else textclf with overrides
VARIANTS = {
    "plain": ("plain PyTorch loop (fp32, batch 32, CE)", None),
    "default": ("textclf default (two_stage auto, focal, auto precision/checkpointing)", []),
    "two_stage_focal": ("textclf, two stages forced, focal (default before two_stage auto)", ["two_stage=true"]),
    "fp16_ckpt": ("textclf, old defaults: fp16 + gradient checkpointing", ["train.precision=fp16",
                                                                          "model.gradient_checkpointing=true"]),
    "bf16": ("textclf, bf16 autocast", ["train.precision=bf16"]),
    "batch128": ("textclf, batch 128 (sqrt lr rule)", ["train.batch_size=128"]),
    "batch512": ("textclf, batch 512 (sqrt lr rule)", ["train.batch_size=512"]),
    "compile": ("textclf, torch.compile encoder", ["model.compile=true"]),
    "random_batches": ("textclf, random batches (train.bucket_pool 1)", ["train.bucket_pool=1"]),
    "one_stage_ce": ("textclf, one stage (stage 2 epochs), cross-entropy", ["two_stage=false", "loss.gamma=0"]),
    "one_stage_focal": ("textclf, one stage (stage 2 epochs), focal", ["two_stage=false"]),
    "two_stage_ce": ("textclf, two stages, cross-entropy", ["two_stage=true", "loss.gamma=0"]),
    "one_stage": ("textclf, one stage of stage 1 + stage 2 epochs, focal (what two_stage auto runs on balanced labels)",
                  ["two_stage=false", ONE_STAGE_EPOCHS]),
    "chunk": ("textclf, long_text chunk (stride max_length // 4, <= 8 windows, mean pooling)", ["model.long_text=chunk"]),
}
#: ``--long_text``: the long-document datasets, truncation (the default) against chunking
LONG_TEXT = {"datasets": ("bbc_news", "spamassassin"), "variants": ("default", "chunk")}
#: ``--recipe``: the BERT recipe across the four datasets, one stage against two (auto picks one of them per dataset)
#: (``auto_of``: the variant that runs what auto's plan picks, by its ``two_stage``)
RECIPE = {"seeds": "13,14,15,16,17", "auto_of": {False: "one_stage", True: "two_stage_focal"}}
#: the plain baseline, the default and the loss/stage combinations
DEFAULT_VARIANTS = ("plain", "default", "one_stage_ce", "one_stage_focal", "two_stage_ce")
PUBLISHED = {"movie_review_sentences": {"NBSVM (Wang & Manning 2012)": 0.794, "CNN (Kim 2014)": 0.815}}
PLAIN_BATCH = 32
QUICK = {"train_rows": 160, "eval_rows": 80, "overrides": ["model.max_length=32", "stage1.epochs=1", "stage2.epochs=1"]}


# --------------------------------------------------------------------------- child processes

def _cuda_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predict_speed(predict, texts: list[str], device, min_docs: int) -> float:
    """Docs/s of ``predict(texts)`` after a warm-up, repeated until at least ``min_docs`` documents."""
    predict(texts[:64])
    n, start = 0, time.perf_counter()
    while n < max(min_docs, 1):
        predict(texts)
        n += len(texts)
    _cuda_sync(device)
    return n / (time.perf_counter() - start)


def _gpu_peak_mb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _test_scores(labels: list[str], gold: list[str], pred: list[str]) -> dict:
    from textclf.core.metrics import classification_metrics

    m = classification_metrics(gold, pred, labels)
    return {k: m[k] for k in ("accuracy", "macro_f1", "macro_f0.5", "weighted_f1")} | {"n": len(gold)}


def run_plain(paths: dict, overrides: list[str], device_spec: str, min_predict_docs: int) -> dict:
    """The baseline: a plain PyTorch fine-tuning loop, tokenising in the loop (runs in a fresh process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from textclf.core.torch_common import resolve_device, seed_everything
    from textclf.families.bert.data import load_tokenizer
    from textclf.families.bert.model import BertClassifier, load_encoder, resolve_model_name
    from textclf.families.bert.stages import plan_stages

    cfg, splits = bench.load_job_splits(paths, "bert", overrides)
    device = resolve_device(device_spec)
    seed_everything(cfg["seed"])
    name = resolve_model_name(cfg["model"]["model_name"])
    encoder = load_encoder(name)
    tokenizer = load_tokenizer(name, encoder.config.vocab_size)
    max_length = min(cfg["model"]["max_length"], getattr(encoder.config, "max_position_embeddings", 512))
    model = BertClassifier(encoder, len(splits.labels), cfg["model"]["dropout"], cfg["model"]["pooling"]).to(device)
    index = {label: i for i, label in enumerate(splits.labels)}
    texts, targets = splits.train.texts, [index[y] for y in splits.train.labels]
    plan = plan_stages(cfg, splits.train.labels)  # the epochs textclf trains in all: stage 1 + stage 2, or one stage's
    epochs = (cfg["stage1"]["epochs"] if plan.two_stage else 0) + plan.stage2_epochs
    t = cfg["train"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg["stage2"]["lr"])
    steps = math.ceil(len(texts) / PLAIN_BATCH) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(round(t["warmup_ratio"] * steps)), steps)

    def collate(idx):
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], torch.tensor([targets[i] for i in idx])

    loader = DataLoader(list(range(len(texts))), batch_size=PLAIN_BATCH, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows, start, cpu0 = 0, time.perf_counter(), time.process_time()
    model.train()
    for _ in range(epochs):
        for ids, mask, y in loader:
            ids, mask, y = ids.to(device), mask.to(device), y.to(device)
            loss = F.cross_entropy(model(ids, mask), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            rows += len(y)
    _cuda_sync(device)
    loop_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
    peak = _gpu_peak_mb(device)
    model.eval()

    def predict(batch_texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(batch_texts), 64):
                enc = tokenizer(batch_texts[i : i + 64], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
                out.append(model(enc["input_ids"].to(device), enc["attention_mask"].to(device)).argmax(-1).cpu())
        return torch.cat(out).numpy()

    preds = predict(splits.test.texts)
    test = _test_scores(splits.labels, list(splits.test.labels), [splits.labels[i] for i in preds])
    speed = _predict_speed(predict, splits.test.texts, device, min_predict_docs)
    return {"test": test, "rows_trained": rows, "train_loop_s": round(loop_s, 2), "train_wall_s": round(loop_s, 2),
            "rows_per_s": round(rows / loop_s, 2), "train_loop_cpu_s": round(cpu_s, 2),
            "rows_per_cpu_s": round(rows / cpu_s, 2), "epochs": epochs, "predict_docs_per_s": round(speed, 1),
            "predict_batch_size": 64, "peak_gpu_mb": peak, "device": str(device), "peak_rss_mb": bench.peak_rss_mb()}


def run_variant(paths: dict, overrides: list[str], output_dir: str, device_spec: str, min_predict_docs: int) -> dict:
    """Train one textclf variant, read its meta, time prediction on the test split (runs in a fresh process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family
    from textclf.core.torch_common import resolve_device
    from textclf.families.bert.model import BertPredictor

    cfg, splits = bench.load_job_splits(paths, "bert", [*overrides, f"device={json.dumps(device_spec)}",
                                                        "output.keep_checkpoints=false", "train.progress=false"])
    device = resolve_device(device_spec)
    start = time.perf_counter()
    meta = read_meta(get_family("bert").train_fn()(cfg, splits, output_dir))  # the core's flow over the family's fit
    wall = time.perf_counter() - start
    tr = meta["training"]
    predictor = BertPredictor.load(output_dir, device=device_spec)
    speed = _predict_speed(predictor.predict_proba, splits.test.texts, device, min_predict_docs)
    keep = ("accuracy", "macro_f1", "macro_f0.5", "weighted_f1", "n")
    return {
        "test": {k: meta["metrics"]["test"][k] for k in keep},
        "valid": {k: meta["metrics"]["valid"][k] for k in keep},
        "rows_trained": tr["rows_trained"], "train_loop_s": tr["train_loop_seconds"], "rows_per_s": tr["rows_per_s"],
        "train_loop_cpu_s": tr["train_loop_cpu_seconds"],
        "rows_per_cpu_s": round(tr["rows_trained"] / tr["train_loop_cpu_seconds"], 2) if tr["train_loop_cpu_seconds"] else None,
        "train_wall_s": round(wall, 1),
        "stages": [{k: s.get(k) for k in ("name", "train_rows", "epochs", "epochs_run", "best_epoch", "best_score", "seconds",
                                           "train_loop_seconds", "rows_per_s", "lr", "batch_size", "compile_state")}
                   for s in tr["stages"]],
        "selected_stage": tr["selected_stage"],
        "precision": tr["precision"]["name"], "gradient_checkpointing": tr["gradient_checkpointing"]["enabled"],
        "compile": tr["compile"], "token_cache": tr["token_cache"],
        "predict_docs_per_s": round(speed, 1), "predict_batch_size": predictor.batch_size,
        "long_text": meta["bert"].get("long_text"),
        "predict_precision": predictor.precision.name,
        "peak_gpu_mb": tr.get("peak_gpu_memory_mb"), "device": tr["device"], "peak_rss_mb": bench.peak_rss_mb(),
    }


def auto_plan(paths: dict, overrides: list[str]) -> dict:
    """What ``two_stage: auto`` decides on this train split with these overrides (runs in a fresh process)."""
    from textclf.families.bert.stages import plan_stages

    cfg, splits = bench.load_job_splits(paths, "bert", [*overrides, 'two_stage="auto"'])
    return plan_stages(cfg, splits.train.labels).as_dict()


def run_job(threads: int | None, fn, *args) -> dict:
    """``fn(*args)`` with ``threads`` torch threads (None: torch's default); runs in a fresh process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    result = fn(*args)
    result["threads"] = torch.get_num_threads()
    return result


# --------------------------------------------------------------------------- parent side

def slice_dataset(d: Path, work: Path, train_rows: int | None, eval_rows: int | None) -> dict:
    """The dataset's split paths, or copies cut to the first ``train_rows``/``eval_rows`` rows."""
    paths = {s: str(d / f"{s}.csv") for s in bench.SPLITS}
    if train_rows is None and eval_rows is None:
        return paths
    from textclf.core.data import read_labelled, write_labelled

    out = {}
    for split in bench.SPLITS:
        ds = read_labelled(paths[split], min_classes=0)
        limit = train_rows if split == "train" else eval_rows
        if limit is not None and limit < len(ds):
            ds = ds.subset(range(limit))
        out[split] = str(work / f"{split}.csv")
        write_labelled(out[split], ds)
    return out


def markdown_table(datasets: dict) -> str:
    """One row per dataset and variant (ratio = training rows/s over the plain loop's), plus the published MR baselines."""
    rows = ["| dataset | variant | train rows/s | ratio to plain | rows per CPU-s | CPU ratio | train wall s | predict docs/s | "
            "peak GPU MiB | test accuracy | test macro-F1 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in datasets.items():
        if r["status"] != "ok":
            rows.append(f"| {name} | skipped: {r['reason']} | | | | | | | | | |")
            continue
        for key, v in r["variants"].items():
            title = VARIANTS[key][0]
            if "test" not in v:
                rows.append(f"| {name} | {title}: {v['status']} | | | | | | | | | |")
                continue
            t = v["test"]
            ratio = f"{v['ratio_to_plain']:.2f}" if v.get("ratio_to_plain") is not None else ""
            gpu = f"{v['peak_gpu_mb']:.0f}" if v.get("peak_gpu_mb") else "-"
            per_cpu = f"{v['rows_per_cpu_s']:.1f}" if v.get("rows_per_cpu_s") else "-"
            cpu_ratio = f"{v['cpu_ratio_to_plain']:.2f}" if v.get("cpu_ratio_to_plain") is not None else ""
            if v.get("n_seeds", 1) > 1:
                m, sd = v["test_mean"], v["test_sd"]
                acc = f"{m['accuracy']:.4f} ± {sd['accuracy']:.4f}"
                f1 = f"{m['macro_f1']:.4f} ± {sd['macro_f1']:.4f} ({v['n_seeds']} seeds)"
            else:
                acc, f1 = f"{t['accuracy']:.4f}", f"{t['macro_f1']:.4f}"
            rows.append(f"| {name} | {title} | {v['rows_per_s']:.1f} | {ratio} | {per_cpu} | {cpu_ratio} | {v['train_wall_s']:.0f} | "
                        f"{v['predict_docs_per_s']:.0f} | {gpu} | {acc} | {f1} |")
        for ref, acc in PUBLISHED.get(name, {}).items():
            rows.append(f"| {name} | published: {ref} | | | | | | | | {acc:.3f} | |")
    return "\n".join(rows)


def long_text_summary(datasets: dict) -> dict:
    """Per dataset with both runs: test macro-F1 of truncation and chunking, and what chunking costs in time.

    ``train_time_ratio``: training wall seconds chunk / truncate; ``train_loop_ratio``: seconds inside
    the training batches; ``predict_time_ratio``: seconds per predicted document (docs/s truncate / chunk).
    """
    out = {}
    for name, r in datasets.items():
        trunc, chunk = (r.get("variants") or {}).get("default"), (r.get("variants") or {}).get("chunk")
        if not (trunc and chunk and "test" in trunc and "test" in chunk):
            continue
        stats = ((chunk.get("long_text") or {}).get("splits") or {}).get("test") or {}
        out[name] = {"truncate_macro_f1": round(_f1(trunc), 4), "chunk_macro_f1": round(_f1(chunk), 4),
                     "delta": round(_f1(chunk) - _f1(trunc), 4),
                     "train_time_ratio": round(chunk["train_wall_s"] / trunc["train_wall_s"], 2),
                     "train_loop_ratio": round(chunk["train_loop_s"] / trunc["train_loop_s"], 2),
                     "predict_time_ratio": round(trunc["predict_docs_per_s"] / chunk["predict_docs_per_s"], 2),
                     "test_cut_share": stats.get("cut_share"), "test_windows_per_doc": stats.get("mean_chunks")}
    return out


def long_text_table(summary: dict) -> str:
    """The ``--long_text`` table: macro-F1 of both and the chunk/truncate time ratios."""
    rows = ["| dataset | test docs cut | windows / doc | truncate macro-F1 | chunk macro-F1 | delta | "
            "train time ratio | train loop ratio | predict time ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        cut = f"{s['test_cut_share']:.0%}" if s["test_cut_share"] is not None else "-"
        rows.append(f"| {name} | {cut} | {s['test_windows_per_doc']} | {s['truncate_macro_f1']:.4f} | "
                    f"{s['chunk_macro_f1']:.4f} | {s['delta']:+.4f} | {s['train_time_ratio']:.2f} | "
                    f"{s['train_loop_ratio']:.2f} | {s['predict_time_ratio']:.2f} |")
    return "\n".join(rows)


def variant_overrides(key: str, common: list[str]) -> list[str]:
    """The variant's config overrides (None: the plain loop), ``ONE_STAGE_EPOCHS`` resolved against ``common``'s config."""
    extra = VARIANTS[key][1]
    if extra is None or ONE_STAGE_EPOCHS not in extra:
        return extra
    from textclf.core.config import load_config

    cfg = load_config("bert", overrides=list(common))
    return [f"stage2.epochs={cfg['stage1']['epochs'] + cfg['stage2']['epochs']}" if x == ONE_STAGE_EPOCHS else x
            for x in extra]


def resumable(output: Path, settings: dict) -> dict:
    """The datasets of an earlier results file at ``output`` with the same settings (``--resume``), else {}."""
    try:
        prev = json.loads(Path(output).read_text())
    except (OSError, ValueError):
        return {}
    if prev.get("settings") != settings:
        click.echo(f"--resume: {output} has other settings; starting afresh", err=True)
        return {}
    return {k: v for k, v in prev.get("datasets", {}).items() if v.get("status") == "ok"}


def recipe_summary(datasets: dict, auto_plans: dict) -> dict:
    """``--recipe``: per dataset, test macro-F1 over the seeds of one stage, two stages and ``auto``, and their means.

    ``auto`` is not trained separately: per seed it is the run of the variant that ``two_stage: auto``
    picks there (``auto_plans[dataset][seed]``), which is the same configuration with the same seed.
    """
    import statistics

    def stats(xs: list[float]) -> dict:
        return {"mean": round(statistics.fmean(xs), 4), "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else None,
                "n": len(xs)}

    out, means = {"datasets": {}}, {"one_stage": [], "two_stage": [], "auto": []}
    one_key, two_key = RECIPE["auto_of"][False], RECIPE["auto_of"][True]
    for name, r in datasets.items():
        v = r.get("variants") or {}
        one = {s["seed"]: s["macro_f1"] for s in (v.get(one_key) or {}).get("seed_runs", [])}
        two = {s["seed"]: s["macro_f1"] for s in (v.get(two_key) or {}).get("seed_runs", [])}
        seeds = sorted(set(one) & set(two) & set(auto_plans.get(name, {})))
        if not seeds:
            continue
        picks = {sd: auto_plans[name][sd]["two_stage"] for sd in seeds}
        auto = [two[sd] if picks[sd] else one[sd] for sd in seeds]
        row = {"seeds": seeds, "one_stage": stats([one[sd] for sd in seeds]), "two_stage": stats([two[sd] for sd in seeds]),
               "auto": stats(auto), "auto_two_stage": sorted(set(picks.values())),
               "dropped_share": auto_plans[name][seeds[0]]["dropped_share"],
               "two_minus_one_per_seed": [round(two[sd] - one[sd], 4) for sd in seeds]}
        row["two_stage_wins"] = sum(d > 0 for d in row["two_minus_one_per_seed"])
        row["best"] = max(("one_stage", "two_stage"), key=lambda k: row[k]["mean"])
        out["datasets"][name] = row
        for k in means:
            means[k].append(row[k]["mean"])
    if out["datasets"]:
        out["mean_over_datasets"] = {k: round(statistics.fmean(xs), 4) for k, xs in means.items()}
        out["best_default"] = max(out["mean_over_datasets"], key=lambda k: out["mean_over_datasets"][k])
        out["n_datasets"] = len(out["datasets"])
    return out


def recipe_table(summary: dict) -> str:
    """The ``--recipe`` table: one stage, two stages and ``auto`` per dataset (mean ± sd over seeds), and the means."""
    rows = ["| dataset | balanced downsample leaves out | auto runs | one stage | two stages | auto | two - one per seed |",
            "|---|---:|---|---:|---:|---:|---|"]

    def cell(s: dict) -> str:
        return f"{s['mean']:.4f} ± {s['sd']:.4f}" if s["sd"] is not None else f"{s['mean']:.4f}"

    for name, r in summary.get("datasets", {}).items():
        runs = "/".join("two stages" if x else "one stage" for x in r["auto_two_stage"])
        deltas = ", ".join(f"{d:+.4f}" for d in r["two_minus_one_per_seed"])
        rows.append(f"| {name} | {r['dropped_share']:.1%} | {runs} | {cell(r['one_stage'])} | {cell(r['two_stage'])} | "
                    f"{cell(r['auto'])} | {deltas} |")
    if "mean_over_datasets" in summary:
        m = summary["mean_over_datasets"]
        rows.append(f"| **mean of {summary['n_datasets']} datasets** | | | {m['one_stage']:.4f} | {m['two_stage']:.4f} | "
                    f"{m['auto']:.4f} | |")
    return "\n".join(rows)


def merge_seed_run(runs: list[dict], seed: int, test: dict) -> list[dict]:
    """``runs`` with this seed's test scores added (a repeat of a seed replaces its earlier entry)."""
    entry = {"seed": seed, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"]}
    return [*(r for r in runs if r["seed"] != seed), entry]


def seed_summary(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of test accuracy and macro-F1 over the seed runs."""
    import statistics

    out = {"test_mean": {}, "test_sd": {}, "n_seeds": len(runs)}
    for k in ("accuracy", "macro_f1"):
        xs = [r[k] for r in runs]
        out["test_mean"][k] = round(statistics.fmean(xs), 4)
        out["test_sd"][k] = round(statistics.stdev(xs), 4) if len(xs) > 1 else None
    return out


def _f1(v: dict) -> float:
    """The variant's test macro-F1: the mean over seeds when it ran with several, else its one run."""
    return (v.get("test_mean") or v["test"])["macro_f1"]


def add_ratios(result: dict) -> None:
    """``ratio_to_plain`` (rows/s) and ``f1_delta_to_plain`` on every variant of a dataset that has a plain run."""
    plain = result["variants"].get("plain")
    if not plain or "rows_per_s" not in plain:
        return
    for v in result["variants"].values():
        if "rows_per_s" in v:
            v["ratio_to_plain"] = round(v["rows_per_s"] / plain["rows_per_s"], 3)
            if v.get("rows_per_cpu_s") and plain.get("rows_per_cpu_s"):
                v["cpu_ratio_to_plain"] = round(v["rows_per_cpu_s"] / plain["rows_per_cpu_s"], 3)
            v["f1_delta_to_plain"] = round(_f1(v) - _f1(plain), 4)


@click.command()
@click.option("--datasets", default=",".join(DEFAULT_DATASETS), show_default=True,
              help=f"Comma-separated dataset folder names, or 'all' ({', '.join(ALL_DATASETS)}).")
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True,
              help=f"Comma-separated, or 'all': {', '.join(VARIANTS)}.")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(bench.DATA_ROOT), show_default=True)
@click.option("--model_name", default="auto", show_default=True, help="Encoder: 'auto' (shipped MiniLM), a hub id or a path.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N | auto.")
@click.option("--max_minutes", type=float, default=None, help="Start no new run after this many minutes.")
@click.option("--max_train_rows", type=int, default=None, help="Cut every train split to its first N rows.")
@click.option("--max_eval_rows", type=int, default=None, help="Cut every valid/test split to its first N rows.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Run the variants this many times (interleaved) and keep each one's fastest: timings on a busy machine are noisy.")
@click.option("--seeds", default="", metavar="S1,S2,...",
              help="Train every variant once per seed (overrides config seed) and report test scores as mean ± sd "
                   "over the seeds: one seed cannot tell a small F1 difference from noise [default: the config seed].")
@click.option("--min_predict_docs", type=int, default=None,
              help="Predict the test texts repeatedly until this many docs [default: 20000 on CUDA, one pass on CPU].")
@click.option("--threads", type=int, default=None,
              help="torch.set_num_threads in every job (plain and textclf alike) [default: torch's own choice].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Extra config overrides for every run.")
@click.option("--quick", is_flag=True, help=f"Smoke check: {QUICK['train_rows']} train / {QUICK['eval_rows']} eval rows, "
                                            "max_length 32, one epoch per stage.")
@click.option("--long_text", is_flag=True,
              help=f"Long documents: datasets {', '.join(LONG_TEXT['datasets'])}, variants default (truncate) and "
                   "chunk; adds the chunk/truncate table [results: bert_long_text.json].")
@click.option("--resume", is_flag=True,
              help="Keep the seed runs already in --output (same settings) and run only the missing ones.")
@click.option("--recipe", is_flag=True,
              help=f"The BERT recipe: all four datasets, variants {', '.join(RECIPE['auto_of'].values())}, seeds {RECIPE['seeds']} "
                   "unless --seeds is given; adds the one stage / two stages / auto table [results: bert_recipe.json].")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON [default: benchmarks/results/bert.json, --quick: bert_quick.json].")
def main(datasets, variants, data_root, model_name, device, max_minutes, max_train_rows, max_eval_rows, repeats,
         seeds, min_predict_docs, threads, overrides, quick, long_text, resume, recipe, output):
    """Fine-tune BERT variants and a plain PyTorch loop on the shared datasets; write a comparison table and JSON."""
    bench.start_fork_server()  # before anything large is loaded: see bench_common
    from textclf.core.atomic import atomic_write_json

    datasets_given = click.get_current_context().get_parameter_source("datasets") != click.core.ParameterSource.DEFAULT
    if long_text:  # its datasets unless --datasets names others, always truncate against chunk
        datasets = datasets if datasets_given else ",".join(LONG_TEXT["datasets"])
        variants = ",".join(LONG_TEXT["variants"])
    if recipe:  # all four datasets unless --datasets names others; one stage against two; five seeds by default
        datasets = datasets if datasets_given else "all"
        variants = ",".join(RECIPE["auto_of"].values())
        seeds = seeds or RECIPE["seeds"]
    names = list(ALL_DATASETS) if datasets == "all" else [d.strip() for d in datasets.split(",") if d.strip()]
    wanted = list(VARIANTS) if variants == "all" else [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if quick:
        max_train_rows = max_train_rows or QUICK["train_rows"]
        max_eval_rows = max_eval_rows or QUICK["eval_rows"]
        overrides = (*QUICK["overrides"], *overrides)
    seed_list = [int(x) for x in seeds.split(",") if x.strip()] or [None]
    if min_predict_docs is None:
        min_predict_docs = 20000 if device.startswith("cuda") else 0
    output = bench.results_path(output, "bert_long_text" if long_text else "bert_recipe" if recipe else "bert", quick)
    auto_plans: dict = {}
    started = time.perf_counter()
    echo = bench.make_echo(show_elapsed=True)

    doc = bench.results_doc(
        "bert",
        {"datasets": names, "variants": wanted, "model_name": model_name, "device": device,
         "max_minutes": max_minutes, "max_train_rows": max_train_rows, "max_eval_rows": max_eval_rows,
         "repeats": repeats, "seeds": [x for x in seed_list if x is not None], "min_predict_docs": min_predict_docs, "threads": threads,
         "overrides": list(overrides), "quick": quick, "recipe": recipe,
         "config": "families/bert/config.json"},
        ("textclf", "torch", "transformers", "catalyst", "accelerate"),
        notes={
            "plain": "a plain PyTorch loop: same encoder, head, AdamW groups, lr (stage2.lr), linear warm-up/decay, "
                     "gradient clipping and total epochs (stage1 + stage2) as textclf's default; fp32, batch 32, "
                     "cross-entropy, tokenised per batch and padded to the random batch's longest text",
            "rows_per_s": "rows trained / seconds inside the training batches (all stages and epochs; tokenising, "
                          "validation, saving excluded); ratio_to_plain = variant rows/s / plain rows/s",
            "rows_per_cpu_s": "the same per CPU-second of the process (time.process_time, all its threads): on a shared "
                              "CPU other load barely changes it, so cpu_ratio_to_plain is the steadier comparison there",
            "predict": "Predictor.predict_proba over the test texts after a warm-up (textclf: its per-device batch size "
                       "and precision; plain: batches of 64 in input order), repeated up to min_predict_docs",
            "metrics": "test split, textclf.core.metrics; with --seeds, test_mean / test_sd are the mean and sample sd "
                       "over the seeds (seed_runs), f1_delta_to_plain compares means, and the speed fields are the "
                       "fastest run's",
            "peak_gpu_mb": "torch.cuda.max_memory_allocated over training (textclf: from meta.json) on CUDA",
            "peak_rss": bench.RSS_NOTE + " (here: one job = one variant, training + prediction)",
            "published": "accuracies on the MR sentence-polarity corpus from the papers (10-fold CV on the full corpus, "
                         "not this exact split)",
        },
        published=PUBLISHED,
        datasets={},
    )
    earlier = resumable(output, doc["settings"]) if resume else {}
    echo(f"BERT benchmark: {', '.join(names)}; variants {', '.join(wanted)}; device {device}; "
         f"{doc['machine']['cores_usable']} cores" + (f"; budget {max_minutes:g} min" if max_minutes else ""))
    common = [f"model.model_name={json.dumps(model_name)}", *overrides]
    extras = {key: variant_overrides(key, common) for key in wanted}  # resolved once: the config is the same for every run
    with tempfile.TemporaryDirectory(prefix="bench-bert-") as tmp:
        for name in names:
            d = Path(data_root) / name
            if bench.dataset_paths(data_root, name) is None:
                echo(f"{name}: skipped, {d}/{{train,valid,test}}.csv not found")
                doc["datasets"][name] = {"status": "skipped", "reason": f"{d} not found"}
                continue
            work = Path(tmp) / name
            work.mkdir()
            paths = slice_dataset(d, work, max_train_rows, max_eval_rows)
            result = {"status": "ok", "paths": paths, "variants": {}}
            if name in earlier:  # --resume: its finished runs, plans and paths (the slices are rebuilt the same)
                result["variants"] = earlier[name].get("variants", {})
                result["auto_plans"] = earlier[name].get("auto_plans", {})
                for sd, plan in result["auto_plans"].items():
                    auto_plans.setdefault(name, {})[int(sd)] = plan
            doc["datasets"][name] = result
            for seed, rep in [(sd, r) for sd in seed_list for r in range(max(1, repeats))]:
                seed_set = [] if seed is None else [f"seed={seed}"]
                if recipe and rep == 0 and seed not in auto_plans.get(name, {}):
                    plan = bench.in_child(auto_plan, paths, [*common, *seed_set])
                    auto_plans.setdefault(name, {})[seed] = plan
                    result.setdefault("auto_plans", {})[str(seed)] = plan
                run_label = f"run {rep + 1}" + ("" if seed is None else f", seed {seed}")
                for i, key in enumerate(wanted, 1):
                    title, extra = VARIANTS[key][0], extras[key]
                    if max_minutes is not None and (time.perf_counter() - started) / 60 >= max_minutes:
                        echo(f"{name} / {title}: skipped, --max_minutes {max_minutes:g} spent")
                        result["variants"].setdefault(key, {"status": "skipped: time budget"})
                        continue
                    if rep == 0 and seed is not None and any(
                            r["seed"] == seed for r in (result["variants"].get(key) or {}).get("seed_runs", [])):
                        echo(f"{name} / {title}, seed {seed}: done in the earlier run (--resume)")
                        continue
                    echo(f"{name} [{i}/{len(wanted)}, {run_label}] {title} ...")
                    load = os.getloadavg()[0]
                    try:
                        if extra is None:
                            v = bench.in_child(run_job, threads, run_plain, paths, [*common, *seed_set], device,
                                               min_predict_docs)
                        else:
                            v = bench.in_child(run_job, threads, run_variant, paths, [*common, *extra, *seed_set],
                                               str(work / f"{key}_{seed}_{rep}"), device, min_predict_docs)
                    except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others
                        echo(f"{name} {title}: FAILED {type(exc).__name__}: {exc}")
                        result["variants"].setdefault(key, {"status": f"failed: {type(exc).__name__}: {exc}"})
                        continue
                    v["loadavg_1m_before"] = round(load, 2)
                    this_run, this_test = v["rows_per_s"], v["test"]
                    prev = result["variants"].get(key)
                    runs = [*(prev.get("rows_per_s_runs", []) if prev else []), v["rows_per_s"]]
                    if prev and "rows_per_s" in prev and prev["rows_per_s"] >= v["rows_per_s"]:
                        v = prev
                    v["rows_per_s_runs"] = runs
                    if seed is not None:
                        v["seed_runs"] = merge_seed_run(prev.get("seed_runs", []) if prev else [], seed, this_test)
                        v.update(seed_summary(v["seed_runs"]))
                    result["variants"][key] = v
                    add_ratios(result)
                    t = this_test
                    echo(f"{name} {title}: this run {this_run:.1f} train rows/s, best {v['rows_per_s']:.1f}"
                         + (f" ({v['ratio_to_plain']:.2f}x plain's best)" if v.get("ratio_to_plain") is not None else "")
                         + f"; test acc {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f}; {v['predict_docs_per_s']:.0f} docs/s"
                         + (f"; peak GPU {v['peak_gpu_mb']:.0f} MiB" if v.get("peak_gpu_mb") else ""))
                    if recipe:
                        doc["recipe"] = recipe_summary(doc["datasets"], auto_plans)
                    atomic_write_json(output, doc)
    table = markdown_table(doc["datasets"])
    if long_text:
        doc["long_text"] = long_text_summary(doc["datasets"])
        table += "\n\n" + long_text_table(doc["long_text"])
    if recipe:
        doc["recipe"] = recipe_summary(doc["datasets"], auto_plans)
        table += "\n\n" + recipe_table(doc["recipe"])
    bench.finish_doc(output, doc, table)
    click.echo(doc["table_markdown"])
    click.echo(f"\nwrote {output}")


if __name__ == "__main__":
    main()

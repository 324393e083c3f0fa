"""Benchmark the BiLSTM family: textclf's Lightning training vs a bare PyTorch loop over the same model, and fastText.

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is skipped
with a message) three jobs run, each in a fresh process (forked from a fork server started before any
data loads, so its peak RSS is the job's own; see ``bench_common``):

  (a) ``lightning``: ``textclf.families.lstm.train.fit`` (Lightning, TensorBoard logging, checkpoints, history),
  (b) ``bare``: a plain PyTorch loop over the same model, batches, optimiser, scheduler and validation,
  (c) ``fasttext``: fastText with families/fasttext/config.json's params, no search (the baseline users know).

Both LSTM jobs run the same fixed number of epochs (``--epochs``, early stopping off) and keep their
best epoch by valid macro F0.5; every model is scored on the test split with ``textclf.core.metrics``.
Reported: test accuracy / macro-F1 / macro-F0.5, seconds per epoch (train + validation, and train
only), training tokens/s, prediction docs/s (``Predictor.predict_proba`` over the test texts), peak
RSS, and the overhead ratio lightning/bare of the seconds per epoch (target <= 1.2). Prints a markdown
table and writes ``benchmarks/results/lstm.json`` atomically::

    python benchmarks/bench_lstm.py                              # all four datasets, 5 epochs, families/lstm/config.json
    python benchmarks/bench_lstm.py --quick --datasets tweets_sentiment
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import DATA_ROOT, REPO, RSS_NOTE, dataset_paths, in_child, machine_info, package_versions, peak_rss_mb, start_fork_server

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
JOBS = ("lightning", "bare", "fasttext")
QUICK_SET = ("model.embedding_dim=32", "model.hidden_size=32")


# --------------------------------------------------------------------------- child jobs


def _splits(data_dir: str, data_cfg: dict, max_train: int | None):
    from textclf.core.training import load_splits

    d = Path(data_dir)
    splits = load_splits(d / "train.csv", d / "valid.csv", d / "test.csv", data_cfg)
    if max_train and len(splits.train) > max_train:
        splits.train = splits.train.subset(range(max_train))
    return splits


def _predict_speed(predictor, texts: list[str], min_docs: int = 2000) -> float:
    predictor.predict_proba(texts[:64])  # warm-up
    n, start = 0, time.perf_counter()
    while n < min_docs:
        predictor.predict_proba(texts)
        n += len(texts)
    return n / (time.perf_counter() - start)


def _test_metrics(predictor, splits) -> dict:
    from textclf.core.predictor import evaluate_predictor

    m = evaluate_predictor(predictor, splits.test.texts, splits.test.labels)
    return {k: m[k] for k in ("accuracy", "macro_f1", "macro_f0.5")}


def _lstm_job(job: str, data_dir: str, overrides: list[str], max_train: int | None) -> dict:
    import torch

    from textclf.core.config import load_config
    from textclf.families.lstm import model as lstm

    cfg = load_config("lstm", None, [*overrides, "device=cpu"])
    splits = _splits(data_dir, cfg["data"], max_train)
    if cfg["train"]["num_threads"]:
        torch.set_num_threads(cfg["train"]["num_threads"])
    import_s = 0.0
    if job == "lightning":
        start = time.perf_counter()
        from lightning.pytorch.loggers import TensorBoardLogger  # noqa: F401  (imports tensorboard)

        from textclf.families.lstm import train as lstm_train

        import_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-lstm-") as tmp:
        start = time.perf_counter()
        if job == "lightning":
            result = lstm_train.train_model(cfg, splits, tmp, progress=False)
            model, vocab, history = result.model, result.vocab, result.history
        else:
            model, vocab, history = bare_fit(cfg, splits)
        fit_s = time.perf_counter() - start
    predictor = lstm.LSTMPredictor("", {"labels": splits.labels}, model, lstm.make_encoder(cfg, vocab), "cpu",
                                   cfg["train"]["eval_batch_size"])
    epochs = len(history)
    train_s = sum(h["train_time_s"] for h in history)
    # steady-state seconds per epoch: from the end of the first epoch's validation to the end of the last one
    # (training, validation, logging, checkpoints); the one-off start-up is reported apart as startup_s
    steady = (history[-1]["elapsed_s"] - history[0]["elapsed_s"]) / (epochs - 1) if epochs > 1 else history[0]["elapsed_s"]
    steady_cpu = (history[-1]["cpu_s"] - history[0]["cpu_s"]) / (epochs - 1) if epochs > 1 else history[0]["cpu_s"]
    return {"test": _test_metrics(predictor, splits), "epochs": epochs, "epoch_s": steady, "epoch_cpu_s": steady_cpu,
            "train_epoch_s": train_s / epochs,
            "fit_s": fit_s, "startup_s": fit_s - steady * epochs, "import_s": import_s,
            "train_tokens_per_s": sum(h["train_tokens"] for h in history) / train_s,
            "best_epoch": max(history, key=lambda h: (h["valid_macro_f0.5"], -h["epoch"]))["epoch"],
            "best_valid_macro_f0.5": max(h["valid_macro_f0.5"] for h in history),
            "predict_docs_per_s": _predict_speed(predictor, splits.test.texts), "peak_rss_mb": peak_rss_mb(),
            "n_train": len(splits.train), "threads": torch.get_num_threads()}


def bare_fit(cfg: dict, splits) -> tuple:
    """The same training as ``lstm.fit`` written as a plain PyTorch loop: no Lightning, no logging, no checkpoints."""
    import torch
    from torch import nn

    from textclf.core.metrics import classification_metrics
    from textclf.core.torch_common import seed_everything
    from textclf.families.lstm import model as lstm

    t = cfg["train"]
    seed_everything(cfg["seed"])
    vocab = lstm.build_vocab(cfg, splits.train.texts)
    enc = lstm.make_encoder(cfg, vocab)
    index = {label: i for i, label in enumerate(splits.labels)}
    train_loader = lstm.make_loader(lstm.EncodedTexts(enc(splits.train.texts), [index[y] for y in splits.train.labels]),
                                    t["batch_size"], True, cfg["seed"])
    valid_loader = lstm.make_loader(lstm.EncodedTexts(enc(splits.valid.texts), [index[y] for y in splits.valid.labels]),
                                    t["eval_batch_size"], False, cfg["seed"])
    model, _ = lstm.build_model(cfg, vocab, len(splits.labels))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t["lr"], weight_decay=t["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1) if t["scheduler"] == "plateau" else None
    loss_fn = nn.CrossEntropyLoss()
    history, best, best_state = [], -1.0, None
    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(t["epochs"]):
        model.train()
        train_loader.batch_sampler.set_epoch(epoch)
        start, tokens, total, n = time.perf_counter(), 0, 0.0, 0
        for ids, lengths, y in train_loader:
            loss = loss_fn(model(ids, lengths), y)
            opt.zero_grad()
            loss.backward()
            if t["grad_clip"]:
                nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            opt.step()
            tokens += int(lengths.sum())
            total += float(loss.detach()) * y.size(0)
            n += y.size(0)
        train_s = time.perf_counter() - start
        model.eval()
        preds, gold = [], []
        with torch.no_grad():
            for ids, lengths, y in valid_loader:
                preds += model(ids, lengths).argmax(1).tolist()
                gold += y.tolist()
        m = classification_metrics([splits.labels[i] for i in gold], [splits.labels[i] for i in preds], splits.labels)
        score = m["macro_f0.5"]
        if sched:
            sched.step(score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
        history.append({"epoch": epoch, "train_time_s": train_s, "train_tokens": tokens, "train_loss": total / max(1, n),
                        "valid_macro_f0.5": score, "elapsed_s": time.perf_counter() - t0,
                        "cpu_s": time.process_time() - cpu0})
    model.load_state_dict(best_state)
    return model.eval(), vocab, history


def _fasttext_job(data_dir: str, max_train: int | None) -> dict:
    from textclf.core.config import load_config
    from textclf.core.registry import get_family
    from textclf.families.fasttext import model as fasttext_model

    cfg = load_config("fasttext", None, ["search.n_trials=0"])
    splits = _splits(data_dir, cfg["data"], max_train)
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        start = time.perf_counter()
        get_family("fasttext").train_fn()(cfg, splits, tmp)
        fit_s = time.perf_counter() - start
        predictor = fasttext_model.FastTextPredictor.load(tmp)
        test = _test_metrics(predictor, splits)
        speed = _predict_speed(predictor, splits.test.texts, 20000)
    epochs = cfg["model"]["epoch"]
    return {"test": test, "epochs": epochs, "fit_s": fit_s, "epoch_s": fit_s / epochs, "predict_docs_per_s": speed,
            "peak_rss_mb": peak_rss_mb(), "n_train": len(splits.train)}


def run_job(job: str, data_dir: str, overrides: list[str], max_train: int | None) -> dict:
    """One benchmark job (runs in a fresh process, see ``bench_common.in_child``)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    if job == "fasttext":
        return _fasttext_job(data_dir, max_train)
    return _lstm_job(job, data_dir, overrides, max_train)


# --------------------------------------------------------------------------- report


def table(results: dict) -> str:
    """The results as a markdown table (one row per dataset and system)."""
    head = ("| dataset | system | test acc | macro-F1 | macro-F0.5 | s/epoch | train tokens/s | predict docs/s | peak RSS MiB |"
            " overhead vs bare |")
    lines = [head, "|" + "---|" * 2 + "---:|" * 8]
    for ds, r in results.items():
        for job in JOBS:
            if job not in r:
                continue
            j = r[job]
            tok = f"{j['train_tokens_per_s']:,.0f}" if "train_tokens_per_s" in j else "-"
            ratio = (f"{r['overhead_ratio']:.2f}x wall, {r['overhead_ratio_cpu']:.2f}x CPU"
                     if job == "lightning" and "overhead_ratio" in r else "")
            lines.append(f"| {ds} | {job} | {j['test']['accuracy']:.3f} | {j['test']['macro_f1']:.3f} | {j['test']['macro_f0.5']:.3f} | "
                         f"{j['epoch_s']:.2f} | {tok} | {j['predict_docs_per_s']:,.0f} | {j['peak_rss_mb']:.0f} | {ratio} |")
    return "\n".join(lines)


@click.command()
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma-separated shared dataset names.")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(DATA_ROOT), show_default=True)
@click.option("--epochs", type=int, default=5, show_default=True, help="Epochs for both LSTM jobs (early stopping off).")
@click.option("--set", "overrides", multiple=True, help="LSTM config overrides for both LSTM jobs, e.g. model.hidden_size=64.")
@click.option("--max_train", type=int, default=None, help="Use only the first N training documents.")
@click.option("--jobs", default=",".join(JOBS), show_default=True, help="Which of lightning,bare,fasttext to run.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Run each LSTM job this many times (alternating) and keep the fastest; timings on a busy machine are noisy.")
@click.option("--quick", is_flag=True, help=f"A smoke run: 3 epochs, {' '.join(QUICK_SET)}, at most 2000 training docs.")
@click.option("--output", type=click.Path(dir_okay=False), default=str(REPO / "benchmarks" / "results" / "lstm.json"), show_default=True)
def main(datasets, data_root, epochs, overrides, max_train, jobs, repeats, quick, output):
    """Run the benchmark and write the results JSON plus a markdown table."""
    start_fork_server()  # before anything large is loaded: see bench_common
    from textclf.core.atomic import atomic_write_json

    overrides = list(overrides)
    if quick:
        epochs = min(epochs, 3)
        overrides = [*QUICK_SET, *overrides]
        max_train = max_train or 2000
    overrides = [f"train.epochs={epochs}", "train.patience=0", *overrides]
    results: dict = {}
    for ds in [d.strip() for d in datasets.split(",") if d.strip()]:
        d = Path(data_root) / ds
        if dataset_paths(data_root, ds) is None:
            click.echo(f"skipping {ds}: {d}/{{train,valid,test}}.csv not found", err=True)
            continue
        results[ds] = {}
        names = [j.strip() for j in jobs.split(",") if j.strip()]
        for rep in range(max(1, repeats)):
            for job in names:
                if job == "fasttext" and rep:
                    continue
                click.echo(f"[{dt.datetime.now():%H:%M:%S}] {ds}: {job} (run {rep + 1}) ...", err=True)
                res = in_child(run_job, job, str(d), overrides, max_train)
                if job in results[ds]:
                    res["epoch_s_runs"] = [*results[ds][job]["epoch_s_runs"], res["epoch_s"]]
                    if res["epoch_s"] > results[ds][job]["epoch_s"]:
                        res = {**results[ds][job], "epoch_s_runs": res["epoch_s_runs"]}
                else:
                    res["epoch_s_runs"] = [res["epoch_s"]]
                results[ds][job] = res
        if "lightning" in results[ds] and "bare" in results[ds]:
            results[ds]["overhead_ratio"] = results[ds]["lightning"]["epoch_s"] / results[ds]["bare"]["epoch_s"]
            results[ds]["overhead_ratio_train_only"] = (results[ds]["lightning"]["train_epoch_s"]
                                                        / results[ds]["bare"]["train_epoch_s"])
            results[ds]["overhead_ratio_cpu"] = results[ds]["lightning"]["epoch_cpu_s"] / results[ds]["bare"]["epoch_cpu_s"]
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "versions": package_versions(("torch", "lightning", "fasttext-community", "textclf")),
        "settings": {"epochs": epochs, "overrides": overrides, "max_train": max_train, "quick": quick, "repeats": repeats,
                     "device": "cpu"},
        "notes": [RSS_NOTE, "epoch_s: steady-state seconds per epoch, from the end of epoch 1's validation to the end of the "
                  "last (training, validation, logging, checkpoints); startup_s: the rest of the fit time (vocabulary, "
                  "encoding, Trainer and logger set-up); import_s: importing Lightning + TensorBoard (not in fit_s); "
                  "train_epoch_s: the training batches only; overhead_ratio = lightning epoch_s / bare epoch_s; with --repeats "
                  "each job keeps its fastest run (epoch_s_runs lists all); epoch_cpu_s / overhead_ratio_cpu: the same in process "
                  "CPU seconds (all threads), which other load on the machine barely changes",
                  "fasttext: families/fasttext/config.json params without search; its epoch_s is fit time / its epochs"],
        "results": results,
    }
    atomic_write_json(output, report)
    click.echo(table(results))
    click.echo(f"\nwrote {output}", err=True)


if __name__ == "__main__":
    sys.exit(main())

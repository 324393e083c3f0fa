"""Benchmark CPU prediction of a MiniLM BERT-family model: PyTorch vs ONNX float32 vs ONNX int8, in one run.

The model is the shipped all-MiniLM-L6-v2 fine-tuned briefly with ``config/bert_smoke.json`` on the first
``--train_rows`` rows of tweets_sentiment (or ``--model_path`` M, a BERT-family model directory);
``textclf export --quantize int8`` writes both ONNX files. Each backend predicts the whole test split
(420 tweets) ``--repeats`` times after one warm-up pass; the table gives docs/s (best pass), the test
accuracy, and the largest probability difference to PyTorch. Target (issue 15): int8 >= 2x PyTorch.
Writes ``benchmarks/results/export.json``::

    python benchmarks/bench_export.py                      # fine-tune, export, measure (~5 min on 2 cores)
    python benchmarks/bench_export.py --model_path /tmp/minilm --keep /tmp/minilm
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import REPO, machine_info, make_echo, usable_cores, utc_now

DATA = REPO / "data" / "tweets_sentiment"
RESULTS = REPO / "benchmarks" / "results" / "export.json"
PACKAGES = ("textclf", "torch", "transformers", "onnx", "onnxruntime", "numpy")
TEXTCLF = Path(sys.executable).parent / "textclf"


def run_cli(*args: str) -> None:
    """Run a textclf command; its output goes to stderr, a failure stops the benchmark."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TEXTCLF_TRACK": "0"}
    subprocess.run([str(TEXTCLF), *args], check=True, env=env, stdout=sys.stderr, timeout=3600)


def prepare_minilm(work: Path, train_rows: int = 600, echo=print) -> Path:
    """A MiniLM BERT-family model fine-tuned on ``train_rows`` tweets with bert_smoke.json, exported to ONNX (int8 too)."""
    from textclf.core.data import read_labelled, write_labelled

    model = work / "minilm"
    if not (model / "meta.json").exists():
        echo(f"fine-tuning MiniLM on {train_rows} tweets (config/bert_smoke.json) -> {model}")
        write_labelled(work / "train.csv", read_labelled(DATA / "train.csv").subset(range(train_rows)))
        write_labelled(work / "valid.csv", read_labelled(DATA / "valid.csv").subset(range(150)))
        run_cli("train", "bert", "--train_path", str(work / "train.csv"), "--valid_path", str(work / "valid.csv"),
                "--output_dir", str(model), "--device", "cpu", "--config", str(REPO / "config" / "bert_smoke.json"),
                "--set", "train.progress=false")
    if not (model / "model.int8.onnx").exists():
        echo("exporting to ONNX (float32 and int8)")
        run_cli("export", "--model_path", str(model), "--format", "onnx", "--quantize", "int8")
    return model


def measure(model: Path, repeats: int, echo, threads: int) -> dict:
    """docs/s, accuracy and max |p - p_torch| of the three backends on the test split, with ``threads`` intra-op threads."""
    import numpy as np
    import torch

    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.core.onnx_runtime import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)
    torch.set_num_threads(threads)
    test = read_labelled(DATA / "test.csv")
    backends = {"torch": load_predictor(model, backend="torch"), "onnx_fp32": load_predictor(model / "model.onnx"),
                "onnx_int8": load_predictor(model / "model.int8.onnx")}
    out, reference = {}, None
    for name, predictor in backends.items():
        predictor.predict_proba(test.texts[:32])  # warm-up
        times, proba = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            proba = predictor.predict_proba(test.texts)
            times.append(time.perf_counter() - start)
        if reference is None:
            reference = proba
        labels = [predictor.labels[i] for i in predictor.decide(proba)]
        out[name] = {"docs_per_s": round(len(test) / min(times), 1), "seconds_best": round(min(times), 3),
                     "accuracy": round(float(np.mean([p == y for p, y in zip(labels, test.labels, strict=True)])), 4),
                     "max_abs_diff_vs_torch": float(np.abs(proba - reference).max()),
                     "file_mb": round((predictor.onnx_file.stat().st_size if hasattr(predictor, "onnx_file") else
                                       sum(p.stat().st_size for p in (model / "encoder").glob("*.safetensors"))) / 1e6, 1)}
        echo(f"{threads} thread(s) {name}: {out[name]}")
    torch_rate = out["torch"]["docs_per_s"]
    for name in out:
        out[name]["speedup_vs_torch"] = round(out[name]["docs_per_s"] / torch_rate, 2)
    return {"threads": threads, "texts": len(test), "repeats": repeats, "backends": out}


def table(results: list[dict]) -> str:
    """A markdown table of :func:`measure`'s results (one block of rows per thread count)."""
    rows = ["| threads | backend | docs/s | × torch | test accuracy | max abs diff of p vs torch | model MB |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for name, r in result["backends"].items():
            rows.append(f"| {result['threads']} | {name} | {r['docs_per_s']:.0f} | {r['speedup_vs_torch']:.2f} | "
                        f"{r['accuracy']:.4f} | {r['max_abs_diff_vs_torch']:.1e} | {r['file_mb']} |")
    return "\n".join(rows)


@click.command()
@click.option("--model_path", type=click.Path(file_okay=False), default=None,
              help="A BERT-family model directory to use (exported here if needed) instead of fine-tuning one.")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Work folder to keep (default: a temp one).")
@click.option("--train_rows", type=int, default=600, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", default=f"1,{usable_cores()}", show_default=True,
              help="Comma-separated intra-op thread counts to measure (torch and ONNX Runtime alike).")
@click.option("--output", type=click.Path(dir_okay=False), default=str(RESULTS), show_default=True)
def main(model_path, keep, train_rows, repeats, threads, output):
    """Torch vs ONNX fp32 vs ONNX int8 CPU prediction speed and accuracy."""
    from textclf.core.atomic import atomic_write_json

    echo = make_echo(show_elapsed=True)
    work = Path(keep or tempfile.mkdtemp(prefix="bench_export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if model_path:
            model = Path(model_path)
            if not (model / "model.int8.onnx").exists():
                run_cli("export", "--model_path", str(model), "--quantize", "int8")
        else:
            model = prepare_minilm(work, train_rows, echo)
        results = [measure(model, repeats, echo, int(n)) for n in dict.fromkeys(threads.split(","))]
        info = json.loads((model / "onnx.json").read_text())
        payload = {"created": utc_now(), "machine": machine_info(PACKAGES),
                   "load_average_1m": os.getloadavg()[0],
                   "model": {"path": str(model), "train_rows": None if model_path else train_rows,
                             "opset": info["opset"], "export_seconds": info.get("seconds")},
                   "results": results, "target": "onnx_int8 docs/s >= 2x torch at the same thread count",
                   "target_met": all(r["backends"]["onnx_int8"]["speedup_vs_torch"] >= 2.0 for r in results)}
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output, payload)
        click.echo(table(results))
        echo(f"wrote {output}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

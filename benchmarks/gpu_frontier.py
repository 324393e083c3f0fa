"""The issue-26 parts of the GPU check (run by benchmarks/gpu_check.sh; runs on the CPU too, for a smoke test).

On one dataset (default tweets_sentiment from the .gpu bundle) it measures, each step in its own subprocess with
a timeout, everything written to ``--output`` after every step:

* **teacher**: a fine-tuned MiniLM (``textclf train bert``, one stage) on ``--device``; its test macro-F1 and
  predict docs/s on that device (the test texts repeated to at least ``--docs`` documents);
* **cascade with a GPU teacher**: a fastText student (CPU) + that teacher, ``textclf cascade`` with tau chosen on
  valid; the cascade's test macro-F1, docs/s and share of texts that reach the teacher, as ratios to the teacher;
* **chunked long-text prediction**: long documents made by joining ``--join`` test texts; predict docs/s of a BERT
  trained with ``model.long_text=chunk`` against the truncating teacher on the same documents (the ratio is what
  reading every window costs).

Usage (GPU machine, after ``source .gpu/setup.sh``)::

    python3 benchmarks/gpu_frontier.py --device cuda --data_root $GPU_DATA --output $OUT/frontier_gpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXTCLF = [sys.executable, "-c", "from textclf.cli import main; main()"]


def textclf(args: list[str], timeout: float) -> tuple[int, str]:
    """Run one textclf command; (exit code, last lines of its output)."""
    try:
        proc = subprocess.run([*TEXTCLF, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return proc.returncode, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])


def head(src: Path, dst: Path, n: int | None) -> Path:
    """The first ``n`` rows of a CSV (all when None)."""
    with open(src, newline="") as fin, open(dst, "w", newline="") as fout:
        reader = csv.reader(fin)
        writer = csv.writer(fout)
        writer.writerow(next(reader))
        for i, row in enumerate(reader):
            if n is not None and i >= n:
                break
            writer.writerow(row)
    return dst


def docs_per_s(predictor, texts: list[str], min_docs: int) -> float:
    """Predict docs/s over ``texts`` repeated to at least ``min_docs`` documents (after one warm-up batch)."""
    predictor.predict_proba(texts[:64])
    n, start = 0, time.perf_counter()
    while n < min_docs:
        predictor.predict_proba(texts)
        n += len(texts)
    return n / (time.perf_counter() - start)


def macro_f1(predictor, texts: list[str], labels: list[str]) -> float:
    """Test macro-F1 of ``predictor`` (scikit-learn's)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictor.predict(texts), average="macro"))


def main() -> int:
    """Run the steps and measures; exit 0 (a failed step is recorded in the JSON, not raised)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data_root", default=os.environ.get("GPU_DATA", "../shared/data"))
    ap.add_argument("--dataset", default="tweets_sentiment")
    ap.add_argument("--output", default="gpu_out/frontier_gpu.json")
    ap.add_argument("--limit", type=int, default=None, help="Rows of each split (smoke test); default all.")
    ap.add_argument("--docs", type=int, default=20000, help="Documents per speed measurement.")
    ap.add_argument("--join", type=int, default=8, help="Test texts joined into one long document.")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--step_timeout", type=float, default=150)
    args = ap.parse_args()
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": args.device, "dataset": args.dataset, "limit": args.limit, "steps": {}}

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=1))

    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor

    src = Path(args.data_root) / args.dataset
    work = Path(tempfile.mkdtemp(prefix="gpu-frontier-"))
    data = {s: head(src / f"{s}.csv", work / f"{s}.csv", args.limit) for s in ("train", "valid", "test")}
    test = read_labelled(data["test"])
    common = ["--train_path", data["train"], "--valid_path", data["valid"], "--test_path", data["test"], "--no-track"]
    bert = ["--set", f"device={args.device!r}".replace("'", '"'), "--set", "two_stage=false", "--set", "model.max_length=64",
            "--set", f"stage2.epochs={args.epochs}", "--set", "output.keep_checkpoints=false"]

    steps = [("teacher", ["train", "bert", *common, "--output_dir", work / "teacher", *bert]),
             ("student", ["train", "fasttext", *common, "--output_dir", work / "student", "--n_trials", "0"]),
             ("cascade", ["cascade", "--student", work / "student", "--teacher", work / "teacher", "--valid_path", data["valid"],
                          "--test_path", data["test"], "--output_dir", work / "cascade"]),
             ("chunk_teacher", ["train", "bert", *common, "--output_dir", work / "chunk", *bert, "--set", 'model.long_text="chunk"',
                                "--set", "stage2.epochs=1"])]
    for name, argv in steps:
        start = time.perf_counter()
        code, tail = textclf(argv, args.step_timeout)
        result["steps"][name] = {"exit": code, "seconds": round(time.perf_counter() - start, 1), "tail": tail}
        print(f"{name}: exit {code} in {result['steps'][name]['seconds']} s", flush=True)
        save()

    measures = result["measures"] = {}
    if result["steps"]["teacher"]["exit"] == 0:
        teacher = load_predictor(work / "teacher")
        measures["teacher"] = {"macro_f1": macro_f1(teacher, test.texts, test.labels),
                               "docs_per_s": docs_per_s(teacher, test.texts, args.docs)}
        save()
        if result["steps"]["cascade"]["exit"] == 0:
            cascade = load_predictor(work / "cascade")
            meta = json.loads((work / "cascade" / "meta.json").read_text())
            c = {"macro_f1": macro_f1(cascade, test.texts, test.labels), "docs_per_s": docs_per_s(cascade, test.texts, args.docs),
                 "tau": meta.get("tau"), "share_to_teacher_valid": meta.get("share_to_teacher"),
                 "share_to_teacher_test": cascade.share_to_teacher}
            c["f1_minus_teacher"] = c["macro_f1"] - measures["teacher"]["macro_f1"]
            c["speed_ratio_to_teacher"] = c["docs_per_s"] / measures["teacher"]["docs_per_s"]
            measures["cascade"] = c
            save()
        long_docs = [" ".join(test.texts[i:i + args.join]) for i in range(0, len(test.texts), args.join)]
        if result["steps"]["chunk_teacher"]["exit"] == 0 and long_docs:
            chunk = load_predictor(work / "chunk")
            n = max(len(long_docs) * 4, args.docs // args.join)
            t_trunc, t_chunk = docs_per_s(teacher, long_docs, n), docs_per_s(chunk, long_docs, n)
            measures["long_text"] = {"documents": len(long_docs), "joined": args.join, "truncate_docs_per_s": t_trunc,
                                     "chunk_docs_per_s": t_chunk, "chunk_speed_ratio": t_chunk / t_trunc}
            save()
    print(json.dumps(measures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark small fastText models by default: ``search.max_model_mb`` 20 vs no size limit (bucket 2,000,000).

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is
skipped with a message) and every seed of ``--seeds``, two fastText runs in fresh processes
(forked from a fork server started before anything loads, see ``bench_common``), both with
the family's default config and ``--n_trials`` search trials (0: the fixed default params):

  unconstrained  ``search.max_model_mb=null``: the historical model (bucket 2,000,000; 200-800 MB);
  default        the default budget of 20 MB (bucket lowered to fit, or the model quantized).

Each is scored on the test split (its meta.json); the size is that of the model file it loads
(``model.bin`` or ``model.ftz``). Target (issue 26): the default model <= 20 MB with test macro-F1
within 0.01 of the unconstrained one on every dataset (mean over the seeds). Prints a markdown
table and writes ``benchmarks/results/small.json`` atomically (after every dataset)::

    python benchmarks/bench_small.py                               # four datasets, seeds 13-15, fixed params, one thread
    python benchmarks/bench_small.py --n_trials 10 --datasets tweets_sentiment
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
from bench_common import (
    DATA_ROOT,
    dataset_paths,
    finish_doc,
    in_child,
    make_echo,
    results_doc,
    results_path,
    start_fork_server,
)

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
PACKAGES = ("textclf", "fasttext-community", "optuna", "numpy")
#: (variant, --set overrides) of the two runs per dataset and seed
VARIANTS = (("unconstrained", ["search.max_model_mb=null"]), ("default", []))
BUDGET_MB = 20.0
TOLERANCE = 0.01


def run_job(paths: dict, out: str, seed: int, n_trials: int, overrides: list[str]) -> dict:
    """One fastText training through the run service (no tracking); its test macro-F1, size and time."""
    import json
    import logging

    logging.disable(logging.INFO)
    from textclf.services.runs import RunSpec, train

    sets = [f"seed={seed}", f"search.n_trials={n_trials}", *overrides]
    started = time.perf_counter()
    train(RunSpec("fasttext", paths["train"], paths["valid"], out, paths["test"], overrides=sets, track=False))
    seconds = time.perf_counter() - started
    meta = json.loads((Path(out) / "meta.json").read_text())
    size = meta.get("size") or {}
    return {"test_macro_f1": meta["metrics"]["test"]["macro_f1"], "valid_macro_f1": meta["metrics"]["valid"]["macro_f1"],
            "model_file": meta["model_file"], "model_mb": round((Path(out) / meta["model_file"]).stat().st_size / 2**20, 3),
            "bucket": meta["params"].get("bucket"), "dim": meta["params"].get("dim"), "action": size.get("action"),
            "quantized": size.get("quantized"), "seconds": round(seconds, 1)}


def summarize(rows: list[dict]) -> dict:
    """Per variant: mean test macro-F1 and the largest model over the seeds; the target check."""
    out: dict = {}
    for variant, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {"test_macro_f1": sum(r["test_macro_f1"] for r in mine) / len(mine),
                        "max_model_mb": max(r["model_mb"] for r in mine),
                        "seconds": sum(r["seconds"] for r in mine) / len(mine)}
    gap = out["default"]["test_macro_f1"] - out["unconstrained"]["test_macro_f1"]
    out["delta_f1"] = gap
    out["target_met"] = bool(out["default"]["max_model_mb"] <= BUDGET_MB and gap >= -TOLERANCE)
    return out


def table(results: dict) -> str:
    """The markdown table of every dataset's summary."""
    lines = ["| dataset | unconstrained F1 | MB | default F1 | MB | how | delta F1 | <= 20 MB, within 0.01 |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for name, res in results.items():
        s = res["summary"]
        how = sorted({r["action"] + (f" (dim {r['dim']}, bucket {r['bucket']:,})" if r["action"] in ("bucket", "dim") else "")
                      for r in res["runs"] if r["variant"] == "default"})
        lines.append(f"| {name} | {s['unconstrained']['test_macro_f1']:.4f} | {s['unconstrained']['max_model_mb']:.0f} "
                     f"| {s['default']['test_macro_f1']:.4f} | {s['default']['max_model_mb']:.1f} | {', '.join(how)} "
                     f"| {s['delta_f1']:+.4f} | {'yes' if s['target_met'] else 'NO'} |")
    return "\n".join(lines)


@click.command()
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--datasets", default=",".join(DATASETS), show_default=True)
@click.option("--seeds", default="13,14,15", show_default=True, help="Seeds, one run of each variant per seed.")
@click.option("--n_trials", default=0, show_default=True, help="Search trials per run (0: the fixed default params).")
@click.option("--threads", default=1, show_default=True,
              help="fastText threads (1: a seed gives the same model whatever the machine's load; Hogwild! with more).")
@click.option("--output", default=None, help="Results JSON (default benchmarks/results/small.json).")
def main(data_root, datasets, seeds, n_trials, threads, output) -> None:
    """Default (20 MB) vs unconstrained fastText on the shared datasets: test macro-F1 and model size."""
    start_fork_server()
    echo = make_echo(show_elapsed=True)
    seeds = [int(s) for s in seeds.split(",") if s]
    out_path = results_path(output, "small")
    doc = results_doc("small", {"datasets": datasets, "seeds": seeds, "n_trials": n_trials, "threads": threads,
                                "budget_mb": BUDGET_MB,
                                "tolerance": TOLERANCE}, PACKAGES, results={})
    for name in [d for d in datasets.split(",") if d]:
        paths = dataset_paths(data_root, name)
        if paths is None:
            echo(f"{name}: not under {data_root}, skipped")
            continue
        rows = []
        for seed in seeds:
            for variant, overrides in VARIANTS:
                with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
                    row = in_child(run_job, paths, str(Path(tmp) / "model"), seed, n_trials,
                                   [f"model.thread={threads}", *overrides])
                rows.append({"variant": variant, "seed": seed, **row})
                echo(f"{name} seed {seed} {variant}: test macro-F1 {row['test_macro_f1']:.4f}, {row['model_mb']:.1f} MB "
                     f"({row['model_file']}, {row['action']}), {row['seconds']:.0f} s")
        doc["results"][name] = {"runs": rows, "summary": summarize(rows)}
        finish_doc(out_path, doc, table(doc["results"]))
    click.echo(table(doc["results"]))
    met = all(r["summary"]["target_met"] for r in doc["results"].values())
    click.echo(f"\ntarget (<= {BUDGET_MB:g} MB, macro-F1 within {TOLERANCE} on every dataset): {'met' if met else 'NOT met'}")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Label-noise recovery benchmark of ``textclf audit`` (issue 25): the ``audit`` section of ``bench_trust.py``.

For each shared dataset (tweets_sentiment, movie_review_sentences, bbc_news, spamassassin; a missing
one is skipped), train is subsampled (stratified, ``--max_train`` rows, fixed seed; valid, which is
only scored since nothing searches, to ``--max_valid``; test is whole) and, for each
noise level (5 % and 10 %), that share of its labels is flipped to another class at random (fixed
seed). Then:

* **audit**: fastText + embeddings (MiniLM + logistic regression), 5-fold out-of-fold
  probabilities averaged, every row ranked by cleanlab's self-confidence label quality
  (:func:`textclf.services.audit.rank.quality_order`); recall of the flipped rows among the top N
  (N = number flipped). **Baseline**: cleanlab with one model's out-of-fold probabilities (the
  same folds), for each of the two families: the multi-family audit must beat it.
* **retrain**: both families (defaults, no search) on the clean, the noisy and the corrected
  train, scored on the test split (macro-F1). *Corrected* = a reviewer goes through the audit's
  top-N suggestions and relabels those that really are wrong (to their true label), keeping the
  rest; *flagged reviewed* = the same reviewer goes through every row cleanlab flags;
  *auto* = every row cleanlab flags is relabelled to the suggestion with no review. Recovery
  = (F1 corrected - F1 noisy) / (F1 clean - F1 noisy), for the best family of each condition.

Targets: recall@N >= 0.6 at 10 % noise averaged over the datasets; recovery >= 0.5 averaged over
the datasets; the multi-family recall above each single-model baseline.

Run: ``python benchmarks/bench_trust_audit.py`` (``make bench_trust_audit``). The hook for
``bench_trust.py --section audit``::

    if "audit" in sections:
        from bench_trust_audit import run as run_audit
        run_audit(data_root, max_train=max_train, memo_dir=memo_dir)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DATA_ROOT, dataset_paths, finish_doc, make_echo, results_doc, results_path  # noqa: E402

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
FAMILIES = ("fasttext", "embeddings")
PACKAGES = ("textclf", "cleanlab", "scikit-learn", "fasttext-wheel", "sentence-transformers", "torch")


def flip_labels(labels: list[str], share: float, seed: int) -> tuple[list[str], list[int]]:
    """``labels`` with ``share`` of them (rounded) flipped to another class chosen at random; and the flipped rows."""
    rng = random.Random(seed)
    classes = sorted(set(labels))
    rows = sorted(rng.sample(range(len(labels)), round(share * len(labels))))
    out = list(labels)
    for i in rows:
        out[i] = rng.choice([c for c in classes if c != out[i]])
    return out, rows


def subsample(ds, n: int, seed: int):
    """A stratified subsample of ``n`` rows (all when ``n`` is 0 or the data is smaller)."""
    if not n or len(ds) <= n:
        return ds
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(ds)), train_size=n, stratify=ds.labels, random_state=seed)
    return ds.subset(sorted(keep.tolist()))


def recall_at_n(order: np.ndarray, flipped: list[int]) -> float:
    """Share of the flipped rows among the first ``len(flipped)`` rows of ``order``."""
    return len(set(order[: len(flipped)].tolist()) & set(flipped)) / max(len(flipped), 1)


def test_f1(family: str, train, valid, test, seed: int) -> float:
    """Test macro-F1 of ``family`` (audit's defaults: no search) trained on ``train`` through the core fit flow."""
    from textclf.core.config import load_config
    from textclf.core.fit_flow import fit_family
    from textclf.core.registry import get_family
    from textclf.core.tempfiles import owned_temp_dir
    from textclf.core.training import Splits
    from textclf.services.audit.oof import family_overrides

    cfg = load_config(family, None, [f"seed={seed}", *family_overrides(family, ())])
    splits = Splits(train, valid, test, train.label_set, f"bench-{family}", {"train": "train", "valid": "valid", "test": "test"},
                    [train])
    with owned_temp_dir("textclf-bench-audit-") as tmp:
        result = fit_family(get_family(family), cfg, splits, tmp, echo=False, plots=False)
    return float(result.meta["metrics"]["test"]["macro_f1"])


def corrected(ds, rows, true: list[str]):
    """A reviewer's fix: of ``rows`` (the suggestions reviewed), those really wrong get their true label; the rest are kept."""
    labels = list(ds.labels)
    for i in rows:
        labels[i] = true[i]
    return type(ds)(ds.texts, labels, ds.path, ds.line_numbers, ds.task)


def auto_fixed(ds, issues):
    """Every cleanlab label issue relabelled to its suggestion, no review."""
    labels = list(ds.labels)
    for issue in issues:
        if issue.kind == "label_issue":
            labels[issue.row] = issue.suggested
    return type(ds)(ds.texts, labels, ds.path, ds.line_numbers, ds.task)


def run_dataset(name: str, paths: dict, noise_levels, max_train: int, folds: int, seed: int, echo,
                memo_dir: str | None = None, max_valid: int = 250) -> dict:
    """Every measurement of one dataset."""
    from textclf.core.data import Dataset, read_labelled
    from textclf.services.audit.rank import quality_order
    from textclf.services.audit.run import audit_data

    clean = subsample(read_labelled(paths["train"]), max_train, seed)
    valid, test = subsample(read_labelled(paths["valid"]), max_valid, seed), read_labelled(paths["test"])
    out = {"valid_rows": len(valid),
           "train_rows": len(clean), "train_rows_full": len(read_labelled(paths["train"])), "classes": len(clean.label_set)}
    start = time.monotonic()
    out["clean_f1"] = {f: test_f1(f, clean, valid, test, seed) for f in FAMILIES}
    echo(f"{name}: clean test macro-F1 {out['clean_f1']} ({time.monotonic() - start:.0f}s)")
    for share in noise_levels:
        noisy_labels, flipped = flip_labels(clean.labels, share, seed)
        noisy = Dataset(clean.texts, noisy_labels, clean.path, clean.line_numbers, clean.task)
        t0 = time.monotonic()
        result = audit_data(noisy, FAMILIES, folds, seed, data_sha256=f"bench-{name}-{share}-{max_train}",
                            memo_dir=Path(memo_dir) / name if memo_dir else None)
        audit_s = time.monotonic() - t0
        index = {label: j for j, label in enumerate(result.labels)}
        given = np.array([index[label] for label in noisy.labels])
        order = quality_order(given, result.proba)
        row = {"noise": share, "flipped": len(flipped), "audit_seconds": round(audit_s, 1),
               "recall_at_n": recall_at_n(order, flipped),
               "baseline_recall_at_n": {f: recall_at_n(quality_order(given, p / np.clip(p.sum(1, keepdims=True), 1e-12, None)),
                                                       flipped) for f, p in result.family_proba.items()},
               "flagged": sum(i.kind == "label_issue" for i in result.issues),
               "flagged_precision": (sum(i.row in set(flipped) for i in result.issues if i.kind == "label_issue")
                                     / max(1, sum(i.kind == "label_issue" for i in result.issues)))}
        row["noisy_f1"] = {f: test_f1(f, noisy, valid, test, seed) for f in FAMILIES}
        top_n = order[: len(flipped)].tolist()
        flagged = [i.row for i in result.issues if i.kind == "label_issue"]
        row["corrected_f1"] = {f: test_f1(f, corrected(noisy, top_n, clean.labels), valid, test, seed) for f in FAMILIES}
        row["reviewed_flagged_f1"] = {f: test_f1(f, corrected(noisy, flagged, clean.labels), valid, test, seed) for f in FAMILIES}
        row["auto_f1"] = {f: test_f1(f, auto_fixed(noisy, result.issues), valid, test, seed) for f in FAMILIES}
        best = {k: max(row[k].values()) for k in ("noisy_f1", "corrected_f1", "reviewed_flagged_f1", "auto_f1")}
        best_clean = max(out["clean_f1"].values())
        cost = best_clean - best["noisy_f1"]
        row["noise_cost"] = cost
        row["recovery"] = (best["corrected_f1"] - best["noisy_f1"]) / cost if cost > 1e-9 else None
        row["auto_recovery"] = (best["auto_f1"] - best["noisy_f1"]) / cost if cost > 1e-9 else None
        row["flagged_recovery"] = (best["reviewed_flagged_f1"] - best["noisy_f1"]) / cost if cost > 1e-9 else None
        out[f"noise_{int(share * 100)}"] = row
        echo(f"{name} {share:.0%}: recall@N {row['recall_at_n']:.3f} (single {row['baseline_recall_at_n']}), "
             f"F1 clean {best_clean:.4f} noisy {best['noisy_f1']:.4f} corrected {best['corrected_f1']:.4f} "
             f"auto {best['auto_f1']:.4f} ({time.monotonic() - start:.0f}s)")
    return out


def fmt(x, spec=".3f") -> str:
    """A number for the table; None: ``-``."""
    return "-" if x is None else format(x, spec)


def table(results: dict, noise_levels) -> str:
    """The markdown table of README.md."""
    lines = ["| dataset (train rows used / full) | noise | recall@N audit (ft+emb) | cleanlab single: fastText | "
             "single: embeddings | flagged (precision) | test macro-F1 clean / noisy / top-N reviewed / flagged reviewed / auto "
             "(best family) | recovery top-N | recovery flagged | recovery auto |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for share in noise_levels:
            row = r[f"noise_{int(share * 100)}"]
            best = {k: max(row[k].values()) for k in ("noisy_f1", "corrected_f1", "reviewed_flagged_f1", "auto_f1")}
            lines.append(f"| {name} ({r['train_rows']} / {r['train_rows_full']}) | {share:.0%} | {row['recall_at_n']:.3f} | "
                         f"{row['baseline_recall_at_n']['fasttext']:.3f} | {row['baseline_recall_at_n']['embeddings']:.3f} | "
                         f"{row['flagged']} ({row['flagged_precision']:.2f}) | "
                         f"{max(r['clean_f1'].values()):.4f} / {best['noisy_f1']:.4f} / {best['corrected_f1']:.4f} / "
                         f"{best['reviewed_flagged_f1']:.4f} / {best['auto_f1']:.4f} | {fmt(row['recovery'], '.2f')} | "
                         f"{fmt(row['flagged_recovery'], '.2f')} | {fmt(row['auto_recovery'], '.2f')} |")
    return "\n".join(lines)


def summary(results: dict, noise_levels) -> dict:
    """Averages over the datasets and the targets' verdicts."""
    out = {}
    for share in noise_levels:
        key = f"noise_{int(share * 100)}"
        rows = [r[key] for r in results.values() if key in r]
        if not rows:
            continue
        rec = [x["recovery"] for x in rows if x["recovery"] is not None]
        out[key] = {"recall_at_n_mean": float(np.mean([x["recall_at_n"] for x in rows])),
                    "baseline_recall_at_n_mean": {f: float(np.mean([x["baseline_recall_at_n"][f] for x in rows])) for f in FAMILIES},
                    "recovery_mean": float(np.mean(rec)) if rec else None,
                    "auto_recovery_mean": float(np.mean([x["auto_recovery"] for x in rows if x["auto_recovery"] is not None]))
                    if rec else None,
                    "flagged_recovery_mean": float(np.mean([x["flagged_recovery"] for x in rows
                                                            if x.get("flagged_recovery") is not None])) if rec else None,
                    "noise_cost_mean": float(np.mean([x["noise_cost"] for x in rows])),
                    "recovered_mean": float(np.mean([max(x["corrected_f1"].values()) - max(x["noisy_f1"].values()) for x in rows]))}
        s = out[key]
        s["beats_every_single_model"] = all(s["recall_at_n_mean"] > v for v in s["baseline_recall_at_n_mean"].values())
    if "noise_10" in out:
        out["targets"] = {"recall_at_n_10pct_ge_0.6": out["noise_10"]["recall_at_n_mean"] >= 0.6,
                          "recovery_ge_0.5": (out["noise_10"]["recovery_mean"] or 0) >= 0.5,
                          "beats_single_model_baseline": out["noise_10"]["beats_every_single_model"]}
    return out


def run(data_root: str | Path = DATA_ROOT, output: str | Path | None = None, datasets=DATASETS, noise_levels=(0.05, 0.10),
        max_train: int = 2000, folds: int = 5, seed: int = 13, memo_dir: str | None = None, max_valid: int = 250) -> dict:
    """The audit section: every dataset, results JSON (``benchmarks/results/trust_audit.json``) written after each."""
    echo = make_echo(show_elapsed=True)
    out_path = results_path(output, "trust_audit")
    settings = {"datasets": list(datasets), "noise_levels": list(noise_levels), "max_train": max_train, "max_valid": max_valid,
                "folds": folds,
                "seed": seed, "families": list(FAMILIES)}
    doc = results_doc("trust_audit", settings, PACKAGES, results={})
    doc["command"] = " ".join(["python", "benchmarks/bench_trust_audit.py", *sys.argv[1:]])
    for name in datasets:
        paths = dataset_paths(data_root, name)
        if paths is None:
            echo(f"{name}: not under {data_root}, skipped")
            continue
        doc["results"][name] = run_dataset(name, paths, noise_levels, max_train, folds, seed, echo, memo_dir, max_valid)
        doc["summary"] = summary(doc["results"], noise_levels)
        finish_doc(out_path, doc, table(doc["results"], noise_levels))
    click.echo(doc.get("table_markdown", ""))
    click.echo(json.dumps(doc.get("summary", {}), indent=2))
    return doc


@click.command()
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--output", default=None, help="Results JSON (default benchmarks/results/trust_audit.json).")
@click.option("--dataset", "datasets", multiple=True, help="Only these datasets (repeatable).")
@click.option("--max_train", default=2000, show_default=True, help="Subsample train to this many rows (0: all).")
@click.option("--folds", default=5, show_default=True)
@click.option("--seed", default=13, show_default=True)
@click.option("--max_valid", default=250, show_default=True,
              help="Subsample valid (only scored, never used to fit: no search) to this many rows (0: all).")
@click.option("--memo_dir", default=None, help="Keep the out-of-fold probabilities here (a rerun refits nothing).")
def main(data_root, output, datasets, max_train, max_valid, folds, seed, memo_dir) -> None:
    """Label-noise recovery of textclf audit (fastText + embeddings) vs cleanlab single-model baselines."""
    run(data_root, output, datasets or DATASETS, (0.05, 0.10), max_train, folds, seed, memo_dir, max_valid)


if __name__ == "__main__":
    main()

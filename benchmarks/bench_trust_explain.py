"""Benchmark explanations with the deletion test (issue 25, "Explanations"), on tweets_sentiment.

For every family: train it on the train split (no search: the family's defaults; ``--train_size``
keeps the first N rows), explain the first ``--n_texts`` test texts of at least ``--min_tokens``
tokens toward their predicted label (``textclf explain``'s default method for the family), then

  top-3     remove the 3 tokens with the largest attributions and predict again;
  random-3  remove 3 tokens drawn at random (``--draws`` draws a text, seeded) and predict again.

Target: the prediction changes more often after removing the top-3 tokens than after removing 3
random ones, for every family (``flip_top3 > flip_random3``; ``ratio`` = their quotient). Both
deletions work on the explanation's own tokens joined with spaces (the words for occlusion and the
linear model, the BiLSTM's tokens, BERT's words), so the only difference between the two rows is
which tokens go. The mean drop in the predicted label's probability is reported beside the flip rates,
and the seconds spent explaining per text (this machine, informative only). Rows whose method is not the
family's default (``occlusion`` for the TF-IDF and BiLSTM models) compare methods on the same model.

``run(...)`` returns the results document; ``main`` writes ``benchmarks/results/trust_explain.json``
(atomically) and prints the markdown table::

    python benchmarks/bench_trust_explain.py                                   # fastText, embeddings, TF-IDF, BiLSTM
    python benchmarks/bench_trust_explain.py --families bert,setfit --train_size 800 --n_texts 100 --append
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, finish_doc, make_echo, results_doc, results_path  # noqa: E402

DATA = REPO / "data" / "tweets_sentiment"
TFIDF_PLUGIN = REPO / "examples" / "plugins" / "tfidf_logreg.py"
FAMILIES = ("fasttext", "embeddings", "tfidf_logreg", "lstm")
#: extra ``textclf train`` arguments per family (no search: the defaults; small where the CPU is slow)
TRAIN_ARGS = {
    "fasttext": ["--set", "search.n_trials=0", "--set", "model.bucket=200000"],
    "embeddings": ["--set", "search.n_trials=0", "--set", "classifier=logreg", "--device", "cpu"],
    "tfidf_logreg": ["--set", "search.n_trials=0"],
    "lstm": ["--set", "search.n_trials=0", "--device", "cpu", "--epochs", "6", "--batch_size", "64",
             "--set", "model.hidden_size=64", "--set", "model.embedding_dim=64"],
    "bert": ["--set", "search.n_trials=0", "--device", "cpu", "--one_stage", "--set", "stage2.epochs=2",
             "--max_length", "64"],
    "setfit": ["--set", "search.n_trials=0", "--device", "cpu", "--per_class", "64"],
}
#: method rows per family beyond the default one (the same model, explained another way)
ALSO = {"tfidf_logreg": ("occlusion",), "lstm": ("occlusion",)}
PACKAGES = ("fasttext-community", "scikit-learn", "torch", "captum", "sentence-transformers", "transformers")


def head_csv(src: Path, dst: Path, n: int | None) -> Path:
    """The header and first ``n`` rows of a CSV (all rows for None)."""
    import csv

    with src.open(newline="") as fh, dst.open("w", newline="") as out:
        rows = csv.reader(fh)
        w = csv.writer(out)
        for i, row in enumerate(rows):
            if n is not None and i > n:
                break
            w.writerow(row)
    return dst


def train(family: str, data: dict, out: Path) -> float:
    """``textclf train FAMILY`` into ``out``; returns the seconds it took."""
    from click.testing import CliRunner

    from textclf.cli import cli

    code = ["--code", str(TFIDF_PLUGIN)] if family == "tfidf_logreg" else []
    args = ["train", *code, family, "--train_path", str(data["train"]), "--valid_path", str(data["valid"]),
            "--test_path", str(data["test"]), "--output_dir", str(out), *TRAIN_ARGS[family]]
    start = time.perf_counter()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"training {family} failed: {result.output[-2000:]}")
    return time.perf_counter() - start


def deletion_test(predictor, texts: list[str], method: str, draws: int, seed: int, min_tokens: int) -> dict:
    """Explain ``texts``, delete the top-3 / 3 random tokens, and count how often the prediction changes."""
    from textclf.core.explanation import join_without
    from textclf.services.explain import explain_texts

    start = time.perf_counter()
    explanations = explain_texts(predictor, texts, method=method)
    seconds = time.perf_counter() - start
    rng = random.Random(seed)
    kept = [e for e in explanations if len(e.tokens) >= min_tokens]
    top, rand, owners = [], [], []
    for k, e in enumerate(kept):
        top.append(join_without(e.tokens, e.top(3)))
        for _ in range(draws):
            rand.append(join_without(e.tokens, rng.sample(range(len(e.tokens)), 3)))
            owners.append(k)
    labels = predictor.labels
    target = np.array([labels.index(e.label) for e in kept])
    base = np.array([e.probability for e in kept])
    p_top, p_rand = predictor.predict_proba(top), predictor.predict_proba(rand)
    flip_top = np.asarray(predictor.decide(p_top)) != target
    flip_rand = (np.asarray(predictor.decide(p_rand)) != target[owners]).reshape(len(kept), draws).mean(axis=1)
    drop_top = base - p_top[np.arange(len(kept)), target]
    drop_rand = (base[owners] - p_rand[np.arange(len(owners)), target[owners]]).reshape(len(kept), draws).mean(axis=1)
    ft, fr = float(flip_top.mean()), float(flip_rand.mean())
    return {"method": explanations[0].attribution.method if explanations else method, "n_texts": len(kept),
            "flip_top3": round(ft, 4), "flip_random3": round(fr, 4), "ratio": round(ft / fr, 2) if fr else None,
            "drop_top3": round(float(drop_top.mean()), 4), "drop_random3": round(float(drop_rand.mean()), 4),
            "explain_s_per_text": round(seconds / max(1, len(texts)), 4), "pass": ft > fr}


def run(families=FAMILIES, n_texts: int = 300, train_size: int | None = None, min_tokens: int = 6, draws: int = 5,
        seed: int = 13, data_dir: Path = DATA, echo=print, on_row=None) -> dict:
    """Train every family on ``data_dir`` and run the deletion test on its test texts; the results document.

    ``on_row(doc)`` (optional) is called after every row, so a long run keeps what it measured.
    """
    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor

    settings = {"dataset": data_dir.name, "families": list(families), "n_texts": n_texts, "train_size": train_size,
                "min_tokens": min_tokens, "draws": draws, "seed": seed, "train_args": {f: TRAIN_ARGS[f] for f in families},
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    doc = results_doc("trust_explain", settings, PACKAGES, rows=[])
    with tempfile.TemporaryDirectory(prefix="bench_explain_") as tmp:
        root = Path(tmp)
        os.environ["TEXTCLF_CACHE"] = str(root / "cache")  # occlusion variants stay out of the user's embedding cache
        data = {"train": head_csv(data_dir / "train.csv", root / "train.csv", train_size),
                "valid": data_dir / "valid.csv", "test": data_dir / "test.csv"}
        test = read_labelled(data["test"], None, "text", "label", min_classes=0)
        texts = [t for t in test.texts if len(t.split()) >= min_tokens][:n_texts]
        for family in families:
            echo(f"{family}: training")
            seconds = train(family, data, root / family)
            predictor = load_predictor(root / family)
            for method in ("auto", *ALSO.get(family, ())):
                echo(f"{family}: deletion test ({method})")
                row = {"family": family, "train_size": train_size or "all", "train_s": round(seconds, 1),
                       "test_macro_f1": predictor.meta.get("metrics", {}).get("test", {}).get("macro_f1"),
                       **deletion_test(predictor, texts, method, draws, seed, min_tokens)}
                doc["rows"].append(row)
                echo(f"  {row}")
                if on_row is not None:
                    on_row(doc)
    doc["all_pass"] = all(r["pass"] for r in doc["rows"])
    return doc


def table(doc: dict) -> str:
    """The markdown table of a results document."""
    lines = ["| family | method | train rows | texts | flip top-3 | flip random-3 | ratio | p drop top-3 | p drop random-3 | "
             "explain s/text | test macro-F1 | top-3 > random-3 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        f1 = "-" if r["test_macro_f1"] is None else f"{r['test_macro_f1']:.3f}"
        cells = [r["family"], r["method"], r.get("train_size", "all"), r["n_texts"], f"{r['flip_top3']:.3f}",
                 f"{r['flip_random3']:.3f}", r["ratio"], f"{r['drop_top3']:.3f}", f"{r['drop_random3']:.3f}",
                 r["explain_s_per_text"], f1, "yes" if r["pass"] else "NO"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--families", default=",".join(FAMILIES), show_default=True, help="Comma-separated: " + ", ".join(TRAIN_ARGS))
@click.option("--n_texts", type=int, default=300, show_default=True, help="Test texts explained.")
@click.option("--train_size", type=int, default=None, help="Train on the first N rows only (default: all).")
@click.option("--min_tokens", type=int, default=6, show_default=True, help="Only texts with at least this many words.")
@click.option("--draws", type=int, default=5, show_default=True, help="Random deletions a text.")
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Results JSON (default: benchmarks/results/).")
@click.option("--append", is_flag=True,
              help="Keep the rows of the families not run now from the existing results file (their run is listed in 'earlier').")
def main(families, n_texts, train_size, min_tokens, draws, seed, output, append):
    """The deletion test of textclf explain for every family on tweets_sentiment."""
    import json

    path = results_path(output, "trust_explain")
    earlier = json.loads(path.read_text()) if append and path.exists() else None

    def write(doc: dict) -> None:
        if earlier is not None:
            doc = {**doc, "rows": [r for r in earlier["rows"] if r["family"] not in doc["settings"]["families"]] + doc["rows"],
                   "earlier": [*earlier.get("earlier", []),
                               {k: earlier.get(k) for k in ("command", "started", "finished", "settings")}]}
        doc["all_pass"] = all(r["pass"] for r in doc["rows"])
        finish_doc(path, doc, table(doc))

    doc = run(tuple(f for f in families.split(",") if f), n_texts, train_size, min_tokens, draws, seed, echo=make_echo(),
              on_row=write)
    write(doc)
    doc = json.loads(path.read_text())
    click.echo(doc["table_markdown"])
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    main()

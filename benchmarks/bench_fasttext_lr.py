"""fastText's learning rate with no search: fixed rates against ``model.lr: "auto"`` on the shared datasets.

fastText averages a text's word vectors, so a word's update is the learning rate divided by the text's length;
``auto`` (:func:`textclf.families.fasttext.model.auto_lr`) raises the rate with the mean token count. Each rate
trains fastText once per dataset with the family's other defaults (dim 100, ``wordNgrams`` 2, 25 epochs, softmax)
at bucket 200,000, one thread, seed 13, on the training file textclf writes, and scores valid and test macro-F1
(the texts folded to fastText lines as the family's Predictor folds them).

Run: ``make bench_fasttext_lr`` (``python benchmarks/bench_fasttext_lr.py``); results in
``benchmarks/results/fasttext_lr.json`` with a markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DATA_ROOT, dataset_paths, finish_doc, make_echo, results_doc, results_path  # noqa: E402

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
RATES = (0.1, 0.25, 0.5, 1.0)
PACKAGES = ("textclf", "fasttext-community", "scikit-learn")


def run_dataset(paths: dict, rates, seed: int) -> dict:
    """Valid/test macro-F1 of each fixed rate and of ``auto`` on one dataset."""
    from sklearn.metrics import f1_score

    import fasttext
    from textclf.core.data import read_labelled
    from textclf.core.tempfiles import owned_temp_dir
    from textclf.families.fasttext.model import auto_lr, fasttext_lines, mean_tokens, write_training_file

    train, valid, test = (read_labelled(paths[s]) for s in ("train", "valid", "test"))
    labels = train.label_set
    auto = auto_lr(train.texts)
    out = {"mean_tokens": round(mean_tokens(train.texts), 1), "auto_lr": auto, "rates": {}}
    with owned_temp_dir("textclf-bench-lr-") as tmp:
        train_file = Path(tmp) / "train.txt"
        write_training_file(train, labels, train_file, None)
        for lr in sorted({*rates, auto}):
            start = time.perf_counter()
            model = fasttext.train_supervised(input=str(train_file), lr=lr, epoch=25, wordNgrams=2, dim=100,
                                              bucket=200_000, thread=1, seed=seed, verbose=0)
            row = {"train_s": round(time.perf_counter() - start, 1)}
            for name, ds in (("valid", valid), ("test", test)):
                predicted, _ = model.predict(fasttext_lines(ds.texts), k=1)
                pred = [labels[int(p[0].removeprefix("__label__"))] for p in predicted]
                row[name] = round(float(f1_score(ds.labels, pred, average="macro")), 4)
            out["rates"][str(lr)] = row
    return out


def table(results: dict, rates) -> str:
    """Markdown: test (valid) macro-F1 per rate and dataset, and ``auto``'s rate and score."""
    head = "| dataset | mean tokens | " + " | ".join(f"lr {r}" for r in rates) + " | auto: lr | auto: test (valid) |"
    lines = [head, "|---|---:|" + "---:|" * len(rates) + "---:|---:|"]
    for name, r in results.items():
        cells = [f"{r['rates'][str(x)]['test']:.4f} ({r['rates'][str(x)]['valid']:.4f})" for x in rates]
        a = r["rates"][str(r["auto_lr"])]
        lines.append(f"| {name} | {r['mean_tokens']} | " + " | ".join(cells)
                     + f" | {r['auto_lr']} | {a['test']:.4f} ({a['valid']:.4f}) |")
    return "\n".join(lines)


@click.command()
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--datasets", default=",".join(DATASETS), show_default=True)
@click.option("--seed", default=13, show_default=True)
@click.option("--output", default=None, help="Results JSON (default benchmarks/results/fasttext_lr.json).")
def main(data_root, datasets, seed, output) -> None:
    """fastText with no search at fixed learning rates and at lr "auto", on the shared datasets."""
    echo = make_echo(show_elapsed=True)
    out_path = results_path(output, "fasttext_lr")
    doc = results_doc("fasttext_lr", {"datasets": datasets.split(","), "rates": list(RATES), "seed": seed,
                                      "params": {"epoch": 25, "wordNgrams": 2, "dim": 100, "bucket": 200_000, "thread": 1}},
                      PACKAGES, results={})
    for name in datasets.split(","):
        paths = dataset_paths(data_root, name)
        if paths is None:
            echo(f"{name}: not under {data_root}, skipped")
            continue
        doc["results"][name] = run_dataset(paths, RATES, seed)
        echo(f"{name}: {doc['results'][name]}")
        finish_doc(out_path, doc, table(doc["results"], RATES))
    click.echo(doc.get("table_markdown", ""))


if __name__ == "__main__":
    main()

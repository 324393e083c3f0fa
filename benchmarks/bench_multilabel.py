"""Benchmark the multi-label families on disaster_response: global vs per-label thresholds (issue 24).

Reads ``<data_root>/disaster_response/{train,valid,test}.jsonl`` (default ``<repo>/../shared/data``;
the data set's licence is not stated upstream: it is read from there, never copied into the
repository). Each job runs in a fresh process forked from a fork server started before anything
loads (its peak RSS is its own; see ``bench_common``):

  train        every model of ``MODELS`` through the run service (``textclf.services.runs.fit_family``,
               what ``textclf train`` runs): fastText (settings chosen on valid, see docs/multilabel.md, and an
               Optuna search of ``--ft_budget_s`` seconds), embeddings (MiniLM or TF-IDF + SVD, with
               one-vs-rest logreg or scikit-learn's multi-output MLP), the BiLSTM (``--lstm_epochs``
               epochs), BERT (the shipped MiniLM fine-tuned, ``--bert_epochs``), SetFit (one pair per text)
               and the example plug-in ``examples/plugins/tfidf_logreg.py`` (sparse TF-IDF + one-vs-rest logreg);
  thresholds   on valid, what ``textclf tune-thresholds --beta 1`` computes
               (``services/compare/label_thresholds.py``): one global threshold, then one per label
               (``--cv 5`` out-of-fold check recorded);
  score        test micro-, macro- and samples-F1 at the untuned 0.5, at the tuned global threshold and at
               the tuned per-label thresholds (``core.metrics.multilabel_metrics``);
  ensemble     ``textclf ensemble --method weighted`` of the ``--ensemble_size`` (3) models best on valid micro-F1
               (at 0.5), scored the same way.

``--keep DIR --reuse`` skips training a model whose directory under DIR was trained with the same
overrides on the same files (its ``bench_train.json``); its thresholds are tuned and scored again.

The baseline of the ratios is TF-IDF + SVD + logreg of the same run. Targets (issue 24): the best model's
micro-F1 >= 0.75 and macro-F1 >= 0.55; every family's micro-F1 >= 0.70; per-label >= global thresholds on
test micro-F1 averaged over the models. Prints a markdown table and writes
``benchmarks/results/multilabel.json`` atomically (after every model)::

    python benchmarks/bench_multilabel.py                       # full data, every model: hours on 2 cores
    python benchmarks/bench_multilabel.py --rows 3000           # the first 3,000 training rows
    python benchmarks/bench_multilabel.py --models fasttext,tfidf_logreg
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import bench_common
import click
from bench_common import DATA_ROOT, RSS_NOTE, in_child, make_echo, peak_rss_mb, results_doc, results_path, start_fork_server

PACKAGES = ("textclf", "fasttext-community", "torch", "sentence-transformers", "scikit-learn", "optuna", "numpy")
DATASET = "disaster_response"
BASELINE = "tfidf_logreg"
PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "tfidf_logreg.py"
#: name -> (family, config overrides[, plug-in code file]); ``{ft_budget_s}`` etc. come from the options
MODELS = {
    "fasttext": ("fasttext", ["model.lr=0.8", "model.epoch=10", "model.wordNgrams=2", "model.dim=50", "model.minn=2",
                              "model.maxn=5",
                              "model.bucket=200000", "text.lowercase=true", r"text.pattern=[\w']+|[^\w\s]",
                              "search.n_trials=0"]),
    "fasttext_search": ("fasttext", ["search.n_trials=1000", "search.timeout={ft_budget_s}", "search.start_params=[]"]),
    "minilm_logreg": ("embeddings", ["encoder.name=minilm", "classifier=logreg", "search.n_trials=0"]),
    "tfidf_logreg": ("embeddings", ["encoder.name=tfidf_svd", "classifier=logreg", "search.n_trials=0"]),
    "minilm_mlp": ("embeddings", ["encoder.name=minilm", "classifier=mlp", "search.n_trials=0"]),
    "tfidf_svd512_mlp": ("embeddings", ["encoder.name=tfidf_svd", "tfidf_svd.n_components=512", "classifier=mlp",
                                        "search.n_trials=0"]),
    "lstm": ("lstm", ["train.epochs={lstm_epochs}", "search.n_trials=0"]),
    "setfit": ("setfit", ["pairs.per_text=1", "search.n_trials=0"]),
    "setfit_logreg": ("setfit", ["pairs.per_text=1", "head.type=logreg", "search.n_trials=0"]),
    "bert": ("bert", ["stage2.lr=1e-4", "stage2.epochs={bert_epochs}", "search.n_trials=0"]),
    "tfidf_plugin": ("tfidf_logreg", ["model.char_ngram_max=5", "model.C=4", "model.class_weight=null", "model.min_df=2",
                                      "search.n_trials=0"], str(PLUGIN)),
}
TRAIN_RECORD = "bench_train.json"
METRICS = ("micro_f1", "macro_f1", "samples_f1")
TARGETS = {"best_micro_f1": 0.75, "best_macro_f1": 0.55, "family_micro_f1": 0.70}


_quiet = bench_common.quiet_job


# --------------------------------------------------------------------------- jobs (each in a fresh process)
def job_train(family: str, paths: dict, out: str, overrides: list[str], code: str | None = None) -> dict:
    """Train (search if asked, refit) ``family`` into ``out`` through the run service; return the time and search summary.

    ``code``: a plug-in file that registers ``family`` (``textclf train --code``).
    """
    meta, wall = bench_common.train_job(family, paths, out, overrides, code)
    return {"family": family, "train_wall_s": round(wall, 1), "peak_rss_mb": peak_rss_mb(), "params": meta.get("params"),
            "valid_micro_f1": round(meta["metrics"]["valid"]["micro_f1"], 4), "search": bench_common.search_summary(meta)}


def job_score(model_dir: str, paths: dict, beta: float, cv: int) -> dict:
    """Tune the thresholds on valid (as ``textclf tune-thresholds``), store them, score test at 0.5 / global / per label."""
    _quiet()
    import numpy as np

    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.core.metrics import multilabel_metrics
    from textclf.services.compare.label_thresholds import indicator_matrix, thresholds_block
    from textclf.services.compare.thresholds import save_thresholds

    predictor = load_predictor(model_dir, thresholds=False, trust_code=True)  # the plug-in row runs this repository's example
    labels = list(predictor.labels)

    def proba_gold(path):
        ds = read_labelled(path, None, "text", "label", min_classes=0, task="multilabel")
        return np.asarray(predictor.predict_proba(ds.texts)), indicator_matrix(ds.labels, labels, path)

    start = time.perf_counter()
    pv, yv = proba_gold(paths["valid"])
    block = thresholds_block(predictor, pv, yv, beta, cv, 13, 20)
    save_thresholds(model_dir, block)
    tune_s = time.perf_counter() - start
    pt, yt = proba_gold(paths["test"])
    gold = [[labels[j] for j in np.flatnonzero(row)] for row in yt]
    per_label = np.array([block["per_label"][label] for label in labels])

    def score(thresholds) -> dict:
        chosen = pt >= thresholds
        pred = [[labels[j] for j in np.flatnonzero(row)] for row in chosen]
        m = multilabel_metrics(gold, pred, labels, betas=(1.0,))
        return {k: round(m[k], 4) for k in METRICS}

    return {"tune_s": round(tune_s, 1), "global_threshold": round(block["global"], 4), "cv": block.get("cv"),
            "untuned": score(0.5), "global": score(block["global"]), "per_label": score(per_label)}


def job_ensemble(members: list[str], paths: dict, out: str, beta: float) -> dict:
    """``textclf ensemble --method weighted`` of ``members`` on valid; its wall time and weights."""
    _quiet()
    from textclf.core.trust import trusting
    from textclf.services.compare.ensemble import build_ensemble

    start = time.perf_counter()
    with trusting(True):  # a member may be the example plug-in
        meta = build_ensemble(members, paths["valid"], out, method="weighted", beta=beta, test_path=paths["test"])
    return {"build_wall_s": round(time.perf_counter() - start, 1), "weights": meta["weights"], "method": meta["method"]}


# --------------------------------------------------------------------------- driver
def reused(model_dir: str, family: str, overrides: list[str], paths: dict) -> dict | None:
    """The training record of a model already in ``model_dir`` trained with ``overrides`` on ``paths``, or None."""
    record = Path(model_dir) / TRAIN_RECORD
    if not (Path(model_dir) / "meta.json").exists() or not record.exists():
        return None
    done = json.loads(record.read_text(encoding="utf-8"))

    def files(data: dict | None) -> dict:  # the files the paths name (a symlinked data root is the same data)
        return {k: str(Path(v).resolve()) for k, v in (data or {}).items()}

    if done.get("family") != family or done.get("overrides") != overrides or files(done.get("data")) != files(paths):
        return None
    return {k: v for k, v in done.items() if k not in ("overrides", "data")} | {"reused": True}


def slice_train(paths: dict, rows: int, workdir: Path) -> dict:
    """``paths`` with train cut to its first ``rows`` lines (a file under ``workdir``); valid and test stay whole."""
    sliced = workdir / "train.jsonl"
    with open(paths["train"], encoding="utf-8") as src, open(sliced, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= rows:
                break
            dst.write(line)
    return {**paths, "train": str(sliced)}


def table(results: dict) -> str:
    """The markdown table: per model test micro/macro/samples-F1 at 0.5, global and per-label thresholds, train seconds."""
    base = results.get(BASELINE, {}).get("per_label", {}).get("micro_f1")
    head = ("| model | train s | micro-F1 @0.5 | micro global | micro per-label | macro global | macro per-label "
            "| samples global | samples per-label | micro per-label / tfidf |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [head]
    for name, r in results.items():
        if "per_label" not in r:
            continue
        u, g, p = r["untuned"], r["global"], r["per_label"]
        ratio = f"{p['micro_f1'] / base:.3f}" if base else "-"
        seconds = r.get("train_wall_s", r.get("build_wall_s", "-"))
        rows.append(f"| {name} | {seconds} | {u['micro_f1']:.3f} | {g['micro_f1']:.3f} | {p['micro_f1']:.3f} "
                    f"| {g['macro_f1']:.3f} | {p['macro_f1']:.3f} | {g['samples_f1']:.3f} | {p['samples_f1']:.3f} | {ratio} |")
    return "\n".join(rows)


def targets(results: dict) -> dict:
    """The issue-24 checks on the scored models (per-label thresholds for the floors)."""
    scored = {k: v for k, v in results.items() if "per_label" in v}
    if not scored:
        return {}
    best = max(scored, key=lambda k: scored[k]["per_label"]["micro_f1"])
    singles = {k: v for k, v in scored.items() if k != "ensemble"}
    gain = [v["per_label"]["micro_f1"] - v["global"]["micro_f1"] for v in scored.values()]
    return {"best": best, "best_micro_f1": scored[best]["per_label"]["micro_f1"],
            "best_macro_f1": max(v["per_label"]["macro_f1"] for v in scored.values()),
            "best_micro_ok": scored[best]["per_label"]["micro_f1"] >= TARGETS["best_micro_f1"],
            "best_macro_ok": max(v["per_label"]["macro_f1"] for v in scored.values()) >= TARGETS["best_macro_f1"],
            "families_below_0.70": sorted(k for k, v in singles.items() if v["per_label"]["micro_f1"] < TARGETS["family_micro_f1"]),
            "mean_per_label_minus_global_micro_f1": round(sum(gain) / len(gain), 4),
            "per_label_ge_global_on_average": sum(gain) >= 0}


@click.command()
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--models", default=",".join(MODELS), show_default=True, help="Comma-separated names of MODELS.")
@click.option("--rows", type=int, default=None, help="Train on the first N training rows only (valid and test stay whole).")
@click.option("--ft_budget_s", type=int, default=120, show_default=True, help="fastText Optuna search budget.")
@click.option("--lstm_epochs", type=int, default=4, show_default=True)
@click.option("--bert_epochs", type=int, default=3, show_default=True, help="Epochs of the fine-tuned MiniLM (one stage).")
@click.option("--beta", type=float, default=1.0, show_default=True, help="F-beta the thresholds maximise (micro).")
@click.option("--cv", type=int, default=5, show_default=True, help="Out-of-fold check of the thresholds.")
@click.option("--ensemble_size", type=int, default=3, show_default=True,
              help="Members of the ensemble: the models best on valid micro-F1 (0 or 1: no ensemble).")
@click.option("--reuse", is_flag=True, help="Reuse a model under --keep trained with the same overrides on the same files.")
@click.option("--keep", default=None, help="Keep the model directories under this folder (default: a temporary one).")
@click.option("--output", default=None, help="Results JSON (default benchmarks/results/multilabel.json).")
def main(data_root, models, rows, ft_budget_s, lstm_epochs, bert_epochs, beta, cv, ensemble_size, reuse, keep, output):
    """Train the multi-label families on disaster_response and compare global vs per-label thresholds."""
    start_fork_server()
    echo = make_echo(show_elapsed=True)
    d = Path(data_root) / DATASET
    paths = {s: str(d / f"{s}.jsonl") for s in ("train", "valid", "test")}
    if not all(Path(p).exists() for p in paths.values()):
        raise click.ClickException(f"{d}: train/valid/test.jsonl not found")
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise click.BadParameter(f"unknown model(s) {unknown}; choose from {list(MODELS)}", param_hint="--models")
    workdir = Path(keep or tempfile.mkdtemp(prefix="bench_multilabel_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if rows:
        paths = slice_train(paths, rows, workdir)
    out = results_path(output, "multilabel")
    settings = {"dataset": DATASET, "rows": rows, "models": names, "ft_budget_s": ft_budget_s, "lstm_epochs": lstm_epochs,
                "bert_epochs": bert_epochs, "beta": beta, "cv": cv, "ensemble_size": ensemble_size, "reuse": reuse, "baseline": BASELINE}
    doc = results_doc("multilabel", settings, PACKAGES, rss_note=RSS_NOTE, models={})
    from textclf.core.atomic import atomic_write_json

    def save() -> None:
        doc["targets"] = targets(doc["models"])
        doc["table_markdown"] = table(doc["models"])
        atomic_write_json(out, doc)

    fmt = {"ft_budget_s": ft_budget_s, "lstm_epochs": lstm_epochs, "bert_epochs": bert_epochs}
    for name in names:
        family, overrides, *code = MODELS[name]
        overrides = [o.format(**fmt) for o in overrides]
        model_dir = str(workdir / name)
        try:
            result = reused(model_dir, family, overrides, paths) if reuse else None
            if result is None:
                echo(f"{name}: training {family} {' '.join(overrides)}")
                result = in_child(job_train, family, paths, model_dir, overrides, *code)
                atomic_write_json(Path(model_dir) / TRAIN_RECORD, {**result, "overrides": overrides, "data": paths})
                echo(f"{name}: trained in {result['train_wall_s']} s; tuning thresholds")
            else:
                echo(f"{name}: reusing {model_dir} (trained with the same overrides on the same files); tuning thresholds")
            result.update(in_child(job_score, model_dir, paths, beta, cv))
            result["model_dir"] = model_dir
        except Exception as exc:  # noqa: BLE001 - one failing model is recorded, the others still run
            result = {"family": family, "error": f"{type(exc).__name__}: {exc}"}
        echo(f"{name}: {json.dumps({k: result.get(k) for k in ('global', 'per_label', 'error') if k in result})}")
        doc["models"][name] = result
        save()
    scored = [n for n in names if "per_label" in doc["models"][n]]
    if ensemble_size >= 2 and len(scored) >= 2:
        best = sorted(scored, key=lambda n: doc["models"][n]["valid_micro_f1"], reverse=True)[:ensemble_size]  # chosen on valid
        ens_dir = str(workdir / "ensemble")
        echo(f"ensemble of {best}")
        try:
            result = in_child(job_ensemble, [doc["models"][n]["model_dir"] for n in best], paths, ens_dir, beta)
            result["members"] = best
            result.update(in_child(job_score, ens_dir, paths, beta, cv))
        except Exception as exc:  # noqa: BLE001
            result = {"members": best, "error": f"{type(exc).__name__}: {exc}"}
        doc["models"]["ensemble"] = result
    from bench_common import utc_now

    doc["finished"] = utc_now()
    save()
    click.echo(table(doc["models"]))
    click.echo(json.dumps(doc["targets"], indent=1))


if __name__ == "__main__":
    main()

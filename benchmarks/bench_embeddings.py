"""Benchmark the sentence-embedding families against the tools users would pick instead.

Per dataset under ``--data_root`` (default ``<repo>/../shared/data``), each job in a fresh process
forked from a fork server (its peak RSS is its own; see ``bench_common``):

  tune cold    ``textclf tune embeddings`` (``--n_trials`` over encoder x classifier x params x balance)
               with an empty embedding cache: encoding included;
  tune warm    the same search again into a new directory on the now-filled cache: the ratio
               cold/warm is the cache's speed-up (target >= 10x);
  grid         every classifier with its config defaults on every frozen encoder (vectors from the cache):
               test accuracy / macro-F1, fit seconds, classifier predict docs/s;
  encode       docs/s of each sentence encoder on up to 512 test texts (model loaded, no cache);
  predict      end-to-end docs/s of the tuned model's Predictor on raw test text (encoding included);
  setfit       the SetFit-style family with 8 and 64 examples per class and with the full training set,
               next to the frozen MiniLM + logistic regression on the very same rows;
  fastText     the fastText family's Optuna search (``--ft_trials``), and TF-IDF + logistic regression;
  long_text    (``--long_text``) every SetFit run again with ``encoder.long_text=chunk`` (windows of
               max_length, pooled): test macro-F1 next to the truncating run, and the time ratios
               chunk / truncate of the contrastive training and of embedding train/valid/test.
               ``--eval_rows N`` cuts valid/test to their first N rows (a slice for busy CPUs).

Targets (``../shared/design/targets.md``): tuned embeddings >= MiniLM+logreg on every dataset and >= tuned
fastText on tweets_sentiment and movie_review_sentences; cache speed-up >= 10x. Prints markdown tables and
writes ``benchmarks/results/embeddings.json`` atomically (after every dataset)::

    python benchmarks/bench_embeddings.py                                  # all four datasets
    python benchmarks/bench_embeddings.py --datasets tweets_sentiment --quick
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import bench_common as bench
import click

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
CLASSIFIERS = ("logreg", "linear_svm", "knn", "mlp", "hgb")
SHORT_TEXT = ("tweets_sentiment", "movie_review_sentences")
PACKAGES = ("textclf", "torch", "sentence-transformers", "scikit-learn", "optuna", "fasttext-community", "numpy")


_quiet = bench.quiet_job


def _metrics(true, pred, labels) -> dict:
    from textclf.core.metrics import classification_metrics

    m = classification_metrics(true, pred, labels)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


# --------------------------------------------------------------------------- jobs (each in a fresh process)

def job_tune(paths: dict, cache_dir: str, out: str, n_trials: int, encoders: list[str], seed: int, memo: bool = True) -> dict:
    """``textclf tune embeddings`` into ``out`` with the embedding cache at ``cache_dir`` (search-trial memo on/off)."""
    _quiet()
    os.environ["TEXTCLF_CACHE"] = cache_dir
    import json

    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family
    from textclf.families.embeddings.train import Features

    cfg, splits = bench.load_job_splits(paths, "embeddings", [f"search.n_trials={n_trials}", f"seed={seed}", "device=\"cpu\"",
                                                             f"search.space.encoder.choices={json.dumps(encoders)}",
                                                             f"search.memo={json.dumps(memo)}"])
    features_s = [0.0]
    original = Features.get

    def timed_get(self, name):  # measures the time spent getting vectors (encoding, or loading from the cache)
        t0 = time.perf_counter()
        try:
            return original(self, name)
        finally:
            features_s[0] += time.perf_counter() - t0

    Features.get = timed_get
    start = time.perf_counter()
    get_family("embeddings").train_fn()(cfg, splits, out)
    wall = time.perf_counter() - start
    Features.get = original
    meta = read_meta(out)
    return {"wall_s": round(wall, 2), "features_s": round(features_s[0], 2),
            "test": {k: round(meta["metrics"]["test"][k], 4) for k in ("accuracy", "macro_f1")},
            "valid_macro_f1": round(meta["metrics"]["valid"]["macro_f1"], 4), "encoder": meta["encoder"]["name"],
            "classifier": meta["classifier"], "balance": meta["balance"], "params": meta["params"],
            "n_trials": meta["search"]["n_trials"], "peak_rss_mb": bench.peak_rss_mb()}


def job_grid(paths: dict, cache_dir: str, encoder: str, seed: int) -> dict:
    """Every classifier with its defaults on ``encoder``'s vectors (from the cache when it is a sentence encoder)."""
    _quiet()
    os.environ["TEXTCLF_CACHE"] = cache_dir
    from textclf.families.common.sklearn_proba import proba_in_label_order
    from textclf.families.embeddings.train import Features, fit_classifier, label_indices

    cfg, splits = bench.load_job_splits(paths, "embeddings", [f"seed={seed}", "device=\"cpu\""])
    start = time.perf_counter()
    x = Features(cfg, splits).get(encoder)
    features_s = time.perf_counter() - start
    y = label_indices(splits, splits.train.labels)
    rows = {}
    for name in CLASSIFIERS:
        start = time.perf_counter()
        clf = fit_classifier(x["train"], y, splits, name, cfg["classifiers"][name], False, seed)
        fit_s = time.perf_counter() - start
        out = {"fit_s": round(fit_s, 2)}
        for part in ("valid", "test"):
            start = time.perf_counter()
            proba = proba_in_label_order(clf, x[part], len(splits.labels))
            seconds = time.perf_counter() - start
            pred = [splits.labels[i] for i in proba.argmax(axis=1)]
            out[part] = _metrics(getattr(splits, part).labels, pred, splits.labels)
            if part == "test":
                out["clf_predict_docs_per_s"] = round(len(pred) / max(seconds, 1e-9), 1)
        rows[name] = out
    return {"features_s": round(features_s, 2), "classifiers": rows, "peak_rss_mb": bench.peak_rss_mb()}


def job_encode_speed(texts: list[str], encoder: str) -> dict:
    """docs/s of a sentence encoder on ``texts`` after the model is loaded (no cache)."""
    _quiet()
    from textclf.families.common.encoders import SentenceEncoder

    enc = SentenceEncoder(encoder, device="cpu", batch_size=64)
    enc.encode(texts[:8], progress=False)  # load + warm up
    start = time.perf_counter()
    enc.encode(texts, progress=False)
    seconds = time.perf_counter() - start
    return {"docs": len(texts), "docs_per_s": round(len(texts) / seconds, 1), "peak_rss_mb": bench.peak_rss_mb()}


def job_predict(model_dir: str, texts: list[str]) -> dict:
    """End-to-end docs/s of a model directory's Predictor on raw text (load excluded)."""
    _quiet()
    from textclf.core.loading import load_predictor

    predictor = load_predictor(model_dir)
    start = time.perf_counter()
    predictor.predict(texts)
    seconds = time.perf_counter() - start
    return {"docs": len(texts), "docs_per_s": round(len(texts) / seconds, 1), "peak_rss_mb": bench.peak_rss_mb()}


def job_setfit(paths: dict, out: str, per_class: int | None, seed: int, overrides: list[str], frozen: bool = True) -> dict:
    """The SetFit-style family (``per_class`` examples per class, None = all), and frozen MiniLM + logreg on the same rows."""
    _quiet()
    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family

    per = "null" if per_class is None else str(per_class)
    cfg, splits = bench.load_job_splits(paths, "setfit", [f"data.per_class={per}", f"seed={seed}", "device=\"cpu\"", *overrides])
    start = time.perf_counter()
    get_family("setfit").train_fn()(cfg, splits, out)
    wall = time.perf_counter() - start
    meta = read_meta(out)
    result = {"wall_s": round(wall, 2), "train_rows": meta.get("few_shot", {}).get("n_train"),
              "test": {k: round(meta["metrics"]["test"][k], 4) for k in ("accuracy", "macro_f1")},
              "valid": {k: round(meta["metrics"]["valid"][k], 4) for k in ("accuracy", "macro_f1")}, "peak_rss_mb": bench.peak_rss_mb(),
              "seconds": meta.get("seconds"), "long_text": meta.get("long_text")}
    if frozen:
        result["frozen_minilm_logreg"] = _frozen_on_rows(paths, per_class, seed)
    return result


def _frozen_on_rows(paths: dict, per_class: int | None, seed: int) -> dict:
    """Frozen MiniLM + logistic regression on the rows the SetFit run sampled (its sampler, its seed)."""
    from textclf.families.embeddings.train import Features, fit_classifier, label_indices
    from textclf.families.setfit.sampling import few_shot_indices

    cfg, splits = bench.load_job_splits(paths, "embeddings", [f"seed={seed}", "device=\"cpu\""])
    rows = None if per_class is None else few_shot_indices(splits.train.labels, per_class, seed)
    if rows is not None:  # encode only the sampled rows (the same fit as on all rows restricted to them)
        splits = dataclasses.replace(splits, train=splits.train.subset(rows))
    x = Features(cfg, splits).get("minilm")
    y = label_indices(splits, splits.train.labels)
    clf = fit_classifier(x["train"], y, splits, "logreg", cfg["classifiers"]["logreg"], False, seed)
    pred = [splits.labels[i] for i in clf.predict(x["test"])]
    return {"train_rows": len(y) if rows is None else len(rows), "test": _metrics(splits.test.labels, pred, splits.labels)}


def job_fasttext(paths: dict, out: str, n_trials: int, budget_s: float | None = None) -> dict:
    """The fastText family's Optuna search (``n_trials``, within ``budget_s`` seconds when given) and refit."""
    _quiet()
    from textclf.core.meta import read_meta
    from textclf.core.registry import get_family

    overrides = [f"search.n_trials={n_trials}", *([f"search.timeout={budget_s}"] if budget_s else [])]
    cfg, splits = bench.load_job_splits(paths, "fasttext", overrides)
    start = time.perf_counter()
    get_family("fasttext").train_fn()(cfg, splits, out)
    meta = read_meta(out)
    return {"wall_s": round(time.perf_counter() - start, 2), "trials": (meta.get("search") or {}).get("n_trials"),
            "search_budget_s": budget_s,
            "test": {k: round(meta["metrics"]["test"][k], 4) for k in ("accuracy", "macro_f1")}, "peak_rss_mb": bench.peak_rss_mb()}


def job_tfidf_logreg(paths: dict) -> dict:
    """TF-IDF (1-2 grams, sublinear tf) + logistic regression (C=10): the classical baseline of targets.md."""
    _quiet()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    _, splits = bench.load_job_splits(paths, "embeddings", [])
    start = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(C=10.0, max_iter=3000))
    model.fit(splits.train.texts, splits.train.labels)
    fit_s = time.perf_counter() - start
    return {"wall_s": round(fit_s, 2), "test": _metrics(splits.test.labels, list(model.predict(splits.test.texts)), splits.labels),
            "peak_rss_mb": bench.peak_rss_mb()}


# --------------------------------------------------------------------------- parent side

def bench_dataset(name: str, paths: dict, opts: dict, echo) -> dict:
    """Every job on one dataset; returns its results block."""
    from textclf.core.data import read_labelled

    test = read_labelled(paths["test"], min_classes=0)
    encoders = ["minilm", "tfidf_svd"] + (["mpnet"] if name in opts["mpnet_datasets"] else [])
    res: dict = {"status": "ok", "paths": paths, "encoders": encoders, "jobs": dict(opts["previous"].get(name, {}).get("jobs", {}))}
    seed = opts["seed"]
    with tempfile.TemporaryDirectory(prefix=f"bench-emb-{name}-") as tmp:
        work = Path(tmp)
        cache = str(work / "cache")
        if opts.get("eval_rows"):
            paths = _sliced(paths, work / "data", opts["eval_rows"])
            res["paths"] = {**res["paths"], "eval_rows": opts["eval_rows"]}

        def run(key, fn, *args):
            if not any(key.startswith(prefix) for prefix in opts["only"]):
                return res["jobs"].get(key, {})
            echo(f"  {key} ...")
            load = os.getloadavg()[0]
            try:
                r = bench.in_child(fn, *args)
            except Exception as exc:  # noqa: BLE001 - one failed job is recorded, the rest still run
                r = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            r["loadavg_1m_before"] = round(load, 2)
            res["jobs"][key] = r
            echo(f"    {_short(r)}")
            return r

        run("tune_cold", job_tune, paths, cache, str(work / "tune_cold"), opts["n_trials"], encoders, seed)
        run("tune_warm_vectors", job_tune, paths, cache, str(work / "tune_warm_vectors"), opts["n_trials"], encoders, seed,
            False)
        run("tune_warm", job_tune, paths, cache, str(work / "tune_warm"), opts["n_trials"], encoders, seed)
        for enc in encoders:
            run(f"grid_{enc}", job_grid, paths, cache, enc, seed)
        sample = test.texts[:512]
        for enc in (e for e in encoders if e != "tfidf_svd"):
            run(f"encode_{enc}", job_encode_speed, sample, enc)
        if "tune_cold" in res["jobs"] and res["jobs"]["tune_cold"].get("status") != "failed":
            reps = max(1, opts["predict_docs"] // max(len(test.texts), 1))
            run("predict_tuned", job_predict, str(work / "tune_cold"), (test.texts * (reps + 1))[:opts["predict_docs"]])
        if not opts["skip_setfit"]:
            for per in opts["setfit_per_class"]:
                run(f"setfit_{per or 'full'}", job_setfit, paths, str(work / f"setfit_{per or 'full'}"), per, seed,
                    opts["setfit_set"])
                if opts["long_text"]:
                    run(f"setfit_{per or 'full'}_chunk", job_setfit, paths, str(work / f"setfit_{per or 'full'}_chunk"), per,
                        seed, [*opts["setfit_set"], 'encoder.long_text="chunk"'], False)
        run("fasttext_tuned", job_fasttext, paths, str(work / "fasttext"), opts["ft_trials"], opts["ft_budget_s"])
        run("tfidf_logreg", job_tfidf_logreg, paths)
    res["targets"] = targets(name, res["jobs"])
    return res


def _sliced(paths: dict, out: Path, n: int) -> dict:
    """``paths`` with valid and test cut to their first ``n`` rows (copies under ``out``)."""
    from textclf.core.data import read_labelled, write_labelled

    out.mkdir(parents=True, exist_ok=True)
    sliced = dict(paths)
    for part in ("valid", "test"):
        ds = read_labelled(paths[part], min_classes=0)
        write_labelled(str(out / f"{part}.csv"), ds.subset(list(range(min(n, len(ds))))), "csv")
        sliced[part] = str(out / f"{part}.csv")
    return sliced


def long_text_table(datasets: dict) -> str:
    """The ``--long_text`` rows: SetFit truncate vs chunk (test macro-F1), the frozen baseline, the time ratios."""
    lines = ["| dataset | SetFit | truncate | chunk | frozen MiniLM+logreg | contrastive s (chunk / truncate) | "
             "embed s (chunk / truncate) | train: over max_length, mean chunks |",
             "|---|---|---:|---:|---:|---|---|---|"]
    for name, r in datasets.items():
        j = r.get("jobs", {})
        for key in sorted(k for k in j if k.startswith("setfit_") and k.endswith("_chunk")):
            base, chunk = j.get(key.removesuffix("_chunk"), {}), j[key]
            if "test" not in base or "test" not in chunk:
                continue
            sb, sc = base.get("seconds") or {}, chunk.get("seconds") or {}

            def ratio(k, sb=sb, sc=sc):
                return f"{sc.get(k, 0):g} / {sb.get(k, 0):g} ({sc.get(k, 0) / max(sb.get(k, 0), 1e-9):.1f}x)"

            lt = chunk.get("long_text") or {}
            st = (lt.get("splits") or {}).get("train") or {}
            frozen = (base.get("frozen_minilm_logreg") or {}).get("test", {}).get("macro_f1")
            pooling = lt.get("chunk_pooling", "mean") + (" (auto)" if "pooling_choice" in lt else "")
            lines.append(f"| {name} | {key.removeprefix('setfit_').removesuffix('_chunk')}/class | "
                         f"{base['test']['macro_f1']:.3f} | {chunk['test']['macro_f1']:.3f}, {pooling} | "
                         f"{'—' if frozen is None else f'{frozen:.3f}'} | {ratio('contrastive')} | {ratio('embed')} | "
                         f"{st.get('share_over_max_length', '—')}, {st.get('mean_chunks', '—')} |")
    return "\n".join(lines)


def _short(r: dict) -> str:
    if r.get("status") == "failed":
        return f"FAILED {r['error']}"
    parts = []
    if "test" in r:
        parts.append(f"test acc {r['test']['accuracy']:.4f} macro-F1 {r['test']['macro_f1']:.4f}")
    if "classifiers" in r:
        parts.append(" ".join(f"{k} {v['test']['macro_f1']:.4f}" for k, v in r["classifiers"].items()))
    for key in ("wall_s", "docs_per_s", "peak_rss_mb"):
        if key in r:
            parts.append(f"{key} {r[key]}")
    return ", ".join(parts)


def _f1(jobs: dict, key: str, *path) -> float | None:
    r = jobs.get(key, {})
    for p in path:
        r = r.get(p, {}) if isinstance(r, dict) else {}
    return r if isinstance(r, float | int) else None


def targets(name: str, jobs: dict) -> dict:
    """The issue's targets on one dataset (None where a job failed or did not run)."""
    tuned = _f1(jobs, "tune_cold", "test", "macro_f1")
    base = _f1(jobs, "grid_minilm", "classifiers", "logreg", "test", "macro_f1")
    ft = _f1(jobs, "fasttext_tuned", "test", "macro_f1")
    cold, warm = _f1(jobs, "tune_cold", "wall_s"), _f1(jobs, "tune_warm", "wall_s")
    out = {"tuned_ge_minilm_logreg": None if tuned is None or base is None else tuned >= base,
           "cache_speedup": None if not cold or not warm else round(cold / warm, 1)}
    out["cache_speedup_ge_10"] = None if out["cache_speedup"] is None else out["cache_speedup"] >= 10
    vec = _f1(jobs, "tune_warm_vectors", "wall_s")
    out["vectors_only_speedup"] = None if not cold or not vec else round(cold / vec, 1)
    f_cold, f_warm = _f1(jobs, "tune_cold", "features_s"), _f1(jobs, "tune_warm", "features_s")
    out["features_speedup"] = None if not f_cold or not f_warm else round(f_cold / f_warm, 1)
    if name in SHORT_TEXT:
        out["tuned_ge_fasttext"] = None if tuned is None or ft is None else tuned >= ft
    return out


def markdown_tables(datasets: dict) -> str:
    """The results as markdown: one summary table, then every classifier on every encoder."""
    lines = ["| dataset | tuned embeddings (test macro-F1) | MiniLM+logreg | tuned fastText | TF-IDF+logreg | SetFit 8/class "
             "(frozen) | SetFit 64/class (frozen) | SetFit full (frozen) | search s: cold / vectors cached / vectors + trials "
             "cached | speed-up: vectors / both | predict docs/s |",
             "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for name, r in datasets.items():
        if r.get("status") != "ok":
            continue
        j = r["jobs"]

        def f(key, *path, j=j):
            v = _f1(j, key, *path)
            return "—" if v is None else f"{v:.3f}"

        tuned = j.get("tune_cold", {})
        desc = f"{f('tune_cold', 'test', 'macro_f1')} ({tuned.get('encoder', '?')}+{tuned.get('classifier', '?')})"
        setfit = [f"{f(k, 'test', 'macro_f1')} ({f(k, 'frozen_minilm_logreg', 'test', 'macro_f1')})"
                  for k in ("setfit_8", "setfit_64", "setfit_full")]
        lines.append(f"| {name} | {desc} | {f('grid_minilm', 'classifiers', 'logreg', 'test', 'macro_f1')} | "
                     f"{f('fasttext_tuned', 'test', 'macro_f1')} | {f('tfidf_logreg', 'test', 'macro_f1')} | {' | '.join(setfit)} | "
                     f"{j.get('tune_cold', {}).get('wall_s', '—')} / {j.get('tune_warm_vectors', {}).get('wall_s', '—')} / "
                     f"{j.get('tune_warm', {}).get('wall_s', '—')} | {r['targets'].get('vectors_only_speedup', '—')}x / "
                     f"{r['targets'].get('cache_speedup', '—')}x | {j.get('predict_tuned', {}).get('docs_per_s', '—')} |")
    lines += ["", "| dataset | encoder | encode docs/s | " + " | ".join(CLASSIFIERS) + " | fit s (each) |",
              "|---|---|---:|" + "---:|" * len(CLASSIFIERS) + "---|"]
    for name, r in datasets.items():
        if r.get("status") != "ok":
            continue
        for enc in r["encoders"]:
            g = r["jobs"].get(f"grid_{enc}", {})
            if "classifiers" not in g:
                continue
            speed = r["jobs"].get(f"encode_{enc}", {}).get("docs_per_s", "fitted")
            cells = [f"{g['classifiers'][c]['test']['macro_f1']:.3f}" for c in CLASSIFIERS]
            fits = "/".join(f"{g['classifiers'][c]['fit_s']:g}" for c in CLASSIFIERS)
            lines.append(f"| {name} | {enc} | {speed} | {' | '.join(cells)} | {fits} |")
    if any(k.endswith("_chunk") for r in datasets.values() for k in r.get("jobs", {})):
        lines += ["", "Long documents (`--long_text`, SetFit test macro-F1):", "", long_text_table(datasets)]
    return "\n".join(lines)


@click.command()
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma-separated dataset folder names.")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(bench.DATA_ROOT), show_default=True)
@click.option("--n_trials", type=int, default=30, show_default=True, help="Trials of the embeddings search.")
@click.option("--ft_trials", type=int, default=30, show_default=True, help="Trials of the fastText search.")
@click.option("--ft_budget_s", type=float, default=None,
              help="Stop the fastText search after this many seconds (search.timeout) [default: no limit].")
@click.option("--mpnet_datasets", default=",".join(SHORT_TEXT), show_default=True,
              help="Datasets whose search also gets mpnet (long texts encode at a few docs/s on a CPU).")
@click.option("--setfit_per_class", default="8,64,full", show_default=True, help="SetFit runs: examples per class, or full.")
@click.option("--setfit_set", multiple=True, help="--set overrides for the SetFit runs (repeatable).")
@click.option("--skip_setfit", is_flag=True, help="Leave the SetFit runs out.")
@click.option("--long_text", is_flag=True, help="Run every SetFit job again with encoder.long_text=chunk (truncate vs chunk).")
@click.option("--eval_rows", type=int, default=None, help="Cut valid and test to their first N rows (a slice).")
@click.option("--predict_docs", type=int, default=2000, show_default=True, help="Docs in the end-to-end predict timing.")
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--only", default="tune,grid,encode,predict,setfit,fasttext,tfidf", show_default=True,
              help="Job groups to run (the others keep their results from the output JSON, with --merge).")
@click.option("--merge", is_flag=True, help="Update the output JSON's jobs instead of starting a new one.")
@click.option("--quick", is_flag=True, help="Smoke check: 4 trials, no mpnet, SetFit 8/class only.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON [default: benchmarks/results/embeddings.json; --quick: embeddings_quick.json].")
def main(datasets, data_root, n_trials, ft_trials, ft_budget_s, mpnet_datasets, setfit_per_class, setfit_set, skip_setfit, long_text,
         eval_rows, predict_docs, seed, only, merge, quick, output):
    """Benchmark the embeddings and SetFit-style families against fastText and TF-IDF; write tables and a JSON."""
    bench.start_fork_server()  # before anything large is loaded: see bench_common
    if quick:
        n_trials, ft_trials, mpnet_datasets, setfit_per_class, predict_docs = 4, 4, "", "8", 500
    per_class = [None if p.strip() == "full" else int(p) for p in setfit_per_class.split(",") if p.strip()]
    opts = {"n_trials": n_trials, "ft_trials": ft_trials, "ft_budget_s": ft_budget_s, "seed": seed,
            "predict_docs": predict_docs, "skip_setfit": skip_setfit,
            "mpnet_datasets": {d.strip() for d in mpnet_datasets.split(",") if d.strip()}, "setfit_per_class": per_class,
            "setfit_set": list(setfit_set), "long_text": long_text, "eval_rows": eval_rows}
    output = bench.results_path(output, "embeddings", quick)
    previous = json.loads(output.read_text()) if merge and output.exists() else {}
    opts["previous"] = previous.get("datasets", {})
    opts["only"] = [g.strip() for g in only.split(",") if g.strip()]
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    echo = bench.make_echo(show_elapsed=True)
    from textclf.core.atomic import atomic_write_json

    settings = {**{k: v for k, v in opts.items() if k != "previous"}, "mpnet_datasets": sorted(opts["mpnet_datasets"]),
                "datasets": names, "quick": quick}
    doc = bench.results_doc(
        "embeddings", settings, PACKAGES,
        notes={"peak_rss": bench.RSS_NOTE, "metrics": "test split; macro_f1 is the target metric",
               "cache_speedup": "tune_cold wall / tune_warm wall: the same search (same seed, same trials) first on an "
                                "empty cache, then on the filled one (embedding cache + search-trial memo); all three "
                                "searches include the refit and evaluation",
               "vectors_only_speedup": "tune_cold wall / tune_warm_vectors wall: the second search with only the "
                                       "embedding cache (search.memo=false), so every trial fits its classifier again",
               "load": "the machine may be shared; loadavg_1m_before records the 1-minute load before each job"},
        datasets=dict(previous.get("datasets", {})))
    if previous:
        doc["runs"] = [*previous.get("runs", [previous.get("command")]), doc["command"]]
    for name in names:
        paths = bench.dataset_paths(data_root, name)
        if paths is None:
            echo(f"{name}: skipped, not found under {data_root}")
            doc["datasets"][name] = {"status": "skipped"}
            continue
        echo(f"{name}:")
        doc["datasets"][name] = bench_dataset(name, paths, opts, echo)
        doc["table_markdown"] = markdown_tables(doc["datasets"])
        atomic_write_json(output, doc)
    bench.finish_doc(output, doc, markdown_tables(doc["datasets"]))
    click.echo(doc["table_markdown"])
    click.echo("\ntargets: " + "; ".join(f"{n}: {r.get('targets')}" for n, r in doc["datasets"].items()))
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

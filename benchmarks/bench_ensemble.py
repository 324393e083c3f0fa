"""Benchmark ensembles across families and multiclass threshold tuning on the shared datasets.

For every dataset under ``--data_root`` (default ``<repo>/../shared/data``; a missing one is skipped
with a message), each job in a fresh process forked from a fork server started before anything
loads (its peak RSS is its own; see ``bench_common``):

  members      the tuned cheap families, each trained through the registry on train, searched on valid:
               fastText (Optuna, ``--ft_trials`` trials within ``--ft_budget_s`` seconds),
               embeddings with the frozen MiniLM encoder (Optuna over classifier x params x balance,
               ``--emb_trials``), and the example plug-in TF-IDF + logistic regression
               (``examples/plugins/tfidf_logreg.py``, ``--tfidf_trials``; ``--no-tfidf`` leaves it out);
  ensembles    ``textclf ensemble`` of all members on valid: ``auto`` (the CLI default: the best single member,
               weighted or stacking, whichever scores best out of fold in 5-fold CV on valid), ``weighted``
               (simplex weights maximising valid macro-F1, bagged over ``--bags`` bootstrap resamples; the same
               job also scores the plain grid search's weights: row ``weighted_grid``), ``weighted_logloss``
               (``--objective logloss``, bagged) and ``stacking`` (cross-validated logistic regression on the
               members' probabilities);
  thresholds   ``textclf tune-thresholds --beta`` (default 0.5, out-of-fold check ``--cv 5``) on valid for every
               member and the weighted and auto ensembles, and the test-set change of macro-F0.5 and macro-F1.

``--holdout F`` splits valid (stratified): the members tune on 1-F of it and the ensembles and
thresholds learn on the F they never saw (results: ``benchmarks/results/ensemble_holdout.json``).
Everything is scored on the test split (the members' test metrics are their meta.json's). Targets
(issue 13): the ensemble's test macro-F1 >= the best single member's on every dataset, and > on at
least half; the summary checks it for every method. Prints markdown tables and writes
``benchmarks/results/ensemble.json`` atomically (after every dataset).

``--small_valid N`` (issue 26) is another experiment: cheap members (fastText with its default params
and 20 MB budget, TF-IDF + logreg, MiniLM embeddings + logreg; no searches) are trained once per
dataset, then ``--method auto`` is fitted on ``--subsamples`` random N-row subsamples of valid
(members fixed) and scored on test against the best member on test. Target: ``auto`` >= best
member - 0.002 in >= 18 of 20 cases (four datasets x five subsamples) and a mean gain >= 0
(results: ``benchmarks/results/ensemble_small_valid.json``). ``auto`` is fitted with the very
function ``textclf ensemble`` calls (``fit_method``) on the members' probabilities, computed once.
With ``--rotations K`` the members are trained K times, over rotating splits of all the dataset's rows
(test fold r, valid fold r + 1, train the rest), and each subsample's ``auto`` is scored on the K test
folds together: every row of the dataset is a test row once (``ensemble_small_valid_rotations.json``).

``--keep DIR --reuse`` reuses members already trained under ``DIR/<dataset>/<member>`` (a
``meta.json`` whose ``data_sha256`` matches the train, valid and test files; their training record
is read back from ``DIR/<dataset>/<member>.job.json``), so iterating on the ensemble logic does not
retrain them::

    python benchmarks/bench_ensemble.py                                  # all four datasets
    python benchmarks/bench_ensemble.py --datasets tweets_sentiment --keep /tmp/ens_models
    python benchmarks/bench_ensemble.py --keep /tmp/ens_models --reuse   # members from the run above
    python benchmarks/bench_ensemble.py --quick --datasets tweets_sentiment
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_common
import click
from bench_common import (
    DATA_ROOT,
    REPO,
    RSS_NOTE,
    dataset_paths,
    in_child,
    machine_info,
    make_echo,
    peak_rss_mb,
    rotation_paths,
    start_fork_server,
    utc_now,
)

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
PLUGIN = REPO / "examples" / "plugins" / "tfidf_logreg.py"
PACKAGES = ("textclf", "fasttext-community", "torch", "sentence-transformers", "scikit-learn", "optuna", "numpy")
MINILM_ONLY = '{"type": "categorical", "choices": ["minilm"]}'
#: the embeddings search's classifiers: all but hgb (gradient boosting on 384-d vectors takes minutes a trial on 2 cores)
EMB_CLASSIFIERS = '{"type": "categorical", "choices": ["logreg", "linear_svm", "knn", "mlp"]}'
#: (name, method, objective) of every ensemble built
ENSEMBLES = (("auto", "auto", "fbeta"), ("weighted", "weighted", "fbeta"), ("weighted_logloss", "weighted", "logloss"),
             ("stacking", "stacking", "fbeta"))
#: rows of the tables and the target check: the ensembles, plus the plain grid search scored by the weighted job
ROWS = ("auto", "weighted", "weighted_grid", "weighted_logloss", "stacking")
#: models whose thresholds are tuned besides the members
THRESHOLD_ENSEMBLES = ("ensemble_weighted", "ensemble_auto")


_quiet = bench_common.quiet_job


def _pick(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    return {k: round(metrics[k], 4) for k in ("accuracy", "macro_f1", "macro_f0.5") if k in metrics}


# --------------------------------------------------------------------------- jobs (each in a fresh process)
def job_train(family: str, paths: dict, out: str, overrides: list[str], code: str | None) -> dict:
    """Train (search, refit) one family into ``out``; return its valid/test metrics and search summary."""
    meta, wall = bench_common.train_job(family, paths, out, overrides, code)
    return {"family": family, "train_wall_s": round(wall, 1), "peak_rss_mb": peak_rss_mb(),
            "valid": _pick(meta["metrics"]["valid"]), "test": _pick(meta["metrics"].get("test")),
            "search": bench_common.search_summary(meta) or {"n_trials": None, "best_value": None, "best_params": None}}


def job_ensemble(members: list[str], paths: dict, out: str, method: str, beta: float, objective: str, bags: int) -> dict:
    """``textclf ensemble`` of ``members`` on valid, scored on test (a bagged weighted one: its plain grid weights too)."""
    _quiet()
    from textclf.services.compare.ensemble import build_ensemble

    start = time.perf_counter()
    meta = build_ensemble(members, paths["valid"], out, method=method, beta=beta, test_path=paths["test"], objective=objective,
                          bags=bags)
    s = meta["ensemble_search"]
    result = {"method": method, "saved_method": meta["method"], "chosen": s.get("chosen"),
              "objective": objective if meta["method"] == "weighted" else None,
              "build_wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb(),
              "weights": meta["weights"], "valid": _pick(meta["metrics"]["valid"]), "test": _pick(meta["metrics"]["test"]),
              "search": {k: s.get(k) for k in ("strategy", "score", "cv_score", "params", "single", "evaluated", "bags",
                                               "unbagged_weights", "auto")}}
    if s.get("unbagged_weights") is not None and method == "weighted":
        result["grid"] = score_weights(out, paths, s["unbagged_weights"])
    return result


def score_weights(ensemble_dir: str, paths: dict, weights: list[float]) -> dict:
    """Valid and test metrics of the ensemble's members averaged with other ``weights`` (the plain grid search's)."""
    import numpy as np

    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.core.metrics import classification_metrics
    from textclf.services.compare.ensemble import weighted_average

    ensemble = load_predictor(ensemble_dir, thresholds=False)
    ensemble.weights = np.ones(len(ensemble.members))  # every member's probabilities are needed
    out = {"weights": weights}
    for split in ("valid", "test"):
        ds = read_labelled(paths[split], min_classes=0)
        proba = weighted_average(ensemble.member_probas(ds.texts), weights)
        out[split] = _pick(classification_metrics(ds.labels, [ensemble.labels[i] for i in proba.argmax(axis=1)],
                                                  ensemble.labels))
    return out


def job_thresholds(model_dir: str, paths: dict, beta: float) -> dict:
    """``textclf tune-thresholds`` on valid; test metrics without and with the offsets."""
    _quiet()
    import numpy as np

    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.core.metrics import classification_metrics
    from textclf.services.compare.thresholds import tune_thresholds

    block = tune_thresholds(model_dir, paths["valid"], beta)
    predictor = load_predictor(model_dir, thresholds=False)
    test = read_labelled(paths["test"], min_classes=0)
    proba = predictor.predict_proba(test.texts)
    out = {"offsets": block["offsets"], "metric": block["metric"], "valid_before": round(block["valid_before"], 4),
           "valid_after": round(block["valid_after"], 4), "moves": block["moves"], "cv": block.get("cv")}
    offsets = np.array([block["offsets"][label] for label in predictor.labels])
    from textclf.services.compare.thresholds import decide

    for name, idx in (("test_before", decide(proba)), ("test_after", decide(proba, offsets))):
        m = classification_metrics(test.labels, [predictor.labels[i] for i in idx], predictor.labels, (1.0, 0.5))
        out[name] = _pick(m)
    return out


# --------------------------------------------------------------------------- small valid (issue 26)
#: the cheap members of ``--small_valid``: (name, family, overrides, code file), no searches
SMALL_VALID_MEMBERS = (("fasttext", "fasttext", ["search.n_trials=0"], None),
                       ("tfidf_logreg", "tfidf_logreg", [], str(PLUGIN)),
                       ("embeddings", "embeddings", ["encoder.name=minilm", "classifier=logreg"], None))
#: auto >= best member - this, on test
SMALL_VALID_TOLERANCE = 0.002


def job_probas(members: list[str], paths: dict) -> dict:
    """Every member's valid and test probabilities (label order of the first member) and the label indices."""
    _quiet()
    os.environ["TEXTCLF_TRUST_CODE"] = "1"  # the TF-IDF member carries the plug-in file this benchmark trained it with
    from textclf.core.data import read_labelled
    from textclf.core.loading import load_predictor
    from textclf.services.compare.ensemble import align_columns
    from textclf.services.compare.thresholds import label_indices

    predictors = [load_predictor(m, thresholds=False) for m in members]
    labels = predictors[0].labels
    out = {"labels": labels}
    for split in ("valid", "test"):
        ds = read_labelled(paths[split], min_classes=0)
        remember_cached(predictors, ds.texts)
        out[split] = {"y": label_indices(ds.labels, labels, paths[split]).tolist(),
                      "probas": [align_columns(p.predict_proba(ds.texts), p.labels, labels).tolist() for p in predictors]}
    return out


def remember_cached(predictors: list, texts: list[str]) -> None:
    """Hand a sentence-encoder member its vectors of ``texts`` from the embedding cache (encoded and stored on a miss).

    A loaded embeddings model encodes at predict time without the disk cache; :func:`job_prime_embeddings` has
    stored every rotation's splits there, so a rotation's valid and test vectors load instead of being encoded again.
    """
    from textclf.families.common.cache import EmbeddingCache
    from textclf.families.common.encoders import SentenceEncoder

    for p in predictors:
        if isinstance(getattr(p, "encoder", None), SentenceEncoder) and hasattr(p, "remember"):
            vectors, _, _ = p.encoder.encode_cached(texts, EmbeddingCache(), desc="cached")
            p.remember(texts, vectors)


def job_prime_embeddings(splits: list[dict], overrides: list[str]) -> dict:
    """Encode the texts of all ``splits`` once; store each split file's matrix under its own embedding-cache key.

    The embeddings member looks its train/valid/test matrices up by the texts they hold, so every rotation then
    loads its vectors instead of encoding the dataset again (the label audit's ``prime_embedding_cache``, applied
    to the split files' texts).
    """
    _quiet()
    import numpy as np

    from textclf.core.config import load_config
    from textclf.core.data import Dataset, read_labelled
    from textclf.services.audit.oof import prime_embedding_cache

    parts = [read_labelled(path, min_classes=0).texts for split in splits for path in split.values()]
    unique = list(dict.fromkeys(t for texts in parts for t in texts))
    row = {t: i for i, t in enumerate(unique)}
    start = time.perf_counter()
    prime_embedding_cache(load_config("embeddings", overrides=overrides), Dataset(unique, [None] * len(unique)),
                          [np.array([row[t] for t in texts]) for texts in parts])
    return {"texts": len(unique), "wall_s": round(time.perf_counter() - start, 1)}


def fit_auto_on_rows(probas: dict, rows: list[int], seed: int, member_calibration: str = "temperature") -> tuple:
    """``auto`` fitted (``fit_method``, as ``textclf ensemble`` does) on the valid ``rows``: its record and test predictions.

    The record has ``chosen``, ``weights``, the candidates' ``cv_scores``, the rule's ``versus_single`` evidence and
    ``reason``; the predictions are label indices of ``probas['test']``'s rows.
    """
    import numpy as np

    from textclf.services.compare.ensemble import DEFAULT_BAGS, fit_method, stacker_proba, weighted_average
    from textclf.services.compare.member_temperature import apply_temperatures

    k = len(probas["labels"])
    y = np.asarray(probas["valid"]["y"])[rows]
    valid = [np.asarray(p)[rows] for p in probas["valid"]["probas"]]
    test = [np.asarray(p) for p in probas["test"]["probas"]]
    saved, weights, stacker, search = fit_method("auto", valid, y, k, seed=seed, bags=DEFAULT_BAGS,
                                                 member_calibration=member_calibration)
    test = apply_temperatures(test, search["member_temperatures"], False)  # as the saved ensemble scales its members
    proba = stacker_proba(stacker, test, k) if saved == "stacking" else weighted_average(test, weights)
    auto = search["auto"]
    record = {"chosen": search["chosen"], "weights": weights,
              "cv_scores": {n: c["cv_score"] for n, c in auto["candidates"].items()},
              "versus_single": {n: {key: e[key] for key in ("gain", "ci_low", "se", "clear_win")}
                                for n, e in auto["rule"].get("versus_single", {}).items()},
              "reason": auto["rule"].get("reason")}
    return record, proba.argmax(axis=1)


def small_valid_case(probas: dict, rows: list[int], seed: int, member_calibration: str = "temperature") -> dict:
    """``auto`` fitted on the valid ``rows`` (:func:`fit_auto_on_rows`), scored on test against every member."""
    import numpy as np

    from textclf.services.compare.thresholds import macro_fbeta

    k = len(probas["labels"])
    y_test = np.asarray(probas["test"]["y"])
    record, pred = fit_auto_on_rows(probas, rows, seed, member_calibration)
    members = [macro_fbeta(y_test, np.asarray(p).argmax(axis=1), k) for p in probas["test"]["probas"]]
    return {**record, "test_macro_f1": macro_fbeta(y_test, pred, k), "members_test_macro_f1": members,
            "best_member_test_macro_f1": max(members)}


def subsample_rows(n_valid: int, size: int, i: int) -> list[int]:
    """Subsample ``i``'s valid rows: ``size`` of ``n_valid`` drawn without replacement (seed 1000 + i), sorted."""
    import numpy as np

    return np.sort(np.random.default_rng(1000 + i).choice(n_valid, min(size, n_valid), replace=False)).tolist()


def judge_case(case: dict) -> dict:
    """Add the case's ``gain`` over the best member on test and whether it is within the tolerance (``ok``)."""
    case["gain"] = case["test_macro_f1"] - case["best_member_test_macro_f1"]
    case["ok"] = bool(case["gain"] >= -SMALL_VALID_TOLERANCE)
    return case


def echo_case(echo, case: dict) -> None:
    """One progress line of a case."""
    echo(f"  subsample {case['subsample']} ({case['rows']} rows): auto -> {case['chosen']}, test macro-F1 "
         f"{case['test_macro_f1']:.4f} vs best member {case['best_member_test_macro_f1']:.4f} ({case['gain']:+.4f})")


def member_probas(paths: dict, work: Path, reuse: bool, echo) -> tuple[dict, dict]:
    """Train (or reuse) the cheap members on ``paths`` under ``work``: their records and valid/test probabilities."""
    records, dirs = {}, []
    for member, family, overrides, code in SMALL_VALID_MEMBERS:
        records[member] = train_member(member, family, overrides, code, paths, work, reuse, echo)
        dirs.append(str(work / member))
    return records, in_child(job_probas, dirs, paths)


def bench_small_valid(name: str, paths: dict, work: Path, args: dict, echo) -> dict:
    """Train the cheap members once, then ``auto`` on ``args['subsamples']`` random small subsamples of valid."""
    if args.get("rotations"):
        return bench_small_valid_rotations(paths, work, args, echo)
    result: dict = {"status": "ok", "cases": []}
    result["members"], probas = member_probas(paths, work, args["reuse"], echo)
    n_valid = len(probas["valid"]["y"])
    for i in range(args["subsamples"]):
        rows = subsample_rows(n_valid, args["small_valid"], i)
        case = judge_case({"subsample": i, "seed": 1000 + i, "rows": len(rows),
                           **small_valid_case(probas, rows, 13, args["member_calibration"])})
        result["cases"].append(case)
        echo_case(echo, case)
    return result


def bench_small_valid_rotations(paths: dict, work: Path, args: dict, echo) -> dict:
    """``--rotations K``: the members trained on each of K rotations over all the dataset's rows; test pooled.

    Rotation ``r`` (:func:`bench_common.rotation_paths`) trains the members on its train part; subsample ``i``
    fits ``auto`` on ``args['small_valid']`` rows of the rotation's valid fold (seed 1000 + i) and predicts its
    test fold. Case ``i`` then scores ``auto``'s predictions of all K test folds together (every row of the
    dataset once) against each member's pooled test predictions: a 592-row test split tells two members
    0.01 macro-F1 apart by a handful of texts, the pooled one by ten times as many.
    """
    import numpy as np

    from textclf.services.compare.thresholds import macro_fbeta

    k = args["rotations"]
    if k < 3:
        raise click.BadParameter(f"expected at least 3 rotations (a test, a valid and a train fold), got {k}",
                                 param_hint="--rotations")
    result: dict = {"status": "ok", "rotations": k, "members": {}, "cases": []}
    labels, y, member_preds, auto_preds, records = None, [], [], [[] for _ in range(args["subsamples"])], []
    rotations = rotation_paths(paths, work, k)
    for _, family, overrides, _ in SMALL_VALID_MEMBERS:
        if family == "embeddings":
            primed = in_child(job_prime_embeddings, rotations, overrides)
            result["embedding_cache"] = primed
            echo(f" {primed['texts']} texts encoded once for every rotation ({primed['wall_s']:.0f} s)")
    for r, rot in enumerate(rotations):
        echo(f" rotation {r + 1}/{k}:")
        members, probas = member_probas(rot, work / f"rotation{r}", args["reuse"], echo)
        for member, record in members.items():
            result["members"].setdefault(member, []).append(record)
        if labels is None:
            labels = probas["labels"]
        elif probas["labels"] != labels:
            raise ValueError(f"rotation {r}: the members' label order {probas['labels']} is not rotation 0's {labels}")
        y.append(np.asarray(probas["test"]["y"]))
        member_preds.append([np.asarray(p).argmax(axis=1) for p in probas["test"]["probas"]])
        n_valid = len(probas["valid"]["y"])
        records.append([])
        for i in range(args["subsamples"]):
            record, pred = fit_auto_on_rows(probas, subsample_rows(n_valid, args["small_valid"], i), 13,
                                            args["member_calibration"])
            records[-1].append({"rotation": r, "n_valid": n_valid, "n_test": len(pred), **record})
            auto_preds[i].append(pred)
    y_all = np.concatenate(y)
    members = [macro_fbeta(y_all, np.concatenate([p[m] for p in member_preds]), len(labels))
               for m in range(len(SMALL_VALID_MEMBERS))]
    for i in range(args["subsamples"]):
        per_rotation = [rotation[i] for rotation in records]
        chosen = [c["chosen"] for c in per_rotation]
        case = judge_case({"subsample": i, "seed": 1000 + i, "rows": min(args["small_valid"], per_rotation[0]["n_valid"]),
                           "chosen": " + ".join(f"{c} x{chosen.count(c)}" for c in sorted(set(chosen))),
                           "test_macro_f1": macro_fbeta(y_all, np.concatenate(auto_preds[i]), len(labels)),
                           "members_test_macro_f1": members, "best_member_test_macro_f1": max(members),
                           "n_test": len(y_all), "per_rotation": per_rotation})
        result["cases"].append(case)
        echo_case(echo, case)
    return result


def small_valid_table(datasets: dict) -> tuple[str, dict]:
    """The markdown table of the ``--small_valid`` cases and the target check."""
    lines = ["| dataset | members' test macro-F1 (fastText, tfidf, MiniLM) | auto's choice per subsample | "
             "auto test macro-F1 (mean) | gain over best member (per subsample) | ok |", "|---|---|---|---:|---|---:|"]
    cases = []
    for name, r in datasets.items():
        if r.get("status") != "ok":
            continue
        cs = r["cases"]
        cases += cs
        members = ", ".join(f"{v:.4f}" for v in cs[0]["members_test_macro_f1"])
        gains = ", ".join(f"{c['gain']:+.4f}" for c in cs)
        lines.append(f"| {name} | {members} | {', '.join(c['chosen'] for c in cs)} | "
                     f"{sum(c['test_macro_f1'] for c in cs) / len(cs):.4f} | {gains} | {sum(c['ok'] for c in cs)}/{len(cs)} |")
    ok = sum(c["ok"] for c in cases)
    mean_gain = sum(c["gain"] for c in cases) / len(cases) if cases else float("nan")
    target = {"cases": len(cases), "ok": ok, "mean_gain": mean_gain,
              "met": bool(cases and ok >= 0.9 * len(cases) and mean_gain >= 0)}
    return "\n".join(lines), target


# --------------------------------------------------------------------------- one dataset
def member_specs(args: dict) -> list[tuple[str, str, list[str], str | None]]:
    """``(name, family, overrides, code file)`` of every member."""
    specs = [("fasttext", "fasttext", [f"search.n_trials={args['ft_trials']}", f"search.timeout={args['ft_budget_s']}"], None),
             ("embeddings", "embeddings", [f"search.n_trials={args['emb_trials']}", f"search.space.encoder={MINILM_ONLY}",
                                           f"search.space.classifier={EMB_CLASSIFIERS}", "encoder.name=minilm"], None)]
    if args["tfidf"]:
        specs.append(("tfidf_logreg", "tfidf_logreg", [f"search.n_trials={args['tfidf_trials']}"], str(PLUGIN)))
    return specs


def holdout_paths(paths: dict, work: Path, frac: float) -> tuple[dict, dict]:
    """Split valid (stratified, seed 13) into the part the members tune on and the part the ensembles learn on."""
    from textclf.core.data import read_labelled, stratified_split, write_labelled

    tune, held, _ = stratified_split(read_labelled(paths["valid"]), valid_frac=frac, test_frac=0.0, seed=13)
    tune_path, held_path = work / "valid_tune.csv", work / "valid_ensemble.csv"
    write_labelled(tune_path, tune)
    write_labelled(held_path, held)
    return {**paths, "valid": str(tune_path)}, {**paths, "valid": str(held_path)}


def reusable_member(out: Path, paths: dict, overrides: list[str]) -> dict | None:
    """The training record of a member already trained into ``out`` on the same data and settings, or None.

    Same data: its meta.json's ``data_sha256`` is the hash of these train, valid and test files' bytes.
    Same settings: its record's ``overrides`` (search trials and budget) equal ``overrides``.
    """
    from textclf.core.data import sha256_files
    from textclf.core.meta import read_meta

    record = out.parent / f"{out.name}.job.json"
    if not (out / "meta.json").is_file() or not record.is_file():
        return None
    if read_meta(out).get("data_sha256") != sha256_files([paths["train"], paths["valid"], paths["test"]]):
        return None
    r = json.loads(record.read_text())
    return {**r, "reused": True} if r.get("overrides") == overrides else None


def train_member(member: str, family: str, overrides: list[str], code: str | None, paths: dict, work: Path,
                 reuse: bool, echo) -> dict:
    """Train one member into ``work/member`` (or, with ``reuse``, read back the one already there)."""
    from textclf.core.atomic import atomic_write_json

    out = work / member
    r = reusable_member(out, paths, overrides) if reuse else None
    if r is None:
        if out.exists():
            shutil.rmtree(out)
        echo(f"  train {member} ...")
        r = in_child(job_train, family, paths, str(out), overrides, code)
        r["overrides"] = overrides
        atomic_write_json(out.parent / f"{out.name}.job.json", r)
    else:
        echo(f"  reuse {member} ({out})")
    echo(f"    valid macro-F1 {r['valid']['macro_f1']:.4f}  test macro-F1 {r['test']['macro_f1']:.4f}  "
         f"({r['search']['n_trials']} trials, {r['train_wall_s']:.0f} s)")
    return r


def grid_row(weighted: dict) -> dict:
    """The ``weighted_grid`` row: the plain grid search's weights, scored by the bagged weighted job."""
    g = weighted["grid"]
    return {"method": "weighted", "saved_method": "weighted", "chosen": "weighted", "objective": "fbeta", "bags": 0,
            "build_wall_s": None, "weights": g["weights"], "valid": g["valid"], "test": g["test"],
            "search": {"strategy": "plain simplex grid (the bagged search's unbagged weights)"}}


def bench_dataset(name: str, paths: dict, work: Path, args: dict, echo) -> dict:
    """Members, ensembles and thresholds on one dataset."""
    result: dict = {"status": "ok", "paths": paths, "members": {}, "ensembles": {}, "thresholds": {}}
    member_paths = ensemble_paths = paths
    if args["holdout"]:
        member_paths, ensemble_paths = holdout_paths(paths, work, args["holdout"])
        result["holdout"] = {"members_valid": member_paths["valid"], "ensemble_valid": ensemble_paths["valid"],
                             "fraction": args["holdout"]}
        echo(f"  valid split: members tune on {member_paths['valid']}, ensembles and thresholds learn on "
             f"{ensemble_paths['valid']}")
    dirs = {}
    for member, family, overrides, code in member_specs(args):
        result["members"][member] = train_member(member, family, overrides, code, member_paths, work, args["reuse"], echo)
        dirs[member] = str(work / member)
    members = list(dirs.values())
    for key, method, objective in ENSEMBLES:
        echo(f"  ensemble {key} ...")
        out = work / f"ensemble_{key}"
        r = in_child(job_ensemble, members, ensemble_paths, str(out), method, 1.0, objective, args["bags"])
        result["ensembles"][key] = r
        dirs[f"ensemble_{key}"] = str(out)
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(result["members"], r["weights"] or [], strict=False))
        chosen = f" (auto chose {r['chosen']})" if method == "auto" else ""
        echo(f"    test macro-F1 {r['test']['macro_f1']:.4f}{chosen}" + (f"  weights: {weights}" if weights else ""))
        if "grid" in r:  # the plain grid search's weights, scored in the same job
            if key == "weighted":
                result["ensembles"]["weighted_grid"] = grid_row(r)
            echo(f"    plain grid weights {r['grid']['weights']}: test macro-F1 {r['grid']['test']['macro_f1']:.4f}")
    result["ensembles"] = {k: result["ensembles"][k] for k in ROWS if k in result["ensembles"]}
    for model in [*result["members"], *THRESHOLD_ENSEMBLES]:
        echo(f"  tune-thresholds {model} (beta {args['threshold_beta']:g}) ...")
        r = in_child(job_thresholds, dirs[model], ensemble_paths, args["threshold_beta"])
        result["thresholds"][model] = r
        f = r["metric"]
        echo(f"    valid {f} {r['valid_before']:.4f} -> {r['valid_after']:.4f}; test {f} "
             f"{r['test_before']['macro_f0.5']:.4f} -> {r['test_after']['macro_f0.5']:.4f}")
    result["targets"] = targets_of(result)
    return result


def targets_of(result: dict) -> dict:
    """The best member on test and, per ensemble, whether it is >= / > that member's test macro-F1."""
    best_name = max(result["members"], key=lambda m: result["members"][m]["test"]["macro_f1"])
    best = result["members"][best_name]["test"]["macro_f1"]
    targets = {"best_member": best_name, "best_member_test_macro_f1": best}
    for method, r in result["ensembles"].items():  # rounded to 4 places, as every table shows them
        targets[f"{method}_ge_best"] = r["test"]["macro_f1"] >= best
        targets[f"{method}_gt_best"] = r["test"]["macro_f1"] > best
    return targets


def _wall(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def _valid_cell(e: dict) -> str:
    """Valid column of an ensemble: auto's out-of-fold score of its choice, stacking's CV score, else in-sample valid."""
    auto = e["search"].get("auto")
    if auto:
        return f"{auto['candidates'][auto['chosen']]['cv_score']:.4f} (CV)"
    cv = e["search"].get("cv_score")  # stacking: the stacker's 5-fold CV score (in-sample valid says little)
    return f"{cv:.4f} (CV)" if cv is not None else f"{e['valid']['macro_f1']:.4f}"


def _detail_cell(e: dict) -> str:
    """Weights or stacker params; for auto also what it chose and the candidates' CV scores."""
    if e["weights"]:
        detail = ", ".join(f"{w:.2f}" for w in e["weights"])
    else:
        detail = f"C={e['search']['params']['C']:g}, class_weight={e['search']['params']['class_weight']}"
    auto = e["search"].get("auto")
    if auto:
        scores = ", ".join(f"{n} {c['cv_score']:.4f}" for n, c in auto["candidates"].items() if c["cv_score"] is not None)
        detail = f"chose {auto['chosen']} (CV: {scores}); {detail}"
    return detail


def markdown_tables(datasets: dict) -> str:
    """Members and ensembles per dataset, then the thresholds' test-set change."""
    rows = ["| dataset | model | valid macro-F1 | test accuracy | test macro-F1 | weights (members in order) / stacker | trials "
            "| wall s |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, r in datasets.items():
        if r["status"] != "ok":
            rows.append(f"| {name} | skipped: {r['reason']} | | | | | | |")
            continue
        for member, m in r["members"].items():
            mark = " (best member)" if member == r["targets"]["best_member"] else ""
            rows.append(f"| {name} | {member}{mark} | {m['valid']['macro_f1']:.4f} | {m['test']['accuracy']:.4f} | "
                        f"{m['test']['macro_f1']:.4f} | | {m['search']['n_trials']} | {_wall(m['train_wall_s'])} |")
        for method, e in r["ensembles"].items():
            best = r["targets"]["best_member_test_macro_f1"]
            delta = e["test"]["macro_f1"] - best
            rows.append(f"| {name} | **ensemble {method}** ({delta:+.4f} vs best) | {_valid_cell(e)} | "
                        f"{e['test']['accuracy']:.4f} | **{e['test']['macro_f1']:.4f}** | {_detail_cell(e)} | | "
                        f"{_wall(e['build_wall_s'])} |")
    rows += ["", "| dataset | model | valid macro-F0.5 untuned -> tuned | test macro-F0.5 untuned -> tuned | change | "
             "test macro-F1 untuned -> tuned | change |", "|---|---|---|---|---:|---|---:|"]
    for name, r in datasets.items():
        if r["status"] != "ok":
            continue
        for model, t in r["thresholds"].items():
            b, a = t["test_before"], t["test_after"]
            rows.append(f"| {name} | {model} | {t['valid_before']:.4f} -> {t['valid_after']:.4f} | {b['macro_f0.5']:.4f} -> "
                        f"{a['macro_f0.5']:.4f} | {a['macro_f0.5'] - b['macro_f0.5']:+.4f} | {b['macro_f1']:.4f} -> "
                        f"{a['macro_f1']:.4f} | {a['macro_f1'] - b['macro_f1']:+.4f} |")
    return "\n".join(rows)


def summary(datasets: dict) -> dict:
    """Which targets hold, per method: ensemble >= best member everywhere, > on at least half."""
    ok = {n: r for n, r in datasets.items() if r["status"] == "ok"}
    out: dict = {}
    for method in ROWS:
        if not any(f"{method}_ge_best" in r["targets"] for r in ok.values()):
            continue
        ge = {n: r["targets"].get(f"{method}_ge_best", False) for n, r in ok.items()}
        gt = {n: r["targets"].get(f"{method}_gt_best", False) for n, r in ok.items()}
        out[method] = {"ge_best": ge, "gt_best": gt,
                       "targets_met": bool(ok) and all(ge.values()) and sum(gt.values()) * 2 >= len(gt)}
    return out


def run_small_valid(datasets: str, data_root: str, output: str | None, keep: str | None, reuse: bool, size: int,
                    subsamples: int, member_calibration: str = "temperature", rotations: int = 0) -> None:
    """The ``--small_valid`` experiment over the datasets; a table and ``ensemble_small_valid.json``
    (``ensemble_small_valid_rotations.json`` with ``rotations``)."""
    from textclf.core.atomic import atomic_write_json

    default = "ensemble_small_valid_rotations.json" if rotations else "ensemble_small_valid.json"
    output = Path(output or REPO / "benchmarks" / "results" / default)
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    echo = make_echo(show_elapsed=True)
    args = {"reuse": reuse, "small_valid": size, "subsamples": subsamples, "member_calibration": member_calibration,
            "rotations": rotations}
    doc = {"benchmark": "ensemble_small_valid", "started": utc_now(),
           "command": " ".join(["python", "benchmarks/bench_ensemble.py", *sys.argv[1:]]),
           "settings": {**args, "datasets": names, "data_root": str(data_root),
                        "members": [list(m[:3]) for m in SMALL_VALID_MEMBERS], "tolerance": SMALL_VALID_TOLERANCE},
           "machine": machine_info(PACKAGES), "datasets": {}}
    root_tmp = None if keep else tempfile.TemporaryDirectory(prefix="bench-ensemble-sv-")
    root = Path(keep) if keep else Path(root_tmp.name)
    try:
        for name in names:
            paths = dataset_paths(data_root, name)
            if paths is None:
                echo(f"{name}: skipped, not under {data_root}")
                continue
            echo(f"{name}:")
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            doc["datasets"][name] = bench_small_valid(name, paths, work, args, echo)
            doc["table_markdown"], doc["target"] = small_valid_table(doc["datasets"])
            atomic_write_json(output, doc)
    finally:
        if root_tmp is not None:
            root_tmp.cleanup()
    doc["finished"] = utc_now()
    atomic_write_json(output, doc)
    t = doc["target"]
    click.echo(doc["table_markdown"])
    click.echo(f"\ntarget (issue 26): auto >= best member - {SMALL_VALID_TOLERANCE} in {t['ok']}/{t['cases']} cases (want "
               f">= 90 %), mean gain {t['mean_gain']:+.4f} (want >= 0): {'MET' if t['met'] else 'not met'}")
    click.echo(f"wrote {output}")


def merge_small_valid(paths: list[str], output: str | None) -> None:
    """One ``ensemble_small_valid.json`` from ``--small_valid`` runs over disjoint datasets (their settings must agree)."""
    from textclf.core.atomic import atomic_write_json

    docs = [json.loads(Path(p).read_text()) for p in paths]
    doc = {**docs[0], "datasets": {}, "merged_from": [{"path": p, "command": d["command"], "started": d["started"],
                                                       "finished": d.get("finished")} for p, d in zip(paths, docs, strict=True)]}
    def comparable(settings: dict) -> dict:  # the data root as the folder it names (a symlinked path is the same data)
        out = {k: v for k, v in settings.items() if k != "datasets"}
        if out.get("data_root"):
            out["data_root"] = str(Path(out["data_root"]).resolve())
        return out

    for d in docs:
        if comparable(d["settings"]) != comparable(docs[0]["settings"]):
            raise click.UsageError(f"--merge: {d['command']} ran with other settings")
        doc["datasets"].update(d["datasets"])
    doc["settings"]["datasets"] = list(doc["datasets"])
    doc["table_markdown"], doc["target"] = small_valid_table(doc["datasets"])
    output = Path(output or REPO / "benchmarks" / "results" / "ensemble_small_valid.json")
    atomic_write_json(output, doc)
    click.echo(doc["table_markdown"])
    t = doc["target"]
    click.echo(f"\n{t['ok']}/{t['cases']} cases ok, mean gain {t['mean_gain']:+.4f}: {'MET' if t['met'] else 'not met'}")


@click.command()
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma-separated dataset folder names.")
@click.option("--data_root", type=click.Path(file_okay=False), default=str(DATA_ROOT), show_default=True,
              help="Folder holding <dataset>/{train,valid,test}.csv.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Results JSON [default: benchmarks/results/ensemble.json, --quick: benchmarks/results/ensemble_quick.json].")
@click.option("--ft_trials", type=int, default=None, help="fastText Optuna trials [default: 30, --quick: 3].")
@click.option("--ft_budget_s", type=float, default=None, help="fastText search time budget [default: 400, --quick: 10].")
@click.option("--emb_trials", type=int, default=None, help="embeddings (MiniLM) Optuna trials [default: 12, --quick: 2].")
@click.option("--tfidf_trials", type=int, default=None, help="TF-IDF + logreg Optuna trials [default: 30, --quick: 2].")
@click.option("--tfidf/--no-tfidf", default=True, show_default=True, help="Include the TF-IDF plug-in family as a member.")
@click.option("--threshold_beta", type=float, default=0.5, show_default=True, help="F-beta the thresholds are tuned for.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the model directories under KEEP/<dataset>/ (default: a temporary folder, deleted).")
@click.option("--holdout", type=float, default=0.0, show_default=True,
              help="Split valid (stratified): the members tune on 1-HOLDOUT of it, the ensembles and thresholds learn on "
              "the HOLDOUT part they never saw. 0: everything uses the whole valid split.")
@click.option("--reuse", is_flag=True,
              help="With --keep: reuse the members already trained under KEEP/<dataset>/ on the same data (data_sha256) "
                   "with the same search settings.")
@click.option("--bags", type=int, default=None, help="Bootstrap resamples of the bagged weight search [default: the CLI's].")
@click.option("--quick", is_flag=True, help="Smoke check: tiny searches.")
@click.option("--small_valid", type=int, default=0, show_default=True,
              help="Instead: cheap members trained once, auto fitted on --subsamples random N-row subsamples of valid.")
@click.option("--subsamples", type=int, default=5, show_default=True, help="Subsamples of valid per dataset (--small_valid).")
@click.option("--member_calibration", type=click.Choice(["temperature", "none"]), default="temperature", show_default=True,
              help="With --small_valid: the ensembles' member calibration (textclf ensemble --member_calibration).")
@click.option("--rotations", type=int, default=0, show_default=True,
              help="With --small_valid: train the members on K rotations over all of a dataset's rows (test fold r, valid "
                   "fold r + 1) and score each subsample's auto on all K test folds together "
                   "(ensemble_small_valid_rotations.json; 0: the shipped split).")
@click.option("--merge", default=None, metavar="A.json,B.json",
              help="With --small_valid: merge the results of runs over other datasets (e.g. run in parallel) into --output.")
def main(datasets, data_root, output, ft_trials, ft_budget_s, emb_trials, tfidf_trials, tfidf, threshold_beta, keep, holdout,
         reuse, bags, quick, small_valid, subsamples, member_calibration, rotations, merge):
    """Members vs weighted and stacked ensembles, and threshold tuning, per shared dataset; a table and a JSON."""
    from textclf.services.compare.ensemble import DEFAULT_BAGS

    if reuse and not keep:
        raise click.UsageError("--reuse needs --keep DIR (where the members of an earlier run lie)")
    start_fork_server()  # before anything large is loaded: see bench_common
    if small_valid and merge:
        merge_small_valid(merge.split(","), output)
        return
    if small_valid:
        run_small_valid(datasets, data_root, output, keep, reuse, small_valid, subsamples, member_calibration, rotations)
        return
    args = {"reuse": reuse, "bags": DEFAULT_BAGS if bags is None else bags,
            "ft_trials": ft_trials or (3 if quick else 30), "ft_budget_s": ft_budget_s or (10.0 if quick else 400.0),
            "emb_trials": emb_trials or (2 if quick else 12), "tfidf_trials": tfidf_trials or (2 if quick else 30),
            "tfidf": tfidf, "threshold_beta": threshold_beta, "holdout": holdout, "quick": quick}
    if not 0 <= holdout < 1:
        raise click.BadParameter("must be in [0, 1)", param_hint="--holdout")
    default = "ensemble_quick.json" if quick else "ensemble_holdout.json" if holdout else "ensemble.json"
    output = Path(output or REPO / "benchmarks" / "results" / default)
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    echo = make_echo(show_elapsed=True)
    from textclf.core.atomic import atomic_write_json

    doc = {
        "benchmark": "ensemble",
        "started": utc_now(),
        "command": " ".join(["python", "benchmarks/bench_ensemble.py", *sys.argv[1:]]),
        "settings": {**args, "datasets": names, "data_root": str(data_root)},
        "machine": machine_info(PACKAGES),
        "notes": {
            "members": "each family trained through the registry (textclf.services.runs.fit_family) on train with its Optuna "
                       "search on valid, refitted on train; fastText: families/fasttext/config.json with search.n_trials/timeout; "
                       "embeddings: families/embeddings/config.json with the encoder fixed to minilm (the search picks classifier "
                       "among logreg, linear_svm, knn, mlp, its params and balance); tfidf_logreg: examples/plugins/tfidf_logreg.py",
            "ensembles": "textclf.services.compare.ensemble.build_ensemble on valid (beta 1: macro-F1); auto: 5-fold stratified CV "
                         "on valid "
                         "of the best single member, the bagged weighted average and stacking, the best pooled out-of-fold "
                         "macro-F1 wins (ties: the simpler) and is refitted on all of valid; weighted: simplex grid step 0.05 "
                         "maximising valid macro-F1 (ties: lower valid log-loss), bagged: the mean of the weights found on "
                         "'bags' stratified bootstrap resamples; weighted_grid: the plain grid's weights (no bagging), scored "
                         "in the weighted job; weighted_logloss: the same, minimising the valid log-loss; stacking: "
                         "LogisticRegression on the members' probabilities, C x class_weight by 5-fold stratified CV",
            "thresholds": "textclf.services.compare.thresholds.tune_thresholds on valid (coordinate search of per-class offsets on "
                          "log-probabilities, kept only when the same search beats the plain argmax out of fold in 5-fold "
                          "CV); test metrics from one predict_proba, decided without and with the offsets",
            "reuse": "with --reuse, members already trained in the --keep folder are reused (their record says "
                     "reused: true; train_wall_s is the original training's)",
            "valid_caveat": "without --holdout the members were tuned on the same valid split the ensemble weights and "
                            "thresholds learn from; with --holdout F valid is split (stratified, seed 13): the members tune "
                            "on 1-F of it, the ensembles and thresholds learn on the other F",
            "peak_rss": RSS_NOTE,
            "load": "the machine may be shared with other jobs: wall times are rough",
        },
        "datasets": {},
    }
    echo(f"ensemble benchmark: {', '.join(names)}; {doc['machine']['cores_usable']} cores; settings {args}")
    tmp = None
    if keep:
        root = Path(keep)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-ensemble-")
        root = Path(tmp.name)
    try:
        for name in names:
            paths = dataset_paths(data_root, name)
            if paths is None:
                echo(f"{name}: skipped, {Path(data_root) / name}/{{train,valid,test}}.csv not found")
                doc["datasets"][name] = {"status": "skipped", "reason": f"{Path(data_root) / name} not found"}
                continue
            echo(f"{name}:")
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            doc["datasets"][name] = bench_dataset(name, paths, work, args, echo)
            doc["summary"] = summary(doc["datasets"])
            atomic_write_json(output, doc)
    finally:
        if tmp is not None:
            tmp.cleanup()
    doc["finished"] = utc_now()
    doc["summary"] = summary(doc["datasets"])
    doc["table_markdown"] = markdown_tables(doc["datasets"])
    atomic_write_json(output, doc)
    click.echo(doc["table_markdown"])
    click.echo("\nTarget (issue 13): ensemble test macro-F1 >= the best member's on every dataset, > on at least half")
    for method, s in doc["summary"].items():
        click.echo(f"{method}: >= best on {sum(s['ge_best'].values())}/{len(s['ge_best'])}, > best on "
                   f"{sum(s['gt_best'].values())}/{len(s['gt_best'])}: target {'MET' if s['targets_met'] else 'not met'}")
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Benchmark what textclf says about its own confidence (issue 25, ``make bench_trust``), one section at a time.

``--section NAME`` (repeatable; default: every section) picks what runs; each section is one function
in :data:`SECTIONS` and writes its own ``benchmarks/results/trust_<section>.json`` (atomically, after
every dataset), so sections can be added (audit, explain) and rerun independently.

Section ``calibration``: for every dataset under ``--data_root`` (default ``<repo>/../shared/data``) and
every family of textclf (fastText with a short Optuna search, embeddings with the frozen MiniLM encoder and
logistic regression, the example plug-in TF-IDF + logistic regression, the BiLSTM, BERT (fine-tuned MiniLM, one
stage) and SetFit; the MiniLM families on a stratified sample of ``--emb_max_train`` / ``--torch_max_train``
training rows), a job in a fresh process:

  1. trains the family on train (``calibration: none``, search on valid);
  2. takes its uncalibrated probabilities on valid and test, fits every method on valid
     (``temperature``, ``bcts``, ``isotonic``, ``auto``: textclf.core.calibration, the code ``calibration=...``
     and ``textclf calibrate`` run) and scores test: accuracy, macro-F1, ECE (15 equal-width bins),
     adaptive ECE (15 equal-mass bins), Brier, log-loss, and the ECE floor (:func:`ece_floor`: what a perfectly
     calibrated model with the same confidences would measure on as many texts);
  3. runs ``textclf calibrate --method auto`` on the model directory, loads it again and checks that its
     ``predict_proba`` on test is what step 2 computed for ``auto``.

``--rotations K`` (K >= 3) pools train, valid and test, cuts them into K stratified folds and runs the job
K times (test fold r, valid fold r + 1, train the rest), then scores every method on all K test folds together:
ECE on every text of the dataset instead of one small test split (``trust_calibration_rotations.json``).

Targets (issue 25): test ECE <= 0.03 after calibration (``auto``) for every family on every dataset,
never worse than uncalibrated, accuracy and macro-F1 unchanged within noise (here: within two
binomial standard errors of the test accuracy, ``2 * sqrt(acc (1 - acc) / n)``)::

    python benchmarks/bench_trust.py --section calibration
    python benchmarks/bench_trust.py --section calibration --datasets tweets_sentiment --quick
    python benchmarks/bench_trust.py --section calibration --datasets tweets_sentiment --rotations 10 \
        --families fasttext,embeddings,tfidf_logreg
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
from bench_common import (
    DATA_ROOT,
    REPO,
    dataset_paths,
    in_child,
    machine_info,
    make_echo,
    peak_rss_mb,
    quiet_job,
    rotation_paths,
    start_fork_server,
    utc_now,
)

DATASETS = ("tweets_sentiment", "movie_review_sentences", "bbc_news", "spamassassin")
PLUGIN = REPO / "examples" / "plugins" / "tfidf_logreg.py"
PACKAGES = ("textclf", "fasttext-community", "torch", "sentence-transformers", "scikit-learn", "scipy", "numpy")
METHODS = ("none", "temperature", "bcts", "isotonic", "auto")
ECE_TARGET = 0.03
#: test rows the stored-calibration round trip predicts again
ROUND_TRIP_ROWS = 200


_quiet = quiet_job


# --------------------------------------------------------------------------- section: calibration
def calibration_specs(quick: bool, emb_max_train: int = 2000, torch_max_train: int = 1000) -> list[tuple]:
    """``(name, family, overrides, code file, max training rows or 0)`` of every family the calibration section trains.

    Every family of textclf: fastText (short search), the embeddings family (frozen MiniLM + logreg), the TF-IDF
    plug-in (short search), the BiLSTM, BERT (fine-tuned MiniLM, one stage) and SetFit, with their defaults. The
    transformer families train on a stratified sample of ``max training rows`` (the encoder is the slow part on a
    small CPU; 0: all rows).
    """
    ft_trials = 2 if quick else 8
    cpu = ["device=cpu"]
    return [("fasttext", "fasttext", [f"search.n_trials={ft_trials}", "search.timeout=300", "model.bucket=200000"], None, 0),
            ("embeddings", "embeddings", ["encoder.name=minilm", "classifier=logreg", "search.n_trials=0"], None,
             emb_max_train),
            ("tfidf_logreg", "tfidf_logreg", [f"search.n_trials={2 if quick else 8}"], str(PLUGIN), 0),
            ("lstm", "lstm", [*cpu, *(["train.epochs=2"] if quick else [])], None, 0),
            ("bert", "bert", [*cpu, "two_stage=false", *(["stage2.epochs=1"] if quick else [])], None, torch_max_train),
            ("setfit", "setfit", cpu, None, torch_max_train)]


#: the families a calibration run trains unless --families says otherwise: all of them, in their order
DEFAULT_CALIBRATION_FAMILIES = tuple(spec[0] for spec in calibration_specs(quick=False))


def _scores(y, proba, labels) -> dict:
    """Test accuracy, macro-F1 and the calibration metrics of probabilities (argmax decisions)."""
    from textclf.core.metrics import calibration_metrics, classification_metrics

    pred = proba.argmax(axis=1)
    m = classification_metrics([labels[i] for i in y], [labels[i] for i in pred], labels, betas=(1.0,))
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            **{k: round(v, 6) for k, v in calibration_metrics(proba, y, "multiclass").items()}}


def job_calibration(family: str, paths: dict, out: str, overrides: list[str], code: str | None, reuse: bool = False,
                    keep_proba: bool = False) -> dict:
    """Train ``family`` uncalibrated, compare every calibration method on test, check ``textclf calibrate``'s stored one.

    ``reuse``: a model already in ``out`` (an earlier run's, ``--keep DIR --reuse``) is scored instead of trained again.
    ``keep_proba``: also return every method's test probabilities, the labels and the gold indices (``proba``), which
    ``--rotations`` pools over its rotations.
    """
    _quiet()
    import numpy as np

    from textclf.core.calibration import fit_calibration
    from textclf.core.config import load_config
    from textclf.core.data import batched
    from textclf.core.loading import load_predictor
    from textclf.core.registry import get_family, load_code
    from textclf.core.training import load_splits
    from textclf.services.calibrate import calibrate_model
    from textclf.services.compare.thresholds import label_indices
    from textclf.services.runs import fit_family

    if code:
        load_code(code)
    cfg = load_config(family, overrides=[*overrides, "calibration=none"])
    splits = load_splits(paths["train"], paths["valid"], paths["test"], cfg["data"])
    start = time.perf_counter()
    reused = reuse and (Path(out) / "meta.json").is_file()
    if not reused:
        fit_family(get_family(family), cfg, splits, out, False)
    train_s = None if reused else round(time.perf_counter() - start, 1)
    predictor = load_predictor(out)
    labels = list(predictor.labels)

    def proba_of(texts):  # the family's own probabilities (a reused model may carry a calibration already)
        return np.vstack([predictor.uncalibrated_proba(b) for b in batched(texts, 512)])

    pv, pt = proba_of(splits.valid.texts), proba_of(splits.test.texts)
    yv, yt = label_indices(splits.valid.labels, labels), label_indices(splits.test.labels, labels)
    rows, fitted = {}, {}
    for method in METHODS:
        start = time.perf_counter()
        cal, record = (None, {"chosen": "none"}) if method == "none" else fit_calibration(method, pv, yv, labels, "multiclass")
        fit_s = time.perf_counter() - start
        after = pt if cal is None else cal.apply(pt)
        fitted[method] = after
        rows[method] = {**_scores(yt, after, labels), "chosen": record["chosen"], "fit_s": round(fit_s, 3),
                        **({"cv_log_loss": record["cv_log_loss"]} if "cv_log_loss" in record else {})}
    block = calibrate_model(out, paths["valid"], "auto")
    stored = load_predictor(out)
    check = min(len(yt), ROUND_TRIP_ROWS)
    diff = float(np.abs(proba_of_loaded(stored, splits.test.texts[:check]) - fitted["auto"][:check]).max())
    n = len(yt)
    acc = rows["none"]["accuracy"]
    entry = {"family": family, "train_rows": len(splits.train), "n_valid": len(yv), "n_test": n,
             "train_wall_s": train_s, "reused": reused, "peak_rss_mb": peak_rss_mb(),
             "methods": rows, "stored_auto": {"chosen": block["chosen"], "max_abs_diff_vs_bench": diff},
             "noise_2se": noise_2se(acc, n), "ece_floor": ece_floor(fitted["auto"], n),
             "ece_floor_p95": ece_floor(fitted["auto"], n, quantile=0.95)}
    if keep_proba:
        entry["proba"] = {"labels": labels, "y": yt, "methods": fitted}
    return entry


def ece_floor(proba, n: int, draws: int = 300, seed: int = 0, quantile: float | None = None) -> float:
    """The test ECE a perfectly calibrated model with these confidences would show on ``n`` texts, on average.

    Each draw resamples ``n`` top-label confidences from ``proba`` (with replacement) and draws "right" with exactly
    that probability, so the model is calibrated by construction; the mean 15-bin ECE over ``draws`` draws is
    what sampling alone adds to a measurement on ``n`` texts (``quantile``: that quantile of the draws instead,
    e.g. 0.95: a perfectly calibrated model measures above it one time in 20).
    """
    import numpy as np

    from textclf.core.metrics import expected_calibration_error

    rng = np.random.default_rng(seed)
    conf = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0).max(axis=1)
    eces = []
    for _ in range(draws):
        c = rng.choice(conf, size=n, replace=True)
        eces.append(expected_calibration_error(c, rng.random(n) < c))
    return round(float(np.mean(eces) if quantile is None else np.quantile(eces, quantile)), 4)


def noise_2se(accuracy: float, n: int) -> float:
    """Two binomial standard errors of an accuracy measured on ``n`` texts (what "within noise" allows)."""
    return round(2 * (accuracy * (1 - accuracy) / max(n, 1)) ** 0.5, 4)


def proba_of_loaded(predictor, texts):
    """``predict_proba`` of a loaded model over ``texts`` in batches."""
    import numpy as np

    from textclf.core.data import batched

    return np.vstack([predictor.predict_proba(b) for b in batched(texts, 512)])


def capped_train(paths: dict, work: Path, max_rows: int) -> tuple[dict, int]:
    """``paths`` with train replaced by a stratified sample of at most ``max_rows`` rows (seed 13); and its size."""
    from textclf.core.data import read_labelled, stratified_split, write_labelled

    train = read_labelled(paths["train"])
    if len(train) <= max_rows:
        return paths, len(train)
    _, sample, _ = stratified_split(train, valid_frac=max_rows / len(train), test_frac=0.0, seed=13)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"train_{max_rows}.csv"
    write_labelled(path, sample)
    return {**paths, "train": str(path)}, len(sample)


def calibration_targets(entry: dict) -> dict:
    """The issue's checks for one (dataset, family): ECE <= target, not worse than none, accuracy/F1 within noise."""
    none, auto = entry["methods"]["none"], entry["methods"]["auto"]
    noise = entry["noise_2se"]
    return {"ece_le_0.03": auto["ece"] <= ECE_TARGET, "ece_not_worse": auto["ece"] <= none["ece"] + 1e-12,
            "accuracy_within_noise": abs(auto["accuracy"] - none["accuracy"]) <= noise,
            "macro_f1_within_noise": abs(auto["macro_f1"] - none["macro_f1"]) <= noise}


def calibration_table(datasets: dict) -> str:
    """The markdown table of the calibration section: test metrics uncalibrated vs every method."""
    lines = ["| dataset | family | train rows | n test | method | accuracy | macro-F1 | ECE | adaptive ECE | Brier | log-loss "
             "| auto chose |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, entries in datasets.items():
        for e in entries:
            for method in METHODS:
                r = e["methods"][method]
                chose = r["chosen"] if method == "auto" else ""
                lines.append(f"| {name} | {e['family']} | {e['train_rows']} | {e['n_test']} | {method} | {r['accuracy']:.4f} | "
                             f"{r['macro_f1']:.4f} | "
                             f"{r['ece']:.4f} | {r['ece_adaptive']:.4f} | {r['brier']:.4f} | {r['log_loss']:.4f} | {chose} |")
    return "\n".join(lines)


def calibration_summary_table(datasets: dict) -> str:
    """One row per (dataset, family): test ECE of every method, the auto choice, accuracy/macro-F1 change, the targets."""
    lines = ["| dataset | family | train rows | test rows | ECE none | temperature | bcts | isotonic | auto (chose) | adaptive ECE "
             "none -> auto | log-loss none -> auto | accuracy none -> auto | macro-F1 none -> auto | ECE <= 0.03 | not worse "
             "| ECE floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---:|"]
    for name, entries in datasets.items():
        for e in entries:
            if "methods" not in e:
                lines.append(f"| {name} | {e['family']} | {e.get('error', '?')} |" + " |" * 13)
                continue
            m, t = e["methods"], e["targets"]
            n, a = m["none"], m["auto"]
            lines.append(f"| {name} | {e['family']} | {e['train_rows']} | {e['n_test']} | {n['ece']:.4f} | "
                         f"{m['temperature']['ece']:.4f} | {m.get('bcts', {}).get('ece', float('nan')):.4f} | "
                         f"{m['isotonic']['ece']:.4f} | {a['ece']:.4f} ({a['chosen']}) | "
                         f"{n['ece_adaptive']:.4f} -> {a['ece_adaptive']:.4f} | {n['log_loss']:.3f} -> {a['log_loss']:.3f} | "
                         f"{n['accuracy']:.4f} -> {a['accuracy']:.4f} | {n['macro_f1']:.4f} -> {a['macro_f1']:.4f} | "
                         f"{'yes' if t['ece_le_0.03'] else 'no'} | {'yes' if t['ece_not_worse'] else 'no'} | "
                         f"{e.get('ece_floor', float('nan')):.4f} |")
    return "\n".join(lines)


def new_result(benchmark: str, args: dict, **settings) -> dict:
    """The results document of a calibration run before any dataset: machine, command-line settings, ``settings``."""
    return {"benchmark": benchmark, "started": utc_now(), "machine": machine_info(PACKAGES),
            "settings": {"quick": args["quick"], "emb_max_train": args["emb_max_train"], "ece_bins": 15, "ece_target": ECE_TARGET,
                         "families": {n: {"overrides": o, "max_train_rows": m} for n, _, o, _, m in specs(args)},
                         **settings},
            "datasets": {}}


def keep_entry(result: dict, output: Path, dataset: str, entry: dict) -> dict:
    """Add the issue's checks to ``entry``, append it to ``result``'s dataset and write ``output`` (atomically)."""
    from textclf.core.atomic import atomic_write_json

    entry["targets"] = calibration_targets(entry)
    result["datasets"].setdefault(dataset, []).append(entry)
    atomic_write_json(output, result)
    return entry


def finish_calibration(result: dict, output: Path) -> None:
    """Count the targets met over the entries that ran, stamp ``finished``, write ``output`` and print the table."""
    from textclf.core.atomic import atomic_write_json

    ok = [e for entries in result["datasets"].values() for e in entries if "targets" in e]
    result["summary"] = {key: f"{sum(e['targets'][key] for e in ok)}/{len(ok)}"
                         for key in ("ece_le_0.03", "ece_not_worse", "accuracy_within_noise", "macro_f1_within_noise")}
    result["finished"] = utc_now()
    atomic_write_json(output, result)
    click.echo(calibration_summary_table(result["datasets"]))


def specs(args: dict) -> list[tuple]:
    """:func:`calibration_specs` with the command line's settings."""
    return calibration_specs(args["quick"], args["emb_max_train"], args.get("torch_max_train", 1000))


def pooled_entry(runs: list[dict]) -> dict:
    """One calibration entry from the rotations' runs: every method scored on all their test rows together."""
    import numpy as np

    labels = runs[0]["proba"]["labels"]
    if any(r["proba"]["labels"] != labels for r in runs):
        raise ValueError("the rotations' models have different label sets")
    y = np.concatenate([r["proba"]["y"] for r in runs])
    methods = {}
    for method in METHODS:
        proba = np.vstack([r["proba"]["methods"][method] for r in runs])
        chosen = [r["methods"][method]["chosen"] for r in runs]
        methods[method] = {**_scores(y, proba, labels), "chosen": ",".join(sorted(set(chosen))) if method == "auto" else method}
    per_rotation = [{k: r[k] for k in ("train_rows", "n_valid", "n_test", "train_wall_s", "stored_auto")}
                    | {m: {k: r["methods"][m][k] for k in ("ece", "ece_adaptive", "accuracy", "macro_f1", "chosen")}
                       for m in METHODS} for r in runs]
    auto = np.vstack([r["proba"]["methods"]["auto"] for r in runs])
    return {"train_rows": runs[0]["train_rows"], "n_valid": runs[0]["n_valid"], "n_test": len(y),
            "rotations": len(runs), "methods": methods, "per_rotation": per_rotation,
            "noise_2se": noise_2se(methods["none"]["accuracy"], len(y)),
            "ece_floor": ece_floor(auto, len(y)), "ece_floor_p95": ece_floor(auto, len(y), quantile=0.95),
            "ece_floor_one_rotation": ece_floor(auto, runs[0]["n_test"]),
            "ece_floor_one_rotation_p95": ece_floor(auto, runs[0]["n_test"], quantile=0.95)}


def calibration_rotations(args: dict, echo) -> dict:
    """``--rotations K``: each family trained K times over rotating splits; test ECE on every row of the dataset.

    One test split of a few hundred texts measures ECE with a sampling error near the 0.03 target itself (see
    benchmarks/README.md); pooling the K held-out test folds (each predicted by a model that never saw it,
    calibrated on its own valid fold) measures the same quantity on K times the texts.
    Writes ``trust_calibration_rotations.json``.
    """
    k = args["rotations"]
    if k < 3:
        raise click.BadParameter(f"expected at least 3 rotations (a test, a valid and a train fold), got {k}",
                                 param_hint="--rotations")
    output = Path(args["output_dir"]) / "trust_calibration_rotations.json"
    result = new_result("trust_calibration_rotations", args, rotations=k, fold_seed=13,
                        noise="2 binomial standard errors of the pooled uncalibrated test accuracy")
    work = Path(args["keep"] or tempfile.mkdtemp(prefix="bench-trust-"))
    by_name = {spec[0]: spec for spec in specs(args)}
    for name in args["datasets"]:
        paths = dataset_paths(args["data_root"], name)
        if paths is None:
            echo(f"{name}: not found under {args['data_root']}, skipped")
            continue
        rotations = rotation_paths(paths, work / name, k)
        for member in args.get("families") or DEFAULT_CALIBRATION_FAMILIES:
            _, family, overrides, code, max_train = by_name[member]
            runs = []
            for r, rot in enumerate(rotations):
                echo(f"{name}: {member} rotation {r + 1}/{k} ...")
                job_paths = rot
                if max_train:
                    job_paths, _ = capped_train(rot, work / name / f"rotation{r}", max_train)
                runs.append(in_child(job_calibration, family, job_paths, str(work / name / f"rotation{r}" / member),
                                     overrides, code, bool(args.get("reuse")), True))
            entry = keep_entry(result, output, name, {"family": member, **pooled_entry(runs)})
            a, n = entry["methods"]["auto"], entry["methods"]["none"]
            echo(f"{name}: {member}: pooled test ECE ({entry['n_test']} texts) {n['ece']:.4f} -> {a['ece']:.4f}, "
                 f"per rotation auto {[round(x['auto']['ece'], 4) for x in entry['per_rotation']]}")
    finish_calibration(result, output)
    click.echo("\n" + json.dumps(result["summary"]))
    return result


def section_calibration(args: dict, echo) -> dict:
    """Run the calibration section over the datasets; returns the results (also written to trust_calibration.json)."""
    if args.get("rotations"):
        return calibration_rotations(args, echo)
    output = Path(args["output_dir"]) / "trust_calibration.json"
    result = new_result("trust_calibration", args, noise="2 binomial standard errors of the uncalibrated test accuracy")
    work = Path(args["keep"] or tempfile.mkdtemp(prefix="bench-trust-"))
    for name in args["datasets"]:
        paths = dataset_paths(args["data_root"], name)
        if paths is None:
            echo(f"{name}: not found under {args['data_root']}, skipped")
            continue
        by_name = {spec[0]: spec for spec in specs(args)}
        for member in args.get("families") or DEFAULT_CALIBRATION_FAMILIES:
            _, family, overrides, code, max_train = by_name[member]
            echo(f"{name}: {member} ...")
            job_paths = paths
            if max_train:
                job_paths, _ = capped_train(paths, work / name, max_train)
            try:
                entry = in_child(job_calibration, family, job_paths, str(work / name / member), overrides, code,
                                 bool(args.get("reuse")))
            except Exception as exc:  # a family that cannot run here is reported, not fatal
                echo(f"{name}: {member} failed: {type(exc).__name__}: {exc}")
                result["datasets"].setdefault(name, []).append({"family": member, "error": f"{type(exc).__name__}: {exc}"})
                continue
            entry = keep_entry(result, output, name, {**entry, "family": member})
            a, n = entry["methods"]["auto"], entry["methods"]["none"]
            echo(f"{name}: {member}: test ECE {n['ece']:.4f} -> {a['ece']:.4f} (auto: {a['chosen']}), "
                 f"accuracy {n['accuracy']:.4f} -> {a['accuracy']:.4f}")
    finish_calibration(result, output)
    done = {name: [e for e in entries if "methods" in e] for name, entries in result["datasets"].items()}
    click.echo("\n" + calibration_table(done))
    click.echo("\n" + json.dumps(result["summary"]))
    return result


def section_audit(args: dict, echo) -> dict:
    """The label-noise recovery of ``textclf audit`` (:mod:`bench_trust_audit`, also ``make bench_trust_audit``)."""
    from bench_trust_audit import run as run_audit

    return run_audit(args["data_root"], output=Path(args["output_dir"]) / "trust_audit.json", datasets=args["datasets"])


def section_explain(args: dict, echo) -> dict:
    """The explanations' deletion test on tweets_sentiment (:mod:`bench_trust_explain`, also ``make bench_trust_explain``)."""
    from bench_trust_explain import run as run_explain

    from textclf.core.atomic import atomic_write_json

    output = Path(args["output_dir"]) / "trust_explain.json"
    doc = run_explain(echo=echo, on_row=lambda d: atomic_write_json(output, d))
    atomic_write_json(output, doc)
    return doc


#: section name -> function(args, echo) -> results dict
SECTIONS = {"calibration": section_calibration, "audit": section_audit, "explain": section_explain}


@click.command()
@click.option("--section", "sections", multiple=True, type=click.Choice(sorted(SECTIONS)),
              help="Section to run (repeatable; default: all).")
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma-separated dataset names.")
@click.option("--data_root", default=str(DATA_ROOT), show_default=True)
@click.option("--output_dir", default=str(REPO / "benchmarks" / "results"), show_default=True,
              help="Where trust_<section>.json goes.")
@click.option("--keep", default=None, help="Keep the trained models under this folder (default: a temp folder).")
@click.option("--quick", is_flag=True, help="Fewer search trials (a smoke run).")
@click.option("--emb_max_train", type=int, default=2000, show_default=True,
              help="calibration: train the embeddings family on at most this many training rows (stratified; 0: all).")
@click.option("--torch_max_train", type=int, default=1000, show_default=True,
              help="calibration: train BERT and SetFit on at most this many training rows (stratified; 0: all).")
@click.option("--families", default=None, help="calibration: comma-separated families to run, in this order "
              f"(default: {','.join(DEFAULT_CALIBRATION_FAMILIES)}).")
@click.option("--reuse", is_flag=True, help="calibration: score the models already under --keep instead of training them again.")
@click.option("--rotations", type=int, default=0, show_default=True,
              help="calibration: train every family K times on splits that rotate over the whole dataset and score "
                   "ECE on all K test folds together (trust_calibration_rotations.json; 0: the shipped split).")
def main(sections, datasets, data_root, output_dir, keep, quick, emb_max_train, torch_max_train, families, reuse, rotations):
    """Run the trust benchmark's sections."""
    start_fork_server()
    echo = make_echo(show_elapsed=True)
    args = {"datasets": [d for d in datasets.split(",") if d], "data_root": data_root, "output_dir": output_dir,
            "keep": keep, "quick": quick, "emb_max_train": emb_max_train, "torch_max_train": torch_max_train,
            "families": [f for f in (families or "").split(",") if f], "reuse": reuse,
            "rotations": rotations}
    for name in sections or sorted(SECTIONS):
        SECTIONS[name](args, echo)


if __name__ == "__main__":
    main()

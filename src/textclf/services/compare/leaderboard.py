"""``textclf leaderboard``: models of any family side by side on one labelled test split.

Every model directory is scored on the same file: the test split its ``meta.json`` records
(all directories must have been trained on the same data: equal ``data_sha256``), or the file
given with ``--data_path`` (then any directories may be compared; they are all rescored on it).
Each model runs in a fresh Python process (:func:`measure` through :func:`measure_isolated`), so
its peak RSS after loading is its own. Columns:

* ``accuracy``, ``macro_f1``, ``macro_f0.5`` (the model's ``predict``, tuned thresholds included
  unless ``--no-thresholds``), and a 95 % bootstrap confidence interval of macro-F1: the test rows
  resampled with replacement ``n_boot`` times (default 1000, seeded), percentiles 2.5 and 97.5
  (``scipy.stats.bootstrap``, percentile method);
* multi-label models (``meta.json`` ``"task": "multilabel"``; docs/multilabel.md): ``micro_f1``
  with its 95 % bootstrap CI (the same ``scipy.stats.bootstrap`` over rows, on their true,
  predicted and correctly predicted label counts), ``macro_f1``, ``samples_f1``,
  ``hamming_loss`` and ``subset_accuracy`` (also ``accuracy``); the table is sorted by micro-F1. The
  test file is read as label sets. Multi-class and multi-label models in one table are refused
  in one line;
* ``ECE`` (15 bins), ``Brier`` and ``log-loss`` of ``predict_proba`` (calibrated when the model is,
  :mod:`textclf.core.calibration`; :func:`textclf.core.metrics.calibration_metrics`), from one
  untimed pass after the timed ones, over the rows whose labels the model knows;
* ``docs_per_s``: ``predict`` over the test texts in batches (after one small untimed warm-up
  batch), repeated until at least half a second has been timed;
* ``size_mb``: every file of the model directory (plus, for an ensemble, its members' directories);
* ``load_rss_mb``: the process's peak resident memory (``VmHWM``) right after ``load_predictor``:
  interpreter, imports and the loaded model; ``load_s``: the load time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.bootstrap import N_BOOT, SEED, bootstrap_ci, bootstrap_ci_micro
from textclf.core.errors import DataError, ModelError, TextclfError

#: predict is repeated until at least this many seconds have been timed (cheap models get stable rates)
MIN_TIMED_S = 0.5
MAX_PASSES = 20


class LeaderboardError(TextclfError):
    """Model directories that cannot be compared as asked."""


# --------------------------------------------------------------------------- measurements
def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MiB (``VmHWM``: it starts afresh at ``exec``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024, 1)
    except (ImportError, OSError):
        return None


def dir_size_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def model_size_bytes(model_dir: Path, meta: dict) -> int:
    """Size on disk of a model directory, plus its ensemble members' directories that lie outside it."""
    roots = {model_dir.resolve()}
    todo = [(model_dir, meta)]
    while todo:
        d, m = todo.pop()
        for record in m.get("members") or []:
            member = (d / record.get("path", "")).resolve()
            if member.is_dir() and not any(member == r or r in member.parents for r in roots):
                roots.add(member)
                try:
                    todo.append((member, json.loads((member / "meta.json").read_text(encoding="utf-8"))))
                except (OSError, ValueError):
                    pass
    return sum(dir_size_bytes(r) for r in roots)


def measure(model_dir: str, data_path: str, data_format: str | None = None, text_column: str = "text",
            label_column: str = "label", batch_size: int = 1024, thresholds: bool = True,
            backend: str | None = None) -> dict:
    """Load one model, note its load time and peak RSS, then predict ``data_path`` (timed); return it all.

    Meant to run in a fresh process (:func:`measure_isolated`) so the RSS is the model's own.
    ``backend``: as :func:`textclf.core.loading.load_predictor`'s (None: ONNX when the model has an export).
    """
    from textclf.core.data import batched, read_labelled
    from textclf.core.loading import load_predictor

    start = time.perf_counter()
    predictor = load_predictor(model_dir, thresholds=thresholds, backend=backend)
    load_s = time.perf_counter() - start
    rss = peak_rss_mb()
    ds = read_labelled(data_path, data_format, text_column, label_column, min_classes=0, task=predictor.task,
                       label_separator=predictor.label_separator)
    texts = ds.texts
    if texts:
        predictor.predict(texts[: min(len(texts), 32)])  # untimed warm-up: lazy initialisation
    predictions: list[str] = []
    passes, timed = 0, 0.0
    while passes == 0 or (timed < MIN_TIMED_S and passes < MAX_PASSES):
        start = time.perf_counter()
        preds: list[str] = []
        for batch in batched(texts, batch_size):
            preds += predictor.predict(batch)
        timed += time.perf_counter() - start
        passes += 1
        predictions = preds
    chunks = [predictor.predict_proba(b) for b in batched(texts, batch_size)]  # untimed: the calibration columns
    proba = np.vstack(chunks) if chunks else np.zeros((0, len(predictor.labels)))
    tuned = predictor.active_offsets() is not None or (predictor.multilabel and thresholds and bool(predictor.meta.get("thresholds")))
    return {"kind": predictor.kind, "task": predictor.task, "labels": list(predictor.labels),
            "predictions": [list(p) for p in predictions] if predictor.multilabel else predictions, "thresholds": tuned,
            "proba": proba.tolist(),
            "load_s": round(load_s, 3),
            "load_rss_mb": rss, "docs_per_s": (len(texts) * passes / timed) if timed > 0 else None,
            "timed_passes": passes}


def _worker(args_file: str) -> None:
    """Entry of the scoring subprocess: read the arguments JSON, run :func:`measure`, write the result JSON."""
    args = json.loads(Path(args_file).read_text(encoding="utf-8"))
    out = Path(args.pop("out"))
    try:
        from textclf.core.registry import load_code

        for path in args.pop("code", []):  # the --code files the parent imported
            load_code(path)
        result = measure(**args)
    except TextclfError as exc:
        result = {"error": exc.format_message()}
    out.write_text(json.dumps(result), encoding="utf-8")


def measure_isolated(model_dir: str, data_path: str, **kw) -> dict:
    """:func:`measure` in a fresh Python process (its peak RSS is the model's own); errors come back as one line.

    The plug-in files this process imported (``--code``: families, formats) are imported there too.
    """
    from textclf.core.registry import loaded_code
    from textclf.core.trust import trust_env

    code = loaded_code()
    with tempfile.TemporaryDirectory(prefix="textclf-lb-") as tmp:
        args_file, out = Path(tmp) / "args.json", Path(tmp) / "out.json"
        args_file.write_text(json.dumps({"model_dir": str(model_dir), "data_path": str(data_path), "out": str(out),
                                         "code": code, **kw}), encoding="utf-8")
        code = "import sys; from textclf.services.compare.leaderboard import _worker; _worker(sys.argv[1])"
        env = {**os.environ, **trust_env()}  # --trust-code holds in the scoring process too
        proc = subprocess.run([sys.executable, "-c", code, str(args_file)], capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"{model_dir}: scoring process failed (exit {proc.returncode}): {last}")
        result = json.loads(out.read_text(encoding="utf-8"))
    if "error" in result:
        raise ModelError(result["error"])
    return result


# --------------------------------------------------------------------------- the table
#: the score columns of the table: (row key, header), by task; the first one sorts the rows and has the CI
#: the calibration columns every table ends with (lower is better)
CALIBRATION_COLUMNS = ("ece", "brier", "log_loss")
_CALIBRATION_HEADS = (("ece", "ECE"), ("brier", "Brier"), ("log_loss", "log-loss"))
COLUMNS = {"multiclass": (("macro_f1", "macro-F1"), ("accuracy", "accuracy"), ("macro_f0.5", "macro-F0.5"), *_CALIBRATION_HEADS),
           "multilabel": (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1"),
                          ("subset_accuracy", "subset acc."), ("hamming_loss", "Hamming loss"), *_CALIBRATION_HEADS)}


def board_task(dirs: Sequence[Path], metas: Sequence[dict]) -> str:
    """The task every model shares (``multiclass`` or ``multilabel``); a mix is a one-line error."""
    tasks = [m.get("task") or "multiclass" for m in metas]
    if len(set(tasks)) > 1:
        shown = ", ".join(f"{d} ({t})" for d, t in zip(dirs, tasks, strict=True))
        raise LeaderboardError(f"multi-class and multi-label models cannot share one leaderboard: {shown}")
    return tasks[0]


def _calibration_cells(task: str, gold: list, r: dict) -> dict:
    """ECE, Brier and log-loss of a row's probabilities (``r["proba"]``; none from an older scoring process: NaN)."""
    from textclf.core.metrics import calibration_metrics

    if "proba" not in r:
        return dict.fromkeys(CALIBRATION_COLUMNS, float("nan"))
    proba = np.asarray(r["proba"], dtype=np.float64).reshape(len(gold), len(r["labels"]))
    index = {label: i for i, label in enumerate(r["labels"])}
    if task == "multilabel":
        y = np.array([[label in row for label in r["labels"]] for row in gold], dtype=bool).reshape(len(gold), len(index))
        m = calibration_metrics(proba, y, task)
    else:
        rows = [i for i, label in enumerate(gold) if label in index]
        m = calibration_metrics(proba[rows], np.array([index[gold[i]] for i in rows], dtype=np.int64), task)
    return {k: m[k] for k in CALIBRATION_COLUMNS}


def _score_row(task: str, gold: list, r: dict, n_boot: int, seed: int) -> dict:
    """The metric columns of one model's row: its predictions ``r`` scored against ``gold``."""
    return {**_score_predictions(task, gold, r, n_boot, seed), **_calibration_cells(task, gold, r)}


def _score_predictions(task: str, gold: list, r: dict, n_boot: int, seed: int) -> dict:
    """The label metrics of one model's row."""
    from textclf.core.metrics import classification_metrics, multilabel_metrics

    if task == "multilabel":
        preds = [tuple(p) for p in r["predictions"]]
        order = list(r["labels"]) + sorted({x for row in gold for x in row} - set(r["labels"]))
        m = multilabel_metrics(gold, preds, order, betas=(1.0, 0.5))
        low, high = bootstrap_ci_micro(gold, preds, n_boot, seed)
        return {"n": m["n"], "accuracy": m["accuracy"], "micro_f1": m["micro_f1"], "micro_f1_ci95": [low, high],
                **{k: m[k] for k in ("macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "micro_f0.5")}}
    order = list(r["labels"]) + sorted(set(gold) - set(r["labels"]))
    m = classification_metrics(gold, r["predictions"], order, betas=(1.0, 0.5))
    low, high = bootstrap_ci(gold, r["predictions"], order, n_boot, seed)
    return {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "macro_f0.5": m["macro_f0.5"],
            "macro_f1_ci95": [low, high]}
def _test_path(model_dir: Path, meta: dict) -> str:
    test = (meta.get("data") or {}).get("test")
    if not test:
        raise LeaderboardError(f"{model_dir}: meta.json records no test split; pass --data_path FILE")
    if not Path(test).is_file():
        raise LeaderboardError(f"{model_dir}: its test split {test} is not found from here; pass --data_path FILE")
    return str(test)


def check_same_data(dirs: Sequence[Path], metas: Sequence[dict]) -> str:
    """The test file shared by models trained on the same data; a one-line error when their data differ."""
    hashes = [m.get("data_sha256") for m in metas]
    if any(h is None for h in hashes) or len(set(hashes)) > 1:
        shown = ", ".join(f"{d} ({(h or 'no data_sha256')[:12]})" for d, h in zip(dirs, hashes, strict=True))
        raise LeaderboardError(f"the model directories were trained on different data: {shown}; "
                               "pass --data_path FILE to rescore them all on one labelled file")
    return _test_path(dirs[0], metas[0])


def _names(dirs: Sequence[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def leaderboard(model_dirs: Sequence[str | Path], data_path: str | Path | None = None, data_format: str | None = None,
                text_column: str = "text", label_column: str = "label", n_boot: int = N_BOOT, seed: int = SEED,
                batch_size: int = 1024, thresholds: bool = True, isolate: bool = True, progress=None) -> dict:
    """Score every model on one test split; returns ``{"data_path", "task", "metric", "rows": [...]}`` sorted by ``metric``.

    ``metric`` is macro-F1 (multi-class) or micro-F1 (multi-label models: label sets). Without
    ``data_path`` the models must share ``data_sha256`` and their recorded test split is used.
    """
    from textclf.core.data import DEFAULT_LABEL_SEPARATOR, labelled_format, read_labelled, unknown_label_note
    from textclf.core.loading import _resolve
    from textclf.core.meta import read_meta

    if not model_dirs:
        raise LeaderboardError("give at least one MODEL_DIR")
    dirs = [_resolve(d)[0] for d in model_dirs]
    metas = [read_meta(d) for d in dirs]
    task = board_task(dirs, metas)
    if data_path is None:
        data_path = check_same_data(dirs, metas)
        rescored = False
    else:
        if labelled_format(data_path, data_format).files and not Path(data_path).is_file():
            raise DataError(data_path, "file not found")
        rescored = True
    separator = ((metas[0].get("config") or {}).get("data") or {}).get("label_separator") or DEFAULT_LABEL_SEPARATOR
    ds = read_labelled(data_path, data_format, text_column, label_column, min_classes=0, task=task,
                       label_separator=separator)  # read as the models' task (label sets for multi-label)
    metric = COLUMNS[task][0][0]
    kw = {"data_format": data_format, "text_column": text_column, "label_column": label_column,
          "batch_size": batch_size, "thresholds": thresholds}
    rows = []
    for name, d, meta in zip(_names(dirs), dirs, metas, strict=True):
        if progress:
            progress(f"scoring {d} ...")
            note = unknown_label_note(ds, meta["labels"]) if meta.get("labels") else None
            if note:
                progress(f"{name}: {note}")
        r = measure_isolated(str(d), str(data_path), **kw) if isolate else measure(str(d), str(data_path), **kw)
        if not isolate:
            r["load_rss_mb"] = None  # shared with this process: not the model's own
        search = meta.get("search") or meta.get("ensemble_search") or {}
        rows.append({"name": name, "model_dir": str(d), "kind": r["kind"], "task": task,
                     **_score_row(task, list(ds.labels), r, n_boot, seed),
                     "docs_per_s": r["docs_per_s"], "size_mb": round(model_size_bytes(d, meta) / 2**20, 2),
                     "load_rss_mb": r["load_rss_mb"], "load_s": r["load_s"], "thresholds": r["thresholds"],
                     "search_trials": search.get("n_trials"), "created": meta.get("created")})
    rows.sort(key=lambda r: (-r[metric], -r["accuracy"], r["name"]))
    return {"data_path": str(data_path), "rescored": rescored, "n": len(ds), "n_boot": n_boot, "seed": seed,
            "thresholds": thresholds, "task": task, "metric": metric, "rows": rows}


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_markdown(board: dict) -> str:
    """The leaderboard as a markdown table."""
    (first, first_head), *rest = COLUMNS[board.get("task", "multiclass")]
    task = " (multi-label)" if board.get("task") == "multilabel" else ""
    lines = [f"Test split: `{board['data_path']}` ({board['n']} docs{task}; 95 % CI: {board['n_boot']} bootstrap resamples, "
             f"seed {board['seed']})", "",
             f"| # | model | kind | {first_head} | 95 % CI | " + " | ".join(h for _, h in rest)
             + " | docs/s | size MB | load RSS MiB |",
             "|---:|---|---|---:|---|" + "---:|" * len(rest) + "---:|---:|---:|"]
    for i, r in enumerate(board["rows"], 1):
        low, high = r[f"{first}_ci95"]
        kind = r["kind"] + (" +thr" if r["thresholds"] else "")
        lines.append(f"| {i} | {r['name']} | {kind} | {r[first]:.4f} | {low:.3f}-{high:.3f} | "
                     + "".join(f"{r[k]:.4f} | " for k, _ in rest)
                     + f"{_fmt(r['docs_per_s'], ',.0f')} | {r['size_mb']:.1f} | {_fmt(r['load_rss_mb'], '.0f')} |")
    return "\n".join(lines)


def chart(board: dict, path: str | Path) -> Path:
    """One PNG comparing the models: macro-F1 with its 95 % CI, and predict docs/s (log scale)."""
    from textclf.services.compare.plots import figure, save_figure, short_label

    rows = board["rows"][::-1]  # best on top
    names = [short_label(r["name"] if r["name"] == r["kind"] else f"{r['name']} ({r['kind']})", 40) for r in rows]
    metric, metric_head = COLUMNS[board.get("task", "multiclass")][0]
    f1 = np.array([r[metric] for r in rows])
    ci = np.array([r[f"{metric}_ci95"] for r in rows]).reshape(-1, 2)
    speed = np.array([r["docs_per_s"] or np.nan for r in rows])
    height = 2.2 + 0.5 * len(rows)
    fig, (ax1, ax2) = figure(1, 2, figsize=(11, height), width_ratios=(3, 2))
    y = np.arange(len(rows))
    err = np.vstack([np.clip(f1 - ci[:, 0], 0, None), np.clip(ci[:, 1] - f1, 0, None)])
    ax1.barh(y, f1, xerr=err, color="#4C72B0", capsize=4, error_kw={"elinewidth": 1.2})
    low = max(0.0, float(np.nanmin(ci[:, 0])) - 0.05) if len(rows) else 0.0
    low = round(low, 1) if low > 0.3 else 0.0
    ax1.set_xlim(low, 1.04 if float(np.nanmax(ci[:, 1])) > 0.95 else 1.0)
    for yi, v, hi in zip(y, f1, ci[:, 1], strict=True):
        ax1.text(min(hi + 0.006, 0.995), yi, f"{v:.3f}", va="center", ha="left", fontsize=9, fontweight="bold")
    ax1.set_yticks(y, names)
    ax1.set_xlabel(f"test {metric_head} (error bar: 95 % bootstrap CI)")
    ax1.set_title("Quality")
    ax1.grid(axis="x", alpha=0.3)
    ax2.barh(y, speed, color="#55A868")
    ax2.set_xscale("log")
    ax2.set_yticks(y, [""] * len(rows))
    ax2.set_xlabel("predict docs/s (log scale)")
    ax2.set_title("Speed")
    ax2.grid(axis="x", alpha=0.3)
    for yi, v, r in zip(y, speed, rows, strict=True):
        if np.isfinite(v):
            size = f"{r['size_mb']:.1f}" if r["size_mb"] < 10 else f"{r['size_mb']:.0f}"
            ax2.text(v, yi, f" {v:,.0f}/s, {size} MB", va="center", ha="left", fontsize=8)
    if np.isfinite(speed).any():
        ax2.set_xlim(np.nanmin(speed) / 2, np.nanmax(speed) * 10)
    data = Path(board["data_path"])
    where = f"{data.parent.name}/{data.name}" if data.parent.name else data.name
    fig.suptitle(f"Leaderboard on {where} ({board['n']} docs)", fontsize=12)
    return save_figure(fig, path)


def write_html(board: dict, path: str | Path) -> tuple[Path, Path]:
    """A self-contained HTML page (table + the comparison chart inlined) and the chart as ``<stem>.png`` beside it."""
    import base64
    import html

    from textclf.core.atomic import atomic_write_text
    from textclf.services.compare.plots import CSS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = chart(board, path.with_suffix(".png"))
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    (first, first_head), *rest = COLUMNS[board.get("task", "multiclass")]
    head = (f"<tr><th>#</th><th>model</th><th>kind</th><th>{first_head}</th><th>95 % CI</th>"
            + "".join(f"<th>{h}</th>" for _, h in rest)
            + "<th>docs/s</th><th>size MB</th><th>load RSS MiB</th><th>directory</th></tr>")
    body = []
    for i, r in enumerate(board["rows"], 1):
        low, high = r[f"{first}_ci95"]
        kind = r["kind"] + (" +thresholds" if r["thresholds"] else "")
        cells = [str(i), r["name"], kind, f"{r[first]:.4f}", f"{low:.3f} - {high:.3f}", *(f"{r[k]:.4f}" for k, _ in rest),
                 _fmt(r["docs_per_s"], ",.0f"), f"{r['size_mb']:.1f}", _fmt(r["load_rss_mb"], ".0f"), r["model_dir"]]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rescored = " (rescored with --data_path)" if board["rescored"] else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>textclf leaderboard</title><style>{CSS}</style></head>
<body>
<h1>Leaderboard</h1>
<p>Test split <code>{html.escape(board['data_path'])}</code>, {board['n']} documents{rescored}.
95 % confidence interval of {first_head}: {board['n_boot']} bootstrap resamples (seed {board['seed']}).
docs/s: <code>predict</code> in batches; load RSS: peak resident memory of a fresh process right after loading the model.</p>
<table>{head}{''.join(body)}</table>
<h2>Comparison</h2>
<img src="data:image/png;base64,{data}" alt="{first_head} with 95 % CI and predict docs/s of every model">
<p>The chart is also saved as <code>{html.escape(png.name)}</code>.</p>
</body></html>
"""
    atomic_write_text(path, page)
    return path, png

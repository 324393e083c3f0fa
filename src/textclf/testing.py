"""``check_family(name)``: the conformance kit a family (built-in or plug-in) must pass, like scikit-learn's ``check_estimator``.

It trains the family through the run service on a small real labelled dataset and checks the
family contract as a user meets it:

1. **round trip**: the model directory loads with :func:`textclf.core.loading.load_predictor` and
   predicts what the Predictor returned by the training predicted (labels equal, probabilities
   within ``atol``);
2. **batch/single agreement**: ``predict_proba`` of the whole batch equals one text at a time;
3. **label order**: ``labels`` are meta.json's labels (the training labels), ``predict_proba`` has
   one column per label, rows sum to 1, ``predict`` is the argmax of ``predict_proba``, and on
   training texts the model does at least about as well as always predicting the most frequent
   label (swapped columns do far worse);
4. **bad input**: a training file with one class is a one-line error naming the file; empty input
   to ``predict``/``predict_proba`` gives empty output of the right shape; an empty text gets a label;
5. **save/load in another process**: a fresh interpreter loads the directory (a plug-in through the
   copy it carries, which it refuses to import without consent and imports with ``trust_code=True``)
   and predicts the same labels and probabilities.

Use it in a test::

    from textclf.testing import check_family
    check_family("svm_char", code=["examples/plugins/svm_char.py"])

It raises ``AssertionError`` naming the failed check, and returns the trained model directory.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import TextclfError
from textclf.core.jsonfiles import REPO_ROOT
from textclf.core.loading import load_predictor
from textclf.core.registry import load_code

#: the default data: the embedded tweets_sentiment splits of a checkout
DEFAULT_DATA = REPO_ROOT / "data" / "tweets_sentiment"
PROBE_TEXTS = ["I love this, best day ever!", "this is awful and I hate it", "", "ok", "meh. not sure",
               "Ünïcödé têxt with émojis 🎉 and numbers 12345", "a much longer text " * 40]


def _head(src: Path, dst: Path, rows: int) -> Path:
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        kept = [next(reader)] + [row for _, row in zip(range(rows), reader, strict=False)]
    with dst.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(kept)
    return dst


def small_splits(folder: Path, data_dir: Path = DEFAULT_DATA, rows: int = 600) -> dict[str, Path]:
    """The first ``rows`` training rows (a quarter of that for valid/test) of a dataset's CSV splits, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": rows, "valid": max(50, rows // 4), "test": max(50, rows // 4)}
    return {name: _head(data_dir / f"{name}.csv", folder / f"{name}.csv", n) for name, n in sizes.items()}


def _fail(check: str, detail: str) -> None:
    raise AssertionError(f"check_family: {check}: {detail}")


def check_family(name: str, overrides: Sequence[str] = (), code: Sequence[str | Path] = (), data_dir: str | Path | None = None,
                 rows: int = 600, workdir: str | Path | None = None, atol: float = 1e-6) -> Path:
    """Train family ``name`` on a small real dataset and check the contract (see the module docstring); returns the model dir."""
    from textclf.services import runs

    for path in code:
        load_code(path)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"textclf-check-{name}-"))
    data = small_splits(work / "data", Path(data_dir) if data_dir else DEFAULT_DATA, rows)
    out = work / "model"
    spec = runs.RunSpec(family=name, train_path=str(data["train"]), valid_path=str(data["valid"]),
                        test_path=str(data["test"]), output_dir=out, overrides=tuple(overrides),
                        code=tuple(str(c) for c in code), track=False)
    family, cfg, splits = runs.prepare(spec)
    runs.execute(family, cfg, splits, spec)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    texts = [*splits.test.texts[:40], *PROBE_TEXTS]

    # 3. label order
    predictor = load_predictor(out)
    if list(predictor.labels) != list(meta["labels"]) or list(meta["labels"]) != list(splits.labels):
        _fail("label order", f"predictor labels {predictor.labels} / meta.json {meta['labels']} / train {splits.labels}")
    proba = np.asarray(predictor.predict_proba(texts))
    if proba.shape != (len(texts), len(predictor.labels)):
        _fail("label order", f"predict_proba shape {proba.shape}, expected {(len(texts), len(predictor.labels))}")
    if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-4) or (proba < -1e-9).any():
        _fail("label order", "predict_proba rows are not probability distributions")
    labels = predictor.predict(texts)
    if labels != [predictor.labels[i] for i in proba.argmax(axis=1)]:
        _fail("label order", "predict is not the argmax of predict_proba")

    sample = splits.train.texts[:300], splits.train.labels[:300]
    fitted = float(np.mean([a == b for a, b in zip(predictor.predict(sample[0]), sample[1], strict=True)]))
    majority = max(sample[1].count(label) for label in set(sample[1])) / len(sample[1])
    if fitted < majority - 0.05:
        _fail("label order", f"on training texts it scores accuracy {fitted:.3f}, below always predicting the most frequent "
              f"label ({majority:.3f}): are predict_proba's columns in self.labels order?")

    # 1. round trip against the model of the run itself
    again = load_predictor(out)
    if again.predict(texts) != labels or not np.allclose(again.predict_proba(texts), proba, atol=atol):
        _fail("round trip", "a second load predicts differently")
    refit_score = meta["metrics"]["test"]["accuracy"]
    from textclf.core.predictor import evaluate_predictor

    if abs(evaluate_predictor(predictor, splits.test.texts, splits.test.labels)["accuracy"] - refit_score) > 1e-9:
        _fail("round trip", "the loaded model scores differently on test than meta.json says")

    # 2. batch/single agreement
    single = np.vstack([predictor.predict_proba([t]) for t in texts])
    if not np.allclose(single, proba, atol=max(atol, 1e-5)):
        _fail("batch/single agreement", f"largest difference {np.abs(single - proba).max():.2e}")

    # 4. bad input
    if predictor.predict([]) != [] or np.asarray(predictor.predict_proba([])).shape != (0, len(predictor.labels)):
        _fail("bad input", "empty input must give empty output")
    one_class = work / "one_class.csv"
    one_class.write_text("text,label\nfirst text,a\nsecond text,a\n", encoding="utf-8")
    try:
        runs.prepare(runs.RunSpec(family=name, train_path=str(one_class), valid_path=str(data["valid"]),
                                  output_dir=work / "never", overrides=tuple(overrides), track=False))
    except TextclfError as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if str(one_class) not in message or "\n" in message:
            _fail("bad input", f"a one-class training file must be a one-line error naming it, got {message!r}")
    else:
        _fail("bad input", "a one-class training file was accepted")

    # 5. save/load in another process
    # (a plug-in's model carries its code file: loading it needs the user's consent, which the fresh
    # interpreter must ask for; the kit then gives it, as the plug-in's author would)
    plugin = bool(json.loads((out / "meta.json").read_text(encoding="utf-8")).get("plugin_code"))
    script = ("import json, sys; from textclf.core.loading import load_predictor; "
              "p = load_predictor(sys.argv[1], trust_code=sys.argv[2] == '1'); "
              "t = json.loads(sys.stdin.read()); print(json.dumps([p.predict(t), p.predict_proba(t).tolist()]))")
    env = {k: v for k, v in os.environ.items() if k != "TEXTCLF_TRUST_CODE"}
    if plugin:
        refused = subprocess.run([sys.executable, "-c", script, str(out), "0"], input=json.dumps(texts), capture_output=True,
                                 text=True, timeout=600, env=env)
        if refused.returncode == 0 or "--trust-code" not in refused.stderr:
            _fail("load in another process", "a model carrying plug-in code loaded without the user's consent")
    done = subprocess.run([sys.executable, "-c", script, str(out), "1" if plugin else "0"], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        _fail("load in another process", done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    other_labels, other_proba = json.loads(done.stdout.strip().splitlines()[-1])
    if other_labels != labels or not np.allclose(np.asarray(other_proba), proba, atol=atol):
        _fail("load in another process", "a fresh interpreter predicts differently")
    return out

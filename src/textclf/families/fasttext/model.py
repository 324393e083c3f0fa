"""fastText: training with fixed params, an Optuna search over them, and the Predictor.

Labels are stored in fastText as ``__label__<index>`` so any label text (spaces,
unicode) round-trips; ``meta.json`` maps indices back to names.

Multi-label data: every label of a text is one ``__label__<index>`` of its line (fastText reads
several natively), the loss is ``ova`` (one independent sigmoid a label, whatever ``model.loss``
says) and the core's decision threshold picks the labels. fastText skips a line without a label,
so a text with an empty label set teaches nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import fasttext
from textclf.core.atomic import atomic_replace_file
from textclf.core.data import Dataset
from textclf.core.errors import ConfigError, ModelError
from textclf.core.metrics import classification_metrics, metric_value, multilabel_metrics
from textclf.core.predictor import Predictor
from textclf.core.tempfiles import owned_temp_dir
from textclf.core.training import Splits, fitted_meta
from textclf.core.tuning import (
    wants_search,
)
from textclf.families.fasttext.fileformat import check_model_file
from textclf.families.fasttext.size import (
    MB,
    MIN_CUTOFF,
    budget_bytes,
    char_ngrams,
    count_tokens,
    entry_bytes,
    fit_params_to_budget,
    quantize_cutoff,
)

log = logging.getLogger(__name__)

KIND = "fasttext"
MODEL_FILE = "model.bin"
QUANTIZED_FILE = "model.ftz"
#: prefix of the temp folder holding the training file (``textclf-ft-<pid>@<host>-*``)
TEMP_PREFIX = "textclf-ft-"
PACKAGES = ("fasttext-community",)
FASTTEXT_PARAMS = ("lr", "epoch", "wordNgrams", "dim", "minCount", "minn", "maxn", "loss", "bucket", "ws", "neg",
                   "lrUpdateRate", "t", "thread", "pretrainedVectors", "seed")


def one_line(text: str) -> str:
    """fastText reads one document per line: fold newlines and runs of whitespace into single spaces."""
    return " ".join(text.split())


#: Characters ``str.split`` treats as whitespace but fastText's tokenizer does not, plus the newline
#: (fastText splits on space, tab, CR, VT, FF and NUL, and ends a line at ``\n``).
SPLIT_ONLY_WHITESPACE = "\n\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
                        "\u2028\u2029\u202f\u205f\u3000"
_ASCII_SPLIT_ONLY = "\n\x1c\x1d\x1e\x1f"


def fasttext_line(text: str) -> str:
    """``text`` as fastText input that tokenizes exactly like ``one_line(text)``, copying only when needed.

    A text holding none of :data:`SPLIT_ONLY_WHITESPACE` already gives fastText the same
    tokens as its ``one_line`` form, so it is passed as it is: ``str.isascii`` is O(1) and
    each ``in`` test is a fast scan, far cheaper than the split/join on long documents.
    """
    for char in _ASCII_SPLIT_ONLY if text.isascii() else SPLIT_ONLY_WHITESPACE:
        if char in text:
            return one_line(text)
    return text


def fasttext_lines(texts: Sequence[str]) -> list[str]:
    """:func:`fasttext_line` for a batch; one scan of the joined batch settles the common case of nothing to fold."""
    joined = "".join(texts)
    for char in _ASCII_SPLIT_ONLY if joined.isascii() else SPLIT_ONLY_WHITESPACE:
        if char in joined:
            return [fasttext_line(t) for t in texts]
    return list(texts)


def text_normalizer(text_cfg: dict | None) -> Callable[[str], str] | None:
    """The ``text`` block as a function applied to every text before fastText sees it, or None (texts as they are).

    ``lowercase``: lower-case the text; ``pattern``: a regular expression whose matches are the
    tokens, joined by single spaces (e.g. ``[\\w']+|[^\\w\\s]`` splits punctuation off the words, the
    preprocessing of fastText's own tutorial). The same function runs at training and at
    prediction, from the config recorded in meta.json; a model without the block predicts on the
    texts as they are.
    """
    text_cfg = text_cfg or {}
    lowercase, pattern = bool(text_cfg.get("lowercase")), text_cfg.get("pattern")
    if not lowercase and not pattern:
        return None
    regex = re.compile(pattern) if pattern else None

    def normalize(text: str) -> str:
        if lowercase:
            text = text.lower()
        return " ".join(regex.findall(text)) if regex is not None else text

    return normalize


def check_text_settings(text_cfg: dict | None) -> None:
    """A one-line ConfigError for a ``text.pattern`` that is not a regular expression yielding whole matches."""
    pattern = (text_cfg or {}).get("pattern")
    if pattern is None:
        return
    try:
        groups = re.compile(str(pattern)).groups
    except re.error as exc:
        raise ConfigError(f"text.pattern {pattern!r} is not a regular expression: {exc}") from None
    if not isinstance(pattern, str) or not pattern or groups:
        raise ConfigError(f"text.pattern {pattern!r}: give a non-empty regular expression without capturing groups "
                          "(use (?:...)); its matches are the tokens")


def write_training_file(ds: Dataset, labels: list[str], path: str | Path,
                        normalize: Callable[[str], str] | None = None) -> None:
    """Write ``ds`` in fastText format with ``__label__<index>`` labels (multi-label: one prefix per label of the set).

    ``normalize``: :func:`text_normalizer`'s function, applied to each text first.
    """
    index = {label: i for i, label in enumerate(labels)}
    texts = map(normalize, ds.texts) if normalize is not None else ds.texts
    with open(path, "w", encoding="utf-8") as fh:
        if ds.multilabel:
            for text, label_set in zip(texts, ds.labels, strict=True):
                fh.write("".join(f"__label__{index[label]} " for label in label_set) + one_line(text) + "\n")
            return
        for text, label in zip(texts, ds.labels, strict=True):
            fh.write(f"__label__{index[label]} {one_line(text)}\n")


def default_threads(n_jobs: int = 1) -> int:
    """Threads per fastText run: the usable cores divided among parallel trials."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_jobs))


def fit_params(params: dict, n_jobs: int = 1) -> dict:
    """fastText keyword arguments from a params dict: known names only, thread set, maxn >= minn."""
    kw = {k: v for k, v in params.items() if k in FASTTEXT_PARAMS and v is not None}
    kw.setdefault("thread", default_threads(n_jobs))
    if "minn" in kw or "maxn" in kw:
        kw["minn"], kw["maxn"] = char_ngrams(kw)
    if not kw.get("pretrainedVectors"):
        kw.pop("pretrainedVectors", None)
    return kw


#: ``model.lr: "auto"``: 0.1 for texts of up to ``AUTO_LR_TOKENS`` tokens on average, more for longer ones, at most 1.0
AUTO_LR = (0.1, 1.0)
AUTO_LR_TOKENS = 40


def mean_tokens(texts: Sequence[str]) -> float:
    """Mean whitespace-token count of ``texts`` (0 for none): what :func:`auto_lr` scales the rate by."""
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def auto_lr(texts: Sequence[str]) -> float:
    """The learning rate ``model.lr: "auto"`` gives fastText for these training texts.

    fastText averages a text's word vectors, so each word's update is the learning rate divided by the
    text's length: at 0.1, the rate that suits sentences, long documents barely move (bbc_news, 383 tokens a
    text: test macro-F1 0.27 at 0.1, 0.97 at 1.0). The rate grows with the mean token count from 0.1 up to
    ``AUTO_LR_TOKENS`` tokens, capped at 1.0 (benchmarks/README.md, fastText's learning rate).
    """
    low, high = AUTO_LR
    return round(min(high, max(low, low * mean_tokens(texts) / AUTO_LR_TOKENS)), 4)


def resolve_params(model_cfg: dict, texts: Sequence[str]) -> dict:
    """``model_cfg`` with ``lr: "auto"`` replaced by :func:`auto_lr` of the training texts, and a number given as text
    (``--set model.lr=0.3`` over the ``"auto"`` default arrives as ``"0.3"``) as a number."""
    lr = model_cfg.get("lr")
    if lr == "auto":
        return {**model_cfg, "lr": auto_lr(texts)}
    if isinstance(lr, str):
        return {**model_cfg, "lr": float(lr)}
    return model_cfg


def train_model(train_file: str | Path, params: dict, n_jobs: int = 1) -> fasttext.FastText._FastText:
    """Train one supervised fastText model on a prepared fastText-format file."""
    return fasttext.train_supervised(input=str(train_file), verbose=0, **fit_params(params, n_jobs))


def check_model_labels(path: Path, ft_labels: Sequence[str], labels: Sequence[str]) -> None:
    """A ModelError unless the model's labels are ``__label__0 .. __label__<n-1>`` for the n labels of meta.json."""
    expected = {f"__label__{i}" for i in range(len(labels))}
    if set(ft_labels) != expected:
        shown = ", ".join(sorted(ft_labels)[:5]) + (", ..." if len(ft_labels) > 5 else "")
        raise ModelError(f"{path}: the model has {len(ft_labels)} label(s) ({shown}) but meta.json lists "
                         f"{len(labels)} ({', '.join(map(str, labels[:5]))}{', ...' if len(labels) > 5 else ''}); "
                         "meta.json and the model do not belong together")


class FastTextPredictor(Predictor):
    """A trained fastText model behind the shared Predictor interface."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, model: fasttext.FastText._FastText):
        super().__init__(model_dir, meta)
        self.model = model
        self._n = len(self.labels)
        self._by_ft_label = {f"__label__{i}": label for i, label in enumerate(self.labels)}
        #: the file the model came from (named when it fails at predict time)
        self.model_file = Path(model_dir) / meta.get("model_file", MODEL_FILE)
        #: the config's ``text`` block as a function (None: the texts go to fastText as they are)
        self.normalize = text_normalizer((meta.get("config") or {}).get("text"))

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> FastTextPredictor:
        """Load ``model.bin`` (or the given ``.bin``/``.ftz`` file) from a model directory."""
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        path = Path(model_file) if model_file else Path(model_dir) / meta.get("model_file", MODEL_FILE)
        if not path.exists():
            raise ModelError(f"{path}: fastText model file not found")
        check_model_file(path)  # a truncated file would make fastText allocate for minutes and crash
        try:
            model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise ModelError(f"{path}: fastText cannot load it: {exc}") from None
        check_model_labels(path, model.get_labels(), meta["labels"])
        predictor = cls(model_dir, meta, model)
        predictor.model_file = path
        return predictor

    def _index(self, ft_label: str) -> int:
        return int(ft_label[9:])

    def _ft_predict(self, texts: Sequence[str], k: int, threshold: float = 0.0):
        """fastText's own predict; a failure there ("Encountered NaN": weights damaged in place) is one line."""
        try:
            if self.normalize is not None:
                texts = [self.normalize(t) for t in texts]
            return self.model.predict(fasttext_lines(texts), k=k, threshold=threshold)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{self.model_file}: fastText cannot predict with it ({exc}): its weights are damaged; "
                             "restore or retrain the model") from None

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Top label per text (one fastText call for the whole batch)."""
        if len(texts) == 0:
            return []
        ft_labels, _ = self._ft_predict(texts, k=1)
        by_ft, first = self._by_ft_label, self.labels[0]
        return [by_ft[row[0]] if row else first for row in ft_labels]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for every label (softmax, or independent sigmoids for ``ova``)."""
        out = np.zeros((len(texts), self._n), dtype=np.float64)
        if len(texts) == 0:
            return out
        ft_labels, probs = self._ft_predict(texts, k=-1)
        for i, (row_labels, row_probs) in enumerate(zip(ft_labels, probs, strict=True)):
            for label, p in zip(row_labels, row_probs, strict=True):
                out[i, self._index(label)] = p
        # fastText adds 1e-5 before its log, so a probability can come back as 1.00001 (softmax or ova sigmoid): clip
        # (rows are not renormalised: a model's probabilities stay what they were, within 1e-5)
        np.clip(out, 0.0, 1.0, out=out)
        return out


#: (minimum, integer?) of the numeric fastText parameters a config or a search space may set
PARAM_RANGES = {"lr": (1e-12, False), "epoch": (1, True), "wordNgrams": (1, True), "dim": (1, True), "minCount": (1, True),
                "minn": (0, True), "maxn": (0, True), "bucket": (0, True), "ws": (1, True), "neg": (1, True),
                "lrUpdateRate": (1, True), "t": (1e-12, False), "thread": (1, True)}


def check_param(key: str, name: str, value: object) -> None:
    """A ConfigError when ``value`` is not a usable value of the fastText parameter ``name``."""
    if name == "lr" and isinstance(value, str):  # "auto", or a number given over the "auto" default (--set)
        if value == "auto":
            return
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f'{key}: fastText\'s lr must be a number or "auto", got {value!r}') from None
    if name not in PARAM_RANGES or value is None:
        return
    low, integer = PARAM_RANGES[name]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise ConfigError(f"{key}: fastText's {name} must be {kind}, got {value!r}")
    if value < low:
        raise ConfigError(f"{key}: fastText's {name} must be {'>= ' + str(low) if integer else '> 0'}, got {value!r}")


def check_settings(cfg: dict) -> None:
    """Check the fixed parameters, the size budget, the search space's bounds and choices and the metric before anything trains.

    The metric is one of those computed with F1 and F0.5 (multi-class or multi-label ones); ``null``
    (the task's default) passes.
    """
    for name, value in cfg["model"].items():
        check_param(f"model.{name}", name, value)
    check_text_settings(cfg.get("text"))
    s = cfg["search"]
    mb = s.get("max_model_mb")
    if mb is not None and not mb > 0:
        raise ConfigError(f"search.max_model_mb: must be > 0 (MB), or null for no size limit; got {mb!r}")
    if wants_search(s):
        for name, spec in s["space"].items():
            values = spec.get("choices", []) if spec.get("type") == "categorical" else [spec.get("low"), spec.get("high")]
            for value in values:
                check_param(f"search.space.{name}", name, value)
        if s["metric"]:
            known = {**multilabel_metrics([("a",)], [("a",)], ["a", "b"]),
                     **classification_metrics(["a", "b"], ["a", "b"], ["a", "b"])}
            try:
                metric_value(known, s["metric"])
            except KeyError as exc:
                raise ConfigError(f"search.metric: {exc.args[0]}") from None


def refit(train_file: Path, params: dict, seed: int, retries: int) -> tuple[fasttext.FastText._FastText, int]:
    """Train the final model; a run that dies (e.g. "Encountered NaN") retries with the next seed."""
    last: Exception | None = None
    for attempt in range(max(1, retries)):
        try:
            return train_model(train_file, {**params, "seed": seed + attempt}), seed + attempt
        except (RuntimeError, ValueError) as exc:
            log.warning("refit with seed %d failed: %s", seed + attempt, exc)
            last = exc
    raise RuntimeError(f"final fastText fit failed {retries} times: {last}")


def token_counts(train_file: Path, splits: Splits, shared: dict) -> Counter:
    """The training file's token counts (:func:`size.count_tokens`), counted once a run (``context.shared``)."""
    key = ("fasttext.token_counts", splits.data_sha256, splits.multilabel)
    if key not in shared:
        shared[key] = count_tokens(train_file)
    return shared[key]


def quantize_to_budget(model, train_file: Path, cfg: dict, budget: int | None, n_labels: int, entry: int, tmp: Path,
                       out: Path) -> tuple[fasttext.FastText._FastText, dict]:
    """Quantize ``model`` (``qnorm``, ``retrain``, a ``cutoff`` on its input rows) into ``out/model.ftz`` within ``budget``.

    The cutoff is ``output.quantize_cutoff``, lowered to what the budget allows
    (:func:`size.quantize_cutoff`); a file still over budget is quantized again from the saved
    full model with a proportionally smaller cutoff (3 tries, then a one-line ConfigError).
    """
    cutoff = int(cfg["output"]["quantize_cutoff"])
    dim = model.get_dimension()
    if budget is not None:
        cutoff = min(cutoff, quantize_cutoff(budget, dim, n_labels, entry))
        full = tmp / "full.bin"
        model.save_model(str(full))
    for attempt in range(3):
        # cutoff keeps the input rows of largest norm: product-quantizing all 2M buckets takes ages
        model.quantize(input=str(train_file), retrain=True, qnorm=True, cutoff=cutoff, thread=default_threads())
        atomic_replace_file(model.save_model, out / QUANTIZED_FILE)
        size = (out / QUANTIZED_FILE).stat().st_size
        record = {"cutoff": cutoff, "qnorm": True, "retrain": True, "dsub": 2, "attempts": attempt + 1}
        if budget is None or size <= budget:
            return model, record
        log.info("quantized fastText model is %.1f MB with cutoff %d: over budget, quantizing again", size / MB, cutoff)
        cutoff = max(MIN_CUTOFF, int(cutoff * budget / size * 0.95))
        model = fasttext.load_model(str(full))
    raise ConfigError(f"search.max_model_mb: the fastText model is {size / MB:.1f} MB even quantized (cutoff "
                      f"{record['cutoff']}, dim {dim}); raise search.max_model_mb or lower model.dim")


def fit(cfg: dict, splits: Splits, context) -> FastTextPredictor:
    """Train fastText with ``cfg["model"]`` on train and return its Predictor (family contract v2).

    The core searches (trials run in a forked child killed at the ``search.timeout`` deadline:
    ``Family.fork_trials``), refits and evaluates. Every fit is made to fit ``search.max_model_mb``
    (:mod:`textclf.families.fasttext.size`: ``bucket`` lowered before training, or the final model
    quantized). The final fit retries a run that dies (e.g. "Encountered NaN") with the next seed,
    up to ``search.refit_retries`` times, and saves ``model.bin`` when it fits the budget and, with
    ``output.quantize`` or when quantization is what fits, a compressed ``model.ftz`` that the model
    then uses. meta.json records the size (``model_mb``, ``size``).
    """
    out = Path(context.output_dir)
    n_jobs = cfg["search"]["n_jobs"]
    budget = budget_bytes(cfg)
    if splits.multilabel and cfg["model"].get("loss") != "ova":
        cfg = {**cfg, "model": {**cfg["model"], "loss": "ova"}}  # independent per-label probabilities
    with owned_temp_dir(TEMP_PREFIX) as tmp:  # swept by the next run if this one is killed with -9
        train_file = Path(tmp) / "train.txt"
        write_training_file(splits.train, splits.labels, train_file, text_normalizer(cfg.get("text")))
        counts = token_counts(train_file, splits, context.shared)
        params, size = fit_params_to_budget(counts, resolve_params(cfg["model"], splits.train.texts), budget)
        if not context.final:
            model = train_model(train_file, {**params, "seed": context.seed}, n_jobs)
            return FastTextPredictor(out, fitted_meta(KIND, cfg, splits), model)
        model, seed = refit(train_file, params, context.seed, cfg["search"]["refit_retries"])
        if size["action"] == "quantize":
            (out / MODEL_FILE).unlink(missing_ok=True)  # a stale full model of an earlier run: not this model
        else:
            atomic_replace_file(model.save_model, out / MODEL_FILE)
        model_file = MODEL_FILE
        if cfg["output"]["quantize"] or size["action"] == "quantize":
            model, size["quantized"] = quantize_to_budget(model, train_file, cfg, budget if size["action"] == "quantize"
                                                          else None, len(splits.labels),
                                                          entry_bytes(counts, int(params.get("minCount", 1))), Path(tmp), out)
            model_file = QUANTIZED_FILE
        else:
            (out / QUANTIZED_FILE).unlink(missing_ok=True)
    size["bytes"] = (out / model_file).stat().st_size
    predictor = FastTextPredictor(out, fitted_meta(KIND, cfg, splits), model)
    predictor.fit_info = {"model_file": model_file, "params": fit_params({**params, "seed": seed}),
                          "model_mb": round(size["bytes"] / MB, 3), "size": size}
    return predictor
